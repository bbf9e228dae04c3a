"""The browser fixtures of tests/e2e, shared with the browser-driven security tests."""

from tests.e2e.conftest import browser, context, page, playwright_instance, watch

__all__ = ["browser", "context", "page", "playwright_instance", "watch"]
