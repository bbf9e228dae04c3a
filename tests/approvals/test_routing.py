"""DESIGN.md's routing table, end to end through services.proposal_submit on PostgreSQL:
every level x low-risk / high-risk tool / approval rule match, refusals with their
fallback, break-glass, unregistered tools, argument conditions, policy versions."""

from __future__ import annotations

import pytest
from django.core.exceptions import ValidationError

from agents.models import Tool, ToolRisk, Workflow
from approvals import services
from approvals.models import (
    Decision,
    Execution,
    Proposal,
    ProposalStatus,
    Run,
    Violation,
)
from tests.factories import ToolFactory, open_run, publish, submit

POLICY = """
max_tool_calls: 50
allowed_tools: [jira.create_ticket, jira.close_ticket, slack.send_message, confluence.search]
approval_required_tools:
  - slack.send_message: {channels: ["#announcements", "#customers"]}
  - jira.close_ticket: {resolution: ["wontfix"]}
  - confluence.search: {spaces: ["HR"]}
fallback:
  on_timeout: human_handoff
  on_policy_violation: {fallback}
  on_budget_exceeded: human_handoff
"""

LOW = ("jira.create_ticket", {"project": "SUP", "summary": "Printer on fire"})
HIGH = ("jira.close_ticket", {"key": "SUP-1", "resolution": "done"})
RULE_LOW = ("slack.send_message", {"channel": "#customers", "text": "We are on it"})
RULE_HIGH = ("jira.close_ticket", {"key": "SUP-1", "resolution": "wontfix"})

SHADOW = (Decision.RECORD, ProposalStatus.SHADOW, Violation.NONE)
REVIEW = (Decision.REVIEW, ProposalStatus.PENDING, Violation.NONE)
EXECUTE = (Decision.EXECUTE, ProposalStatus.APPROVED, Violation.NONE)
NEAR_MISS = (Decision.REFUSE, ProposalStatus.HANDED_OFF, Violation.NEAR_MISS)

# level -> (low-risk, high-risk, rule match on a low-risk tool, rule match on a high-risk tool)
TABLE = {
    0: (SHADOW, SHADOW, SHADOW, SHADOW),
    1: (NEAR_MISS, NEAR_MISS, REVIEW, REVIEW),  # without a draft; drafts below
    2: (REVIEW, REVIEW, REVIEW, REVIEW),
    3: (EXECUTE, NEAR_MISS, REVIEW, REVIEW),
    4: (EXECUTE, REVIEW, REVIEW, REVIEW),
}
CASES = [(level, column, call) for level in TABLE
         for column, call in enumerate((LOW, HIGH, RULE_LOW, RULE_HIGH))]


def _policy(fallback: str = "human_handoff") -> str:
    return POLICY.replace("{fallback}", fallback)


@pytest.fixture
def routed(workflow: Workflow, agent) -> Run:  # type: ignore[no-untyped-def]
    publish(workflow, _policy())
    return open_run(agent, workflow)


def _at(workflow: Workflow, level: int) -> None:
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=level)


@pytest.mark.parametrize(("level", "column", "call"), CASES,
                         ids=[f"L{lv}-{['low', 'high', 'rule-low', 'rule-high'][c]}"
                              for lv, c, _ in CASES])
def test_routing_follows_the_design_table(routed: Run, workflow: Workflow, level: int,
                                          column: int, call: tuple[str, dict]) -> None:
    _at(workflow, level)
    p = submit(routed, call[0], call[1])
    assert (p.decision, p.status, p.violation) == TABLE[level][column]
    assert p.level_at_decision == level
    assert p.policy == workflow.policies.get(is_active=True)
    assert p.decision_reasons and all(isinstance(r, str) for r in p.decision_reasons)
    # Only "executed at once" writes the execution (outbox) row in the same transaction.
    assert Execution.objects.filter(proposal=p).exists() is (p.decision == Decision.EXECUTE)
    assert (p.sla_deadline is not None) is (p.status == ProposalStatus.PENDING)


def test_level_1_reviews_a_low_risk_draft_before_it_is_sent(routed: Run,
                                                            workflow: Workflow) -> None:
    _at(workflow, 1)
    p = submit(routed, "slack.send_message", {"channel": "#general", "text": "Hi"},
               draft_text="Hello Ada, your printer ticket is SUP-1.")
    assert (p.decision, p.status) == (Decision.REVIEW, ProposalStatus.PENDING)
    assert p.decision_reasons == ["level 1 draft: every draft is reviewed before it is sent"]


def test_level_1_refuses_a_high_risk_tool_even_with_a_draft(routed: Run,
                                                            workflow: Workflow) -> None:
    _at(workflow, 1)
    p = submit(routed, *HIGH, draft_text="Closing this.")
    assert (p.status, p.violation) == (ProposalStatus.HANDED_OFF, Violation.NEAR_MISS)
    assert "high-risk tool is not allowed" in p.decision_reasons[0]


def test_level_1_refusal_applies_the_violation_fallback(routed: Run,
                                                        workflow: Workflow) -> None:
    publish(workflow, _policy("reject"))
    _at(workflow, 1)
    p = submit(routed, *LOW)
    assert (p.status, p.violation, p.fallback_applied) == (
        ProposalStatus.REFUSED, Violation.NEAR_MISS, "reject")
    assert p.decision_reasons[-1] == "fallback on_policy_violation: reject"


@pytest.mark.parametrize("level", [0, 1, 2, 3, 4])
@pytest.mark.parametrize(("fallback", "status"), [
    ("human_handoff", ProposalStatus.HANDED_OFF),
    ("reject", ProposalStatus.REFUSED),
    ("escalate", ProposalStatus.PENDING),
])
def test_a_tool_not_in_allowed_tools_is_refused_at_every_level(
        workflow: Workflow, agent, level: int, fallback: str,  # type: ignore[no-untyped-def]
        status: str) -> None:
    publish(workflow, _policy(fallback).replace(", confluence.search]", "]"))
    _at(workflow, level)
    run = open_run(agent, workflow)
    p = submit(run, "confluence.search", {"q": "printer"})
    assert (p.decision, p.status, p.violation, p.fallback_applied) == (
        Decision.REFUSE, status, Violation.VIOLATION, fallback)
    assert p.decision_reasons[0] == "tool 'confluence.search' is not in allowed_tools"
    assert (p.sla_deadline is not None) is (status == ProposalStatus.PENDING)
    assert not Execution.objects.filter(proposal=p).exists()
    run.refresh_from_db()
    assert run.tool_calls == 0  # a refused call claims no budget


def test_a_disallowed_tool_is_recorded_as_a_violation_whatever_its_arguments(
        routed: Run, workflow: Workflow) -> None:
    publish(workflow, _policy().replace("jira.create_ticket, ", ""))
    p = submit(routed, "jira.create_ticket", {"not": "schema-valid"})
    assert p.violation == Violation.VIOLATION


def test_bad_arguments_for_an_allowed_tool_are_a_400_and_nothing_is_written(
        routed: Run) -> None:
    with pytest.raises(ValidationError) as exc:
        submit(routed, "jira.create_ticket", {"project": "SUP"})
    assert "arguments.summary" in exc.value.message_dict
    routed.refresh_from_db()
    assert (routed.tool_calls, Proposal.objects.count()) == (0, 0)


@pytest.mark.parametrize("fallback", ["human_handoff", "reject", "escalate"])
def test_an_unregistered_tool_is_a_violation_with_the_fallback(
        workflow: Workflow, agent, fallback: str) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy(fallback).replace("confluence.search]", "confluence.search, "
                                                 "github.merge]"))
    p = submit(open_run(agent, workflow), "github.merge", {"pr": 7})
    assert p.tool is None and p.violation == Violation.VIOLATION
    assert p.decision_reasons[0] == "tool 'github.merge' is not registered"
    assert p.fallback_applied == fallback


def test_an_escalated_unregistered_tool_can_never_be_approved_into_an_execution(
        workflow: Workflow, agent, reviewer) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("escalate"))
    p = submit(open_run(agent, workflow), "github.merge", {"pr": 7})
    assert p.status == ProposalStatus.PENDING
    with pytest.raises(services.ConflictError, match="not registered"):
        services.proposal_approve(actor=reviewer, proposal=p, expected_version=p.version)
    assert not Execution.objects.exists()


def test_an_escalated_level_0_refusal_is_never_executed(
        workflow: Workflow, agent, reviewer) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("escalate").replace(", confluence.search]", "]"))
    _at(workflow, 0)
    p = submit(open_run(agent, workflow), "confluence.search", {"q": "x"})
    with pytest.raises(services.ConflictError, match="level 0"):
        services.proposal_approve(actor=reviewer, proposal=p, expected_version=p.version)
    handed = services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=p.version)
    assert handed.status == ProposalStatus.HANDED_OFF and not Execution.objects.exists()


@pytest.mark.parametrize(("switch", "reason"), [
    ({"read_only": True}, "read-only mode is on"),
    ({"disabled_categories": ["jira"]}, "tool category 'jira' is disabled"),
])
def test_break_glass_refuses_without_a_violation(routed: Run, workflow: Workflow, manager,  # type: ignore[no-untyped-def]
                                                 switch: dict, reason: str) -> None:
    _at(workflow, 4)
    services.break_glass_update(actor=manager, reason="incident 42", **switch)
    p = submit(routed, *LOW)
    assert (p.decision, p.status, p.violation, p.fallback_applied) == (
        Decision.REFUSE, ProposalStatus.REFUSED, Violation.NONE, "")
    assert p.decision_reasons == [f"break-glass: {reason}"]
    routed.refresh_from_db()
    assert routed.tool_calls == 0


def test_a_disabled_category_leaves_other_categories_running(routed: Run, workflow: Workflow,  # type: ignore[no-untyped-def]
                                                             manager) -> None:
    _at(workflow, 4)
    services.break_glass_update(actor=manager, disabled_categories=["slack"], reason="spam")
    assert submit(routed, *LOW).status == ProposalStatus.APPROVED


def test_a_paused_workflow_refuses_new_proposals(routed: Run, workflow: Workflow) -> None:
    Workflow.objects.filter(pk=workflow.pk).update(paused=True)
    p = submit(routed, *LOW)
    assert p.status == ProposalStatus.REFUSED
    assert p.decision_reasons == ["break-glass: workflow support-triage is paused"]


@pytest.mark.parametrize(("arguments", "status"), [
    ({"channel": "#customers", "text": "x"}, ProposalStatus.PENDING),
    ({"channel": "#announcements", "text": "x"}, ProposalStatus.PENDING),
    ({"channel": "#general", "text": "x"}, ProposalStatus.APPROVED),
])
def test_slack_channel_conditions_decide_between_review_and_act(
        routed: Run, workflow: Workflow, arguments: dict, status: str) -> None:
    _at(workflow, 3)
    p = submit(routed, "slack.send_message", arguments)
    assert p.status == status
    if status == ProposalStatus.PENDING:
        assert p.decision_reasons == [
            "approval required: slack.send_message when channels in "
            "['#announcements', '#customers']"]


@pytest.mark.parametrize(("spaces", "status"), [
    (["ENG", "HR"], ProposalStatus.PENDING),
    (["HR"], ProposalStatus.PENDING),
    (["ENG"], ProposalStatus.APPROVED),
    ([], ProposalStatus.APPROVED),
])
def test_list_arguments_match_when_any_element_is_listed(
        routed: Run, workflow: Workflow, spaces: list, status: str) -> None:
    _at(workflow, 4)
    assert submit(routed, "confluence.search", {"spaces": spaces}).status == status


def test_each_proposal_keeps_the_policy_version_that_decided_it(routed: Run,
                                                                workflow: Workflow) -> None:
    _at(workflow, 3)
    first = submit(routed, *RULE_LOW)
    publish(workflow, _policy().replace('"#announcements", "#customers"', '"#announcements"'))
    second = submit(routed, *RULE_LOW)
    first.refresh_from_db()
    assert (first.policy.version, first.status) == (2, ProposalStatus.PENDING)
    assert (second.policy.version, second.status) == (3, ProposalStatus.APPROVED)
    assert second.decision_reasons == ["level 3 act low-risk: low-risk tool executed at once"]


def test_a_workflow_without_a_policy_uses_the_built_in_default(agent, workflow: Workflow) -> None:  # type: ignore[no-untyped-def]
    workflow.policies.all().delete()
    p = submit(open_run(agent, workflow), *LOW)
    assert p.policy is None and p.status == ProposalStatus.PENDING


def test_a_high_risk_registration_is_what_counts_not_the_name(routed: Run,
                                                              workflow: Workflow) -> None:
    Tool.objects.filter(name="jira.create_ticket").update(risk=ToolRisk.HIGH)
    _at(workflow, 3)
    assert submit(routed, *LOW).status == ProposalStatus.HANDED_OFF
    ToolFactory(name="confluence.search")  # get_or_create: unchanged, still low
    assert submit(routed, "confluence.search", {"q": "x"}).status == ProposalStatus.APPROVED
