"""Security headers on every page, `check --deploy` with production settings, and the API
docs working offline under the CSP in real Chromium."""

from __future__ import annotations

import os
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from django.test import Client
from django.urls import URLPattern, URLResolver, get_resolver
from django.urls.resolvers import RoutePattern
from playwright.sync_api import Page

from approvals.models import Proposal
from tests.e2e.conftest import PageWatch, login, screenshot
from tests.factories import open_run, submit

ROOT = Path(__file__).resolve().parents[2]
# Pages other helpers may add are found by walking the URLconf; these must be among them.
REQUIRED_PAGES = {"/queue/", "/workflows/", "/datasets/", "/break-glass/", "/accounts/login/",
                  "/api/docs/"}
SKIPPED_ROUTES = {"api/schema/", "accounts/logout/"}  # YAML; POST only


def _routes(patterns: list, prefix: str = "") -> Iterator[tuple[str, dict[str, str]]]:
    for p in patterns:
        if not isinstance(p.pattern, RoutePattern):
            continue  # regex routes (admin internals): not ours
        route = prefix + p.pattern._route
        if isinstance(p, URLResolver):
            yield from _routes(p.url_patterns, route)
        elif isinstance(p, URLPattern):
            yield route, p.pattern.converters


def _page_paths(proposal: Proposal) -> list[str]:
    """Every GET-able page path of the URLconf with its parameters filled in; admin and
    the JSON API are left to their own tests, action URLs (POST only) are skipped."""
    fill = {"pk": str(proposal.pk), "slug": proposal.workflow.slug, "id": str(proposal.pk)}
    paths: set[str] = set()
    for route, converters in _routes(get_resolver().url_patterns):
        if route.startswith(("admin/", "api/v1/")) or route in SKIPPED_ROUTES:
            continue
        if not set(converters) <= set(fill):
            continue
        path = route
        for name in converters:
            path = path.replace(f"<{name}>", fill[name])
            for key in ("int", "str", "slug", "path"):
                path = path.replace(f"<{key}:{name}>", fill[name])
        if "<" not in path:
            paths.add("/" + path)
    return sorted(paths | {"/admin/login/"})


def _assert_security_headers(path: str, response) -> None:  # type: ignore[no-untyped-def]
    csp = response.get("Content-Security-Policy", "")
    assert csp, f"{path}: no Content-Security-Policy"
    directives = {d.split()[0]: d.split()[1:] for d in csp.split(";") if d.strip()}
    assert "'unsafe-inline'" not in csp and "'unsafe-eval'" not in csp, path
    assert directives["script-src"] == ["'self'"], path
    assert directives["style-src"] == ["'self'"], path
    assert directives["object-src"] == ["'none'"], path
    assert directives["frame-ancestors"] == ["'none'"], path
    assert directives["base-uri"] == ["'none'"], path
    assert not any(s in ("*", "http:", "https:") for srcs in directives.values() for s in srcs)
    assert response.get("X-Frame-Options") == "DENY", path
    assert response.get("X-Content-Type-Options") == "nosniff", path
    assert response.get("Referrer-Policy") == "same-origin", path


@pytest.fixture
def proposal(agent, workflow) -> Proposal:  # type: ignore[no-untyped-def]
    return submit(open_run(agent, workflow))


@pytest.mark.django_db
def test_every_html_page_sends_csp_frame_and_nosniff_headers(
    client: Client, manager, proposal: Proposal
) -> None:
    client.force_login(manager)
    paths = _page_paths(proposal)
    assert REQUIRED_PAGES - set(paths) == set()
    checked = []
    for path in paths:
        response = client.get(path)
        assert response.status_code < 500, path
        if response.get("Content-Type", "").startswith("text/html"):
            _assert_security_headers(path, response)
            checked.append(path)
    assert f"/queue/{proposal.pk}/" in checked


@pytest.mark.django_db
@pytest.mark.parametrize("path", ["/accounts/login/", "/no-such-page/", "/queue/"])
def test_anonymous_responses_and_error_pages_send_the_headers_too(
    client: Client, path: str
) -> None:
    _assert_security_headers(path, client.get(path))


@pytest.mark.django_db
def test_api_responses_send_nosniff_and_csp(agent_client) -> None:  # type: ignore[no-untyped-def]
    response = agent_client.get("/api/v1/whoami/")
    assert response.status_code == 200
    _assert_security_headers("/api/v1/whoami/", response)


@pytest.mark.django_db
def test_api_answers_a_browser_with_json_not_the_browsable_api(client: Client, reviewer) -> None:  # type: ignore[no-untyped-def]
    # DRF's browsable API carries inline styles the CSP blocks; the API speaks JSON only.
    client.force_login(reviewer)
    response = client.get("/api/v1/proposals/", HTTP_ACCEPT="text/html,*/*;q=0.8")
    assert response.status_code == 403
    assert response["Content-Type"] == "application/json"


def test_check_deploy_is_clean_with_production_settings(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "GATEHOUSE_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.base",
        "DJANGO_DEBUG": "0",
        "DJANGO_SECURE": "1",
        "DJANGO_SECRET_KEY": secrets.token_urlsafe(64),
        "DJANGO_ALLOWED_HOSTS": "gatehouse.example.com",
        "DATABASE_URL": os.environ.get("DATABASE_URL",
                                       "postgres://postgres@127.0.0.1:5432/gatehouse"),
        "GATEHOUSE_VAR_DIR": str(tmp_path),
    })
    result = subprocess.run(
        [sys.executable, "manage.py", "check", "--deploy", "--fail-level", "WARNING"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_every_page_renders_without_csp_violations_in_chromium(
    client: Client, page: Page, watch: PageWatch, manager, proposal: Proposal
) -> None:
    client.force_login(manager)
    html_pages = [path for path in _page_paths(proposal)
                  if (r := client.get(path)).status_code == 200
                  and r["Content-Type"].startswith("text/html")]
    assert REQUIRED_PAGES - {"/accounts/login/"} <= set(html_pages)
    login(page, manager.username)
    for path in html_pages:
        response = page.goto(path)
        assert response is not None and response.status < 500, path
        assert watch.csp_violations() == [], (path, watch.csp_violations())
    assert watch.page_errors == []


@pytest.mark.e2e
@pytest.mark.django_db(transaction=True)
def test_api_docs_load_offline_under_the_csp(page: Page, watch: PageWatch, live_server) -> None:  # type: ignore[no-untyped-def]
    page.goto("/api/docs/")
    page.wait_for_selector(".swagger-ui .opblock", timeout=20_000)
    assert page.locator(".swagger-ui .opblock").count() >= 5
    assert page.locator(".swagger-ui .info .title").inner_text().startswith("Gatehouse API")
    screenshot(page, "api-docs")
    outside = [r for r in watch.requests if not r.split(" ", 1)[1].startswith(live_server.url)]
    assert outside == [], "the API docs must not fetch anything from another origin"
    assert watch.csp_violations() == []
    assert watch.page_errors == []
