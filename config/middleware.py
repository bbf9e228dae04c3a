from __future__ import annotations

from collections.abc import Callable

from django.conf import settings
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest


class ContentSecurityPolicyMiddleware:
    """Sends the CSP header on every response.

    No 'unsafe-inline' and no 'unsafe-eval': agent content that slips past escaping
    still cannot run. htmx is configured (meta htmx-config) not to eval or inject
    inline styles, so it works under this policy.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        response = self.get_response(request)
        response.setdefault("Content-Security-Policy", settings.CONTENT_SECURITY_POLICY)
        return response


class RejectNulBytesMiddleware:
    """400 for a NUL character in any query or form value (or name).

    PostgreSQL cannot store or even compare text containing \\x00: psycopg raises
    DataError deep inside a query, which surfaced as a 500 on /queue/?workflow=%00 and on
    any review form note. Refusing at the edge covers every page, present and future.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        for params in (request.GET, request.POST):
            for name, values in params.lists():
                if "\x00" in name or any("\x00" in v for v in values):
                    shown = name.replace("\x00", "\\u0000")
                    return HttpResponseBadRequest(
                        f"{shown}: must not contain null characters (\\u0000)",
                        content_type="text/plain; charset=utf-8")
        return self.get_response(request)
