"""Helpers for the real-worker tests (importable; conftest.py holds only fixtures)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from django.conf import settings

from bench.faults import wait_until
from config.celery import app


def database_url() -> str:
    """The pytest database (its test_ name is already in settings at fixture time)."""
    db = settings.DATABASES["default"]
    auth = db["USER"] + (f":{db['PASSWORD']}" if db.get("PASSWORD") else "")
    return f"postgres://{auth}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"


def worker_app_name() -> str:
    return f"gh-it-{settings.CELERY_TASK_DEFAULT_QUEUE}"[:60]


def purge_queue(queue: str) -> None:
    with app.connection_for_write() as conn:
        try:
            conn.default_channel.queue_purge(queue)
        except Exception:  # noqa: BLE001 - the queue may not exist yet
            pass


def wait_for(predicate: Callable[[], Any], *, timeout: float = 30, what: str = "it") -> Any:
    """Poll committed database state (autocommit: each query sees the worker's commits)."""
    return wait_until(predicate, timeout=timeout, interval=0.2, what=what)
