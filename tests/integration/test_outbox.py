"""The outbox: a broker outage between commit and publish loses nothing."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import pytest
from celery import Celery
from kombu.exceptions import OperationalError

from agents.models import Tool
from approvals import dispatch
from approvals.execution import executions_sweep
from approvals.models import Execution, ExecutionStatus
from bench.fake_tool_server import FakeToolServer
from bench.faults import WorkerProcess
from shadow.services import review_approve
from tests.factories import open_run, submit
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration


def _approve_one(reviewer, agent, workflow) -> Execution:  # type: ignore[no-untyped-def]
    proposal = submit(open_run(agent, workflow))
    review_approve(actor=reviewer, proposal=proposal, expected_version=proposal.version)
    return Execution.objects.get(proposal=proposal)


def test_publish_to_a_dead_broker_leaves_the_row_unpublished(
    db: None, monkeypatch: pytest.MonkeyPatch, django_capture_on_commit_callbacks,  # type: ignore[no-untyped-def]
    reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    # Celery lets CELERY_BROKER_URL in the environment win over the app's own setting.
    monkeypatch.setenv("CELERY_BROKER_URL", "redis://127.0.0.1:1/0")
    dead = Celery("dead", broker="redis://127.0.0.1:1/0")
    dead.conf.broker_connection_retry = False
    dead.conf.broker_connection_timeout = 1
    monkeypatch.setattr(dispatch, "app", dead)

    with django_capture_on_commit_callbacks(execute=True) as callbacks:
        execution = _approve_one(reviewer, agent, workflow)

    assert callbacks, "the publish must wait for the commit"
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED
    assert execution.published_at is None
    assert dispatch.publish_execution(execution.pk) is False


def test_sweeper_leaves_fresh_unpublished_rows_alone_within_the_grace(
    db: None, monkeypatch: pytest.MonkeyPatch, settings,  # type: ignore[no-untyped-def]
    reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    published: list[int] = []
    monkeypatch.setattr(dispatch, "publish_execution",
                        lambda pk, countdown=None: published.append(pk) or True)
    settings.GATEHOUSE_OUTBOX_GRACE_SECONDS = 30
    execution = _approve_one(reviewer, agent, workflow)  # on_commit never fires under `db`

    assert executions_sweep() == 0
    settings.GATEHOUSE_OUTBOX_GRACE_SECONDS = 0
    assert executions_sweep() == 1
    assert published == [execution.pk]


def test_broker_outage_between_commit_and_publish_loses_nothing(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], monkeypatch: pytest.MonkeyPatch,
    settings, reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/tool")

    def broker_down(*args: Any, **kwargs: Any) -> None:
        raise OperationalError("Error 111 connecting to redis. Connection refused.")

    with monkeypatch.context() as patch:
        patch.setattr(dispatch.app, "send_task", broker_down)
        execution = _approve_one(reviewer, agent, workflow)  # commits; publish fails

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED
    assert execution.published_at is None
    time.sleep(1.5)  # a real worker is listening; nothing reached it
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.QUEUED
    assert fake_tool.stats()["requests"] == 0

    settings.GATEHOUSE_OUTBOX_GRACE_SECONDS = 0
    assert executions_sweep() == 1
    wait_for(lambda: Execution.objects.get(pk=execution.pk).status
             == ExecutionStatus.SUCCEEDED, what="the republished execution")

    execution.refresh_from_db()
    assert execution.published_at is not None
    assert execution.attempts == 1
    assert fake_tool.effects[str(execution.idempotency_key)] == 1
    # A duplicate message (a sweep racing a slow broker) finds the row done.
    assert executions_sweep() == 0
    assert dispatch.publish_execution(execution.pk) is True
    time.sleep(1.5)
    assert fake_tool.stats()["requests"] == 1
    assert Execution.objects.get(pk=execution.pk).attempts == 1
