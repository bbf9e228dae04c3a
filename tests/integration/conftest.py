"""A real Celery worker against the pytest database, and a fake tool to act on.

The worker is a separate process, so everything the test wants it to see must be
committed: `celery_worker_proc` depends on transactional_db (the root conftest knows
its name and lets the final flush through the audit log's TRUNCATE trigger).
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from django.conf import settings

from agents.models import Tool
from bench.fake_tool_server import FakeToolServer
from bench.faults import WorkerProcess, worker_env
from tests.integration.helpers import database_url, purge_queue, worker_app_name


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "worker_env(**env): extra environment for the celery_worker_proc worker"
    )


@pytest.fixture
def fake_tool() -> Iterator[FakeToolServer]:
    server = FakeToolServer().start()
    yield server
    server.stop()


@pytest.fixture
def celery_worker_proc(
    transactional_db: None, request: pytest.FixtureRequest, tmp_path: Path
) -> Iterator[WorkerProcess]:
    """One real `celery -A config worker -c 2 --pool prefork` on the real Redis.

    Extra worker settings come from `@pytest.mark.worker_env(NAME="value")`.
    """
    marker = request.node.get_closest_marker("worker_env")
    extra = {k: str(v) for k, v in (marker.kwargs if marker else {}).items()}
    queue = settings.CELERY_TASK_DEFAULT_QUEUE
    purge_queue(queue)
    worker = WorkerProcess(
        env=worker_env(
            database_url=database_url(), broker_url=settings.CELERY_BROKER_URL,
            queue=queue, var_dir=str(tmp_path / "var"),
            app_name=worker_app_name(), extra={
                "DJANGO_SECRET_KEY": settings.SECRET_KEY, **extra},
        ),
        queue=queue, name=f"it-{uuid.uuid4().hex[:8]}", log_path=tmp_path / "worker.log",
    )
    worker.start()
    try:
        worker.wait_ready(timeout=60)
        yield worker
    finally:
        worker.stop()
        # Nothing the worker left queued may leak into the next test.
        purge_queue(queue)


@pytest.fixture
def webhook_tool(tools: dict[str, Tool], fake_tool: FakeToolServer) -> Callable[[str], Tool]:
    """Point jira.create_ticket at a path of the fake tool server."""

    def point(path: str = "/tool") -> Tool:
        Tool.objects.filter(name="jira.create_ticket").update(
            executor_kind="webhook", executor_target=fake_tool.url(path)
        )
        return Tool.objects.get(name="jira.create_ticket")

    return point
