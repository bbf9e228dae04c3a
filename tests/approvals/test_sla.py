"""Review SLA: the beat task expires overdue items and applies on_timeout."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.conf import settings
from django.utils import timezone

from agents.models import AuditEvent, Workflow
from agents.policy import DEFAULT_POLICY_YAML
from approvals import services, tasks
from approvals.models import Execution, Proposal, ProposalStatus, WebhookDelivery
from tests.factories import open_run, publish, submit


def _policy(on_timeout: str, sla: int = 30) -> str:
    return (DEFAULT_POLICY_YAML.replace("on_timeout: human_handoff", f"on_timeout: {on_timeout}")
            .replace("review_sla_minutes: 240", f"review_sla_minutes: {sla}"))


def _overdue(workflow: Workflow, agent, on_timeout: str) -> Proposal:  # type: ignore[no-untyped-def]
    publish(workflow, _policy(on_timeout))
    p = submit(open_run(agent, workflow))
    assert p.status == ProposalStatus.PENDING
    assert p.sla_deadline is not None
    assert timedelta(minutes=29) < p.sla_deadline - p.created_at <= timedelta(minutes=30)
    Proposal.objects.filter(pk=p.pk).update(sla_deadline=timezone.now() - timedelta(seconds=1))
    return p


@pytest.mark.parametrize(("on_timeout", "status"), [
    ("human_handoff", ProposalStatus.HANDED_OFF),
    ("reject", ProposalStatus.EXPIRED),
])
def test_overdue_items_get_the_on_timeout_fallback(workflow: Workflow, agent, on_timeout: str,  # type: ignore[no-untyped-def]
                                                   status: str) -> None:
    p = _overdue(workflow, agent, on_timeout)
    assert services.proposals_expire_overdue() == 1
    p.refresh_from_db()
    assert (p.status, p.fallback_applied) == (status, f"on_timeout:{on_timeout}")
    assert p.decided_at is not None and p.version == 2
    event = AuditEvent.objects.get(action="proposal.expire")
    assert event.actor_type == "system" and event.to_state == status
    assert f"fallback {on_timeout}" in event.reason
    assert not Execution.objects.exists()
    assert services.proposals_expire_overdue() == 0  # nothing twice


def test_escalate_keeps_it_pending_with_a_new_deadline_and_a_flag(
        workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    p = _overdue(workflow, agent, "escalate")
    assert services.proposals_expire_overdue() == 1
    p.refresh_from_db()
    assert p.status == ProposalStatus.PENDING and p.fallback_applied == "on_timeout:escalate"
    assert p.sla_deadline > timezone.now() + timedelta(minutes=29)
    assert p.decided_at is None and p.version == 2
    # Flagged once: a second pass, even overdue again, does not re-escalate forever.
    Proposal.objects.filter(pk=p.pk).update(sla_deadline=timezone.now() - timedelta(seconds=1))
    assert services.proposals_expire_overdue() == 0


def test_items_not_yet_due_and_decided_items_are_left_alone(workflow: Workflow, agent,  # type: ignore[no-untyped-def]
                                                            reviewer) -> None:
    publish(workflow, _policy("reject"))
    run = open_run(agent, workflow)
    fresh = submit(run)
    decided = submit(run)
    services.proposal_reject(actor=reviewer, proposal=decided, expected_version=1,
                             reason_code="tone")
    Proposal.objects.filter(pk=decided.pk).update(sla_deadline=timezone.now() - timedelta(1))
    assert services.proposals_expire_overdue() == 0
    fresh.refresh_from_db()
    assert fresh.status == ProposalStatus.PENDING


def test_expire_of_an_already_decided_item_returns_none(workflow: Workflow, agent,  # type: ignore[no-untyped-def]
                                                        reviewer) -> None:
    p = _overdue(workflow, agent, "reject")
    services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    assert services.proposal_expire(proposal=p) is None
    p.refresh_from_db()
    assert p.status == ProposalStatus.HANDED_OFF


def test_the_fallback_of_the_deciding_policy_version_applies(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    p = _overdue(workflow, agent, "reject")
    publish(workflow, _policy("human_handoff"))  # a later version does not change the deal
    services.proposals_expire_overdue()
    p.refresh_from_db()
    assert p.status == ProposalStatus.EXPIRED


def test_the_agent_is_notified_of_the_timeout(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    agent.webhook_url = "http://127.0.0.1:9/hook"
    agent.save(update_fields=["webhook_url"])
    p = _overdue(workflow, agent, "human_handoff")
    services.proposals_expire_overdue()
    delivery = WebhookDelivery.objects.get(proposal=p)
    assert delivery.event == "proposal.decided"
    assert delivery.payload["status"] == ProposalStatus.HANDED_OFF


def test_the_beat_task_runs_the_sweep(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    _overdue(workflow, agent, "reject")
    assert tasks.expire_overdue() == 1  # called directly: a thin wrapper, no broker


def test_the_beat_schedule_has_the_sla_sweep() -> None:
    entry = settings.CELERY_BEAT_SCHEDULE["expire-overdue-reviews"]
    assert entry["task"] == "approvals.tasks.expire_overdue"
    assert entry["schedule"].total_seconds() >= 1
    assert tasks.expire_overdue.name == entry["task"]
