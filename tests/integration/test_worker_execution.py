"""Approved actions run on a real Celery worker, exactly once, against a fake tool."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from django.db import transaction

from agents.models import (
    AuditEvent,
    AutonomyLevel,
    BreakerState,
    ReleaseNote,
    ReleaseNoteKind,
    Tool,
    Workflow,
)
from approvals.execution import executions_sweep
from approvals.models import Execution, ExecutionStatus, Proposal, ProposalStatus
from approvals.services import break_glass_update
from bench.fake_tool_server import FakeToolServer
from bench.faults import WorkerProcess
from shadow.services import review_approve
from tests.factories import open_run, submit
from tests.integration.helpers import wait_for

pytestmark = pytest.mark.integration

DONE = (ExecutionStatus.SUCCEEDED, ExecutionStatus.FAILED)


def propose(agent, workflow, n: int, prefix: str = "T") -> list[Proposal]:  # type: ignore[no-untyped-def]
    # One run per proposal: the default policy allows 8 tool calls per run.
    return [submit(open_run(agent, workflow, case_ref=f"{prefix}-{i}"),
                   arguments={"project": "SUP", "summary": f"{prefix} action {i}"})
            for i in range(n)]


def approve(reviewer, proposals: list[Proposal]) -> list[Execution]:  # type: ignore[no-untyped-def]
    """Each approval commits on its own, as from the review page."""
    for proposal in proposals:
        review_approve(actor=reviewer, proposal=proposal, expected_version=proposal.version)
    return list(Execution.objects.filter(proposal__in=proposals))


def settled(executions: list[Execution], statuses: tuple[str, ...] = DONE) -> bool:
    pks = [e.pk for e in executions]
    return Execution.objects.filter(pk__in=pks, status__in=statuses).count() == len(pks)


def audit_actions(execution: Execution) -> list[str]:
    return list(AuditEvent.objects.filter(object_type="approvals.execution",
                                          object_id=str(execution.pk))
                .order_by("id").values_list("action", flat=True))


def test_each_approval_runs_once_with_its_idempotency_key(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/tool")
    executions = approve(reviewer, propose(agent, workflow, 6))
    assert len(executions) == 6

    wait_for(lambda: settled(executions), what="6 executions to finish")

    keys = set()
    for execution in executions:
        execution.refresh_from_db()
        key = str(execution.idempotency_key)
        keys.add(key)
        assert execution.status == ExecutionStatus.SUCCEEDED
        assert execution.attempts == 1
        assert fake_tool.effects[key] == 1
        assert execution.result["response"]["key"] == key
        actions = audit_actions(execution)
        assert "execution.start" in actions and "execution.finish" in actions
    assert set(fake_tool.effects) == keys
    assert fake_tool.stats()["effects"] == 6
    assert fake_tool.stats()["overlapping_same_key_requests"] == 0


def test_a_transient_503_is_retried_with_backoff_and_acts_once(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/flaky/1")  # the first request of each key gets 503
    [execution] = approve(reviewer, propose(agent, workflow, 1))

    wait_for(lambda: settled([execution]), what="the retried execution")

    execution.refresh_from_db()
    key = str(execution.idempotency_key)
    assert execution.status == ExecutionStatus.SUCCEEDED
    assert execution.attempts == 2
    assert fake_tool.requests[key] == 2
    assert fake_tool.effects[key] == 1
    first, second = fake_tool.request_times[key]
    assert second - first >= 1.5  # backoff 2 ** attempt seconds, not an immediate retry
    finishes = AuditEvent.objects.filter(object_type="approvals.execution",
                                         object_id=str(execution.pk), action="execution.finish")
    assert list(finishes.order_by("id").values_list("to_state", flat=True)) == [
        ExecutionStatus.QUEUED, ExecutionStatus.SUCCEEDED]


def test_a_permanent_4xx_ends_failed_without_retry(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/status/422")
    [execution] = approve(reviewer, propose(agent, workflow, 1))

    wait_for(lambda: settled([execution]), what="the failing execution")

    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.FAILED
    assert execution.attempts == 1
    assert "HTTP 422" in execution.error
    assert fake_tool.requests[str(execution.idempotency_key)] == 1
    assert fake_tool.stats()["effects"] == 0


def test_read_only_switched_on_before_commit_holds_everything_until_released(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], reviewer, manager, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/tool")
    proposals = propose(agent, workflow, 3)
    # The switch commits together with the approvals: the worker's claim must see it.
    with transaction.atomic():
        executions = approve(reviewer, proposals)
        break_glass_update(actor=manager, read_only=True, reason="incident 42")

    wait_for(lambda: settled(executions, (ExecutionStatus.HELD,)), what="executions held")
    assert fake_tool.stats()["requests"] == 0
    for execution in executions:
        actions = audit_actions(execution)
        assert "execution.hold" in actions and "execution.start" not in actions

    # Still read-only: the sweeper releases nothing.
    executions_sweep()
    assert settled(executions, (ExecutionStatus.HELD,))

    break_glass_update(actor=manager, read_only=False, reason="incident over")
    assert executions_sweep() >= 3
    wait_for(lambda: settled(executions), what="released executions to finish")
    assert settled(executions, (ExecutionStatus.SUCCEEDED,))
    assert fake_tool.stats()["effects"] == 3
    for execution in executions:
        assert audit_actions(execution)[-3:] == [
            "execution.release", "execution.start", "execution.finish"]


def test_level_3_auto_executed_proposals_run_on_the_worker(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/tool")
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=AutonomyLevel.ACT_LOW_RISK)
    workflow.refresh_from_db()
    proposals = propose(agent, workflow, 2)
    assert {p.status for p in proposals} == {ProposalStatus.APPROVED}
    executions = list(Execution.objects.filter(proposal__in=proposals))
    assert len(executions) == 2

    wait_for(lambda: settled(executions), what="auto-executed actions")

    assert settled(executions, (ExecutionStatus.SUCCEEDED,))
    assert fake_tool.stats()["effects"] == 2


@pytest.mark.worker_env(GATEHOUSE_BREAKER_THRESHOLD=3, GATEHOUSE_BREAKER_COOLDOWN_SECONDS=3600)
def test_breaker_trips_after_threshold_and_demotes_level_3_to_suggest(
    celery_worker_proc: WorkerProcess, fake_tool: FakeToolServer,
    webhook_tool: Callable[[str], Tool], reviewer, agent, workflow,  # type: ignore[no-untyped-def]
) -> None:
    webhook_tool("/status/400")
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=AutonomyLevel.ACT_LOW_RISK)
    workflow.refresh_from_db()
    # All three are decided at level 3 before the first failure can demote it.
    with transaction.atomic():
        failing = propose(agent, workflow, 3, prefix="F")
    executions = list(Execution.objects.filter(proposal__in=failing))
    assert len(executions) == 3

    wait_for(lambda: settled(executions), what="three failures")
    wait_for(lambda: Tool.objects.get(name="jira.create_ticket").breaker_state
             == BreakerState.OPEN, what="the breaker to open")

    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.SUGGEST
    note = ReleaseNote.objects.get(workflow=workflow, kind=ReleaseNoteKind.AUTO_DEMOTE)
    assert (note.old_level, note.new_level) == (3, 2)
    assert "circuit breaker" in note.reason
    assert AuditEvent.objects.filter(action="tool.breaker_open").count() == 1

    # The tool is healthy again, but the breaker holds new work until its cooldown.
    webhook_tool("/tool")
    [after] = propose(agent, workflow, 1, prefix="A")
    assert after.status == ProposalStatus.PENDING  # level 2 now: reviewed first
    [held] = approve(reviewer, [after])
    wait_for(lambda: settled([held], (ExecutionStatus.HELD,)), what="the held execution")
    assert fake_tool.stats()["effects"] == 0
    hold = AuditEvent.objects.get(object_type="approvals.execution", object_id=str(held.pk),
                                  action="execution.hold")
    assert "circuit breaker open" in hold.reason
