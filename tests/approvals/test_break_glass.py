"""The break-glass page and switch: managers only, a reason every time, audited; the
gateway refuses, approvals are refused in read-only, and workers hold executions."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError
from django.test import Client

from agents.models import AuditEvent, Workflow
from approvals import services
from approvals.execution import execution_claim
from approvals.models import Execution, ExecutionStatus, ProposalStatus
from tests.factories import open_run, submit

URL = "/break-glass/"


@pytest.fixture
def manager_client(manager) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(manager)
    return client


def _switch() -> tuple[bool, list[str]]:
    s = services.break_glass_get()
    return s.read_only, list(s.disabled_categories)


def test_managers_see_the_page(manager_client: Client, tools: dict) -> None:
    r = manager_client.get(URL)
    assert r.status_code == 200 and "Global read-only" in r.content.decode()
    assert 'value="jira"' in r.content.decode()


def test_reviewers_get_403_and_change_nothing(reviewer, tools: dict) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(reviewer)
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"what": "read_only", "value": "on", "reason": "x"}).status_code == 403
    assert _switch() == (False, [])


def test_anonymous_is_sent_to_login(db: None) -> None:
    r = Client().post(URL, {"what": "read_only", "value": "on", "reason": "x"})
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]
    assert _switch() == (False, [])


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_are_405(manager_client: Client, method: str) -> None:
    assert getattr(manager_client, method)(URL).status_code == 405


def test_read_only_on_and_off_is_audited_with_the_reason(manager_client: Client,
                                                         manager) -> None:  # type: ignore[no-untyped-def]
    r = manager_client.post(URL, {"what": "read_only", "value": "on", "reason": "incident 42"})
    assert r.status_code == 302 and _switch() == (True, [])
    event = AuditEvent.objects.get(action="break_glass.update")
    assert event.reason == "incident 42" and event.actor_name == manager.username
    assert event.data == {"before": {"read_only": False, "disabled_categories": []},
                          "after": {"read_only": True, "disabled_categories": []}}
    manager_client.post(URL, {"what": "read_only", "value": "off", "reason": "resolved"})
    assert _switch() == (False, [])
    assert AuditEvent.objects.filter(action="break_glass.update").count() == 2


def test_categories_are_disabled_and_re_enabled(manager_client: Client, tools: dict) -> None:
    manager_client.post(URL, {"what": "categories", "category": ["slack", "jira"],
                              "reason": "spam wave"})
    assert _switch() == (False, ["jira", "slack"])
    manager_client.post(URL, {"what": "categories", "reason": "over"})
    assert _switch() == (False, [])


def test_a_workflow_is_paused_and_resumed(manager_client: Client, workflow: Workflow) -> None:
    manager_client.post(URL, {"what": "workflow", "workflow": workflow.slug, "value": "on",
                              "reason": "bad prompts"})
    workflow.refresh_from_db()
    assert workflow.paused
    assert AuditEvent.objects.filter(action="workflow.pause", reason="bad prompts").exists()
    manager_client.post(URL, {"what": "workflow", "workflow": workflow.slug, "value": "off",
                              "reason": "fixed"})
    workflow.refresh_from_db()
    assert not workflow.paused


@pytest.mark.parametrize("data", [
    {"what": "read_only", "value": "on", "reason": "  "},
    {"what": "read_only", "value": "on"},
    {"what": "categories", "category": ["jira"], "reason": ""},
    {"what": "workflow", "workflow": "support-triage", "value": "on", "reason": ""},
])
def test_a_missing_reason_is_a_400_and_nothing_changes(manager_client: Client,
                                                       workflow: Workflow, data: dict) -> None:
    r = manager_client.post(URL, data)
    assert r.status_code == 400 and "reason: a reason is required" in r.content.decode()
    workflow.refresh_from_db()
    assert _switch() == (False, []) and not workflow.paused
    assert not AuditEvent.objects.filter(action__in=["break_glass.update",
                                                     "workflow.pause"]).exists()


def test_an_unknown_switch_is_a_400(manager_client: Client) -> None:
    r = manager_client.post(URL, {"what": "everything", "reason": "x"})
    assert r.status_code == 400 and "what: unknown switch" in r.content.decode()


def test_an_unknown_workflow_is_a_404(manager_client: Client) -> None:
    r = manager_client.post(URL, {"what": "workflow", "workflow": "nope", "value": "on",
                                  "reason": "x"})
    assert r.status_code == 404


def test_the_service_requires_a_reason(manager) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError):
        services.break_glass_update(actor=manager, read_only=True, reason="")


# ------------------------------------------------------------ what the switch does


def test_read_only_refuses_new_proposals_and_approvals(workflow: Workflow, agent, reviewer,  # type: ignore[no-untyped-def]
                                                       manager) -> None:
    run = open_run(agent, workflow)
    pending = submit(run)
    services.break_glass_update(actor=manager, read_only=True, reason="incident")
    refused = submit(run)
    assert refused.status == ProposalStatus.REFUSED
    assert refused.decision_reasons == ["break-glass: read-only mode is on"]
    with pytest.raises(services.ConflictError, match="read-only"):
        services.proposal_approve(actor=reviewer, proposal=pending,
                                  expected_version=pending.version)
    pending.refresh_from_db()
    assert pending.status == ProposalStatus.PENDING and not Execution.objects.exists()


def test_approving_in_read_only_is_a_409_on_the_page(workflow: Workflow, agent, reviewer,  # type: ignore[no-untyped-def]
                                                     manager) -> None:
    pending = submit(open_run(agent, workflow))
    services.break_glass_update(actor=manager, read_only=True, reason="incident")
    client = Client()
    client.force_login(reviewer)
    r = client.post(f"/queue/{pending.pk}/approve/", {"version": pending.version})
    assert r.status_code == 409 and "read-only" in r.content.decode()


def _queued_execution(workflow: Workflow, agent, tool: str = "jira.create_ticket",  # type: ignore[no-untyped-def]
                      args: dict | None = None) -> Execution:
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=4)
    p = submit(open_run(agent, workflow), tool, args)
    assert p.status == ProposalStatus.APPROVED
    return Execution.objects.get(proposal=p)


@pytest.mark.parametrize(("switch", "reason"), [
    ({"read_only": True}, "break-glass read-only"),
    ({"disabled_categories": ["jira"]}, "break-glass: category jira disabled"),
])
def test_workers_hold_executions_once_the_switch_commits(workflow: Workflow, agent, manager,  # type: ignore[no-untyped-def]
                                                         switch: dict, reason: str) -> None:
    execution = _queued_execution(workflow, agent)
    services.break_glass_update(actor=manager, reason="stop", **switch)
    assert execution_claim(execution_id=execution.pk) is None
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.HELD and execution.attempts == 0
    assert AuditEvent.objects.filter(action="execution.hold", reason=reason).exists()


def test_workers_hold_executions_of_a_paused_workflow(workflow: Workflow, agent, manager) -> None:  # type: ignore[no-untyped-def]
    from agents.services import workflow_set_paused
    execution = _queued_execution(workflow, agent)
    workflow_set_paused(actor=manager, workflow=workflow, paused=True, reason="stop")
    assert execution_claim(execution_id=execution.pk) is None
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.HELD


def test_a_disabled_category_does_not_hold_other_categories(workflow: Workflow, agent,  # type: ignore[no-untyped-def]
                                                            manager) -> None:
    execution = _queued_execution(workflow, agent)
    services.break_glass_update(actor=manager, disabled_categories=["slack"], reason="spam")
    claim = execution_claim(execution_id=execution.pk)
    assert claim is not None
    execution.refresh_from_db()
    assert execution.status == ExecutionStatus.RUNNING
