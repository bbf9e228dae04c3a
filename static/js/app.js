// Gatehouse needs no inline script (CSP script-src 'self'). htmx does the partial updates.
document.addEventListener("htmx:responseError", function (event) {
  // 4xx responses carry a rendered error partial: show it instead of ignoring it.
  var xhr = event.detail.xhr;
  if (xhr.status >= 400 && xhr.status < 500 && event.detail.target) {
    event.detail.target.innerHTML = xhr.responseText;
  }
});
