"""Browser fixtures: Debian's chromium driven by Playwright against pytest-django's live_server.

Never downloads a browser: Playwright launches /usr/bin/chromium (CI installs it with apt).
One browser per session, a fresh context (cookies, storage) per test.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from playwright.sync_api import (
    Browser,
    BrowserContext,
    ConsoleMessage,
    Page,
    Playwright,
    sync_playwright,
)
from playwright.sync_api import Request as PWRequest

# Playwright's sync API runs an event loop in the test thread; Django then believes every
# ORM call in that thread is "async" and refuses it. The ORM calls here are plain sync
# test code, so the check is a false positive.
os.environ["DJANGO_ALLOW_ASYNC_UNSAFE"] = "true"

CHROMIUM = os.environ.get("GATEHOUSE_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
PASSWORD = "pw-for-tests-123"  # tests.factories.UserFactory's password
# Screenshots are always taken (a page that cannot be captured is a failure), but only
# written into docs/ when asked, so an ordinary test run leaves the tree clean:
#   GATEHOUSE_SCREENSHOT_DIR=docs/screenshots pytest -m e2e
SCREENSHOTS = Path(os.environ.get("GATEHOUSE_SCREENSHOT_DIR")
                   or Path(tempfile.gettempdir()) / f"gatehouse-screenshots-{os.getpid()}")


def _chromium_path() -> str:
    path = CHROMIUM if os.path.isabs(CHROMIUM) else shutil.which(CHROMIUM)
    if not path or not os.access(path, os.X_OK):
        # Fail, never skip: a silently skipped browser suite looks like a green one.
        pytest.fail(
            f"Debian chromium not found at {CHROMIUM!r}. Install it with "
            "`apt-get install -y chromium` (.ci/run does this); never `playwright install`.",
            pytrace=False,
        )
    return path


# tests/security imports these fixtures too, which makes pytest hold two definitions of
# each; Playwright's sync API allows one instance per thread, so both share this one.
_shared: dict[str, object] = {}


@pytest.fixture(scope="session")
def playwright_instance() -> Iterator[Playwright]:
    if "pw" in _shared:
        yield _shared["pw"]  # type: ignore[misc]
        return
    manager = sync_playwright()
    _shared["pw"] = manager.start()
    yield _shared["pw"]  # type: ignore[misc]
    _shared.pop("pw")
    manager.__exit__(None, None, None)


@pytest.fixture(scope="session")
def browser(playwright_instance: Playwright) -> Iterator[Browser]:
    if "browser" in _shared:
        yield _shared["browser"]  # type: ignore[misc]
        return
    _shared["browser"] = playwright_instance.chromium.launch(
        executable_path=_chromium_path(), args=CHROMIUM_ARGS, headless=True)
    yield _shared["browser"]  # type: ignore[misc]
    _shared.pop("browser").close()  # type: ignore[attr-defined]


@dataclass
class PageWatch:
    """What the page did that a test may want to assert never happened."""

    dialogs: list[str] = field(default_factory=list)
    console: list[str] = field(default_factory=list)
    requests: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)

    def csp_violations(self) -> list[str]:
        return [m for m in self.console if "Content Security Policy" in m]


@pytest.fixture
def context(browser: Browser, live_server) -> Iterator[BrowserContext]:  # type: ignore[no-untyped-def]
    ctx = browser.new_context(base_url=live_server.url, viewport={"width": 1280, "height": 900})
    ctx.set_default_timeout(10_000)
    yield ctx
    ctx.close()


@pytest.fixture
def watch() -> PageWatch:
    return PageWatch()


@pytest.fixture
def page(context: BrowserContext, watch: PageWatch) -> Page:
    pg = context.new_page()

    def on_dialog(dialog) -> None:  # type: ignore[no-untyped-def]
        watch.dialogs.append(f"{dialog.type}: {dialog.message}")
        dialog.dismiss()

    def on_console(msg: ConsoleMessage) -> None:
        watch.console.append(f"{msg.type}: {msg.text}")

    def on_request(req: PWRequest) -> None:
        watch.requests.append(f"{req.method} {req.url}")

    pg.on("dialog", on_dialog)
    pg.on("console", on_console)
    pg.on("request", on_request)
    pg.on("pageerror", lambda exc: watch.page_errors.append(str(exc)))
    return pg


def login(page: Page, username: str, password: str = PASSWORD) -> None:
    """Log in through the real login form, as a person would."""
    page.goto("/accounts/login/")
    page.fill("input[name=username]", username)
    page.fill("input[name=password]", password)
    with page.expect_navigation():
        page.click("button[type=submit]")
    assert "/accounts/login/" not in page.url, f"login failed for {username}"


def screenshot(page: Page, name: str) -> Path:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    path = SCREENSHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
