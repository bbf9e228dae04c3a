"""Unit-level checks of the recovery paths the fault campaign exercises for real."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
import requests
from django.db import OperationalError, transaction
from django.utils import timezone

from agents.models import AuditEvent, BreakerState, Tool
from approvals import dispatch, execution, executors
from approvals.models import Execution, ExecutionStatus
from bench.fake_tool_server import FakeToolServer
from tests.factories import open_run, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def published(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    sent: list[int] = []
    monkeypatch.setattr(dispatch, "publish_execution",
                        lambda pk, countdown=None: sent.append(pk) or True)
    return sent


def _queued(agent, workflow, *, age: int, published_ago: int | None) -> Execution:  # type: ignore[no-untyped-def]
    proposal = submit(open_run(agent, workflow, case_ref=f"age-{age}-{published_ago}"))
    now = timezone.now()
    row = Execution.objects.create(proposal=proposal)
    Execution.objects.filter(pk=row.pk).update(
        created_at=now - timedelta(seconds=age),
        published_at=None if published_ago is None else now - timedelta(seconds=published_ago))
    return row


def test_sweeper_republishes_long_waiting_rows_less_often(
    agent, workflow, settings, published: list[int],  # type: ignore[no-untyped-def]
) -> None:
    settings.GATEHOUSE_OUTBOX_GRACE_SECONDS = 10
    never = _queued(agent, workflow, age=11, published_ago=None)
    lost_young = _queued(agent, workflow, age=12, published_ago=11)
    waiting_recent = _queued(agent, workflow, age=100, published_ago=15)  # interval 50 s
    waiting_due = _queued(agent, workflow, age=100, published_ago=60)
    ancient_due = _queued(agent, workflow, age=10_000, published_ago=101)  # capped at 100 s
    fresh = _queued(agent, workflow, age=2, published_ago=None)

    assert execution.executions_sweep() == 4
    assert set(published) == {never.pk, lost_young.pk, waiting_due.pk, ancient_due.pk}
    assert waiting_recent.pk not in published and fresh.pk not in published


def test_a_failed_probe_after_the_cooldown_rearms_the_breaker(
    tools: dict[str, Tool], settings,  # type: ignore[no-untyped-def]
) -> None:
    settings.GATEHOUSE_BREAKER_COOLDOWN_SECONDS = 60
    tool = tools["jira.create_ticket"]
    opened = timezone.now() - timedelta(seconds=120)
    Tool.objects.filter(pk=tool.pk).update(breaker_state=BreakerState.OPEN,
                                           breaker_opened_at=opened, consecutive_failures=5)
    with transaction.atomic():
        execution._count_failure(tool)

    tool.refresh_from_db()
    assert tool.breaker_state == BreakerState.OPEN
    assert tool.breaker_opened_at > opened + timedelta(seconds=100)
    assert AuditEvent.objects.filter(action="tool.breaker_rearm").count() == 1


def test_recording_the_outcome_survives_a_dropped_connection(
    monkeypatch: pytest.MonkeyPatch, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    calls: list[dict[str, Any]] = []

    def flaky_finish(**kwargs: Any) -> str:
        calls.append(kwargs)
        if len(calls) < 3:
            raise OperationalError("terminating connection due to administrator command")
        return "recorded"

    monkeypatch.setattr(execution, "execution_finish", flaky_finish)
    monkeypatch.setattr(execution.connection, "close", lambda: None)  # keep the test's DB
    monkeypatch.setattr(execution.time, "sleep", lambda s: None)
    claim = SimpleNamespace(execution_id=7)
    assert execution._finish_resiliently(claim=claim, result={"ok": True}) == "recorded"  # type: ignore[arg-type]
    assert len(calls) == 3 and all(c["claim"] is claim for c in calls)


def test_a_stale_running_row_is_reclaimed_with_the_same_key(
    agent, workflow, settings,  # type: ignore[no-untyped-def]
) -> None:
    """A worker died mid-call: the next claim is a new attempt with the same key."""
    proposal = submit(open_run(agent, workflow))
    row = Execution.objects.create(proposal=proposal)
    long_ago = timezone.now() - timedelta(seconds=settings.CELERY_TASK_TIME_LIMIT + 60)
    Execution.objects.filter(pk=row.pk).update(status=ExecutionStatus.RUNNING, attempts=1,
                                               claimed_at=long_ago)
    claim = execution.execution_claim(execution_id=row.pk)
    assert claim is not None and claim.attempt == 2
    assert claim.request.idempotency_key == str(row.idempotency_key)
    # A recent claim by a live worker is left alone.
    assert execution.execution_claim(execution_id=row.pk) is None


@pytest.mark.parametrize(("path", "error"), [
    ("/status/503", executors.TransientError),
    ("/status/429", executors.TransientError),
    ("/status/400", executors.PermanentError),
    ("/status/404", executors.PermanentError),
])
def test_webhook_status_codes_map_to_transient_or_permanent(
    path: str, error: type[Exception],
) -> None:
    server = FakeToolServer().start()
    try:
        with pytest.raises(error):
            executors.run_webhook(server.url(path), _request())
    finally:
        server.stop()


def test_webhook_sends_the_idempotency_key_and_a_cut_response_is_transient(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    server = FakeToolServer().start()
    try:
        result = executors.run_webhook(server.url("/tool"), _request())
        assert result["status_code"] == 200 and server.effects["k-1"] == 1
    finally:
        server.stop()

    def cut(*args: Any, **kwargs: Any) -> None:
        raise requests.exceptions.ChunkedEncodingError("connection broken mid-body")

    monkeypatch.setattr(executors.requests, "post", cut)
    with pytest.raises(executors.TransientError):
        executors.run_webhook("http://127.0.0.1:9/tool", _request())


def _request() -> executors.ExecutionRequest:
    return executors.ExecutionRequest(tool="jira.create_ticket", arguments={"a": 1}, text="",
                                      idempotency_key="k-1", dry_run=False, proposal_id=1)
