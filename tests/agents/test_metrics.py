"""shadow.metrics on constructed data: exact numbers, percentiles, day grouping."""

from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import pytest
from django.db.models import F
from django.utils import timezone

from agents.models import Agent, AutonomyLevel, Workflow
from approvals import services
from approvals.models import Execution, Proposal, Run
from shadow import metrics
from shadow import services as shadow_services
from tests.factories import open_run, submit

pytestmark = pytest.mark.django_db

EDITED = {"project": "SUP", "summary": "Printer is on fire, escalate"}


@pytest.fixture
def decided(workflow: Workflow, agent: Agent, reviewer) -> list[Proposal]:  # type: ignore[no-untyped-def]
    """10 reviewed proposals (5 plain approvals, 2 edits, 2 rejections, 1 hand-off),
    one policy violation, known latencies and costs."""
    proposals = [submit(open_run(agent, workflow, case_ref=f"T-{i}")) for i in range(10)]
    for p in proposals[:5]:
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version)
    for p in proposals[5:7]:
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version,
                                       edited_arguments=EDITED, failure_category="factual")
    for p in proposals[7:9]:
        shadow_services.review_reject(actor=reviewer, proposal=p, expected_version=p.version,
                                      reason_code="factual")
    services.proposal_hand_off(actor=reviewer, proposal=proposals[9],
                               expected_version=proposals[9].version)
    # A tool the policy does not allow: a violation, handed off by the fallback.
    submit(proposals[0].run, tool="bogus.tool", arguments={})
    for i, p in enumerate(proposals):
        Proposal.objects.filter(pk=p.pk).update(
            decided_at=F("created_at") + timedelta(seconds=10 * (i + 1)))
    for i, p in enumerate(proposals[:3]):
        p.refresh_from_db()
        Execution.objects.filter(proposal=p).update(
            status="succeeded", finished_at=p.decided_at + timedelta(seconds=i + 1))
    runs = [p.run for p in proposals]
    for run, cost in zip(runs[:4], ("0.50", "1.00", "1.50", "0.20"), strict=True):
        Run.objects.filter(pk=run.pk).update(outcome="resolved", cost=Decimal(cost))
    Run.objects.filter(pk=runs[4].pk).update(outcome="failed", cost=Decimal("9"))
    return proposals


def _window(workflow: Workflow, **kwargs) -> metrics.Metrics:  # type: ignore[no-untyped-def]
    now = timezone.now()
    return metrics.workflow_metrics(workflow, since=now - timedelta(days=1),
                                    until=now + timedelta(minutes=5), **kwargs)


def test_it_counts_review_outcomes_exactly(workflow: Workflow, decided: list[Proposal]) -> None:
    m = _window(workflow)
    assert (m.proposals, m.reviewed, m.decided, m.runs) == (11, 10, 11, 10)
    assert m.approval_without_edit_rate == pytest.approx(0.5)
    assert m.edit_rate == pytest.approx(0.2)
    assert m.rejection_rate == pytest.approx(0.2)
    # The reviewer's hand-off and the violation's fallback hand-off.
    assert m.escalation_rate == pytest.approx(2 / 11)


def test_it_reports_violations_per_thousand_distinct_runs(
        workflow: Workflow, decided: list[Proposal]) -> None:
    m = _window(workflow)
    assert m.violations == 1
    assert m.violations_per_1000_runs == pytest.approx(100.0)


def test_it_averages_cost_over_resolved_runs_only(
        workflow: Workflow, decided: list[Proposal]) -> None:
    m = _window(workflow)
    assert m.resolved_tasks == 4
    assert m.cost_per_resolved_task == pytest.approx(0.80)


def test_it_computes_latency_percentiles_like_percentile_cont(
        workflow: Workflow, decided: list[Proposal]) -> None:
    m = _window(workflow)
    assert m.p50_decision_latency_s == pytest.approx(55.0)
    assert m.p95_decision_latency_s == pytest.approx(95.5)
    assert m.p50_execution_latency_s == pytest.approx(2.0)
    assert m.p95_execution_latency_s == pytest.approx(2.9)


def test_python_percentile_matches_the_database() -> None:
    assert metrics.percentile([], 0.5) is None
    assert metrics.percentile([7.0], 0.95) == 7.0
    values = [float(10 * i) for i in range(1, 11)]
    assert metrics.percentile(values, 0.5) == pytest.approx(55.0)
    assert metrics.percentile(values, 0.95) == pytest.approx(95.5)


def test_it_filters_by_agent_version(workflow: Workflow, agent: Agent,
                                     decided: list[Proposal]) -> None:
    run = services.run_open(actor=agent, workflow=workflow, case_ref="T-v2", agent_version="v2")
    submit(run)
    assert _window(workflow, agent_version="v2").proposals == 1
    assert _window(workflow, agent_version="v1").proposals == 11
    assert _window(workflow).proposals == 12


def test_empty_window_gives_none_not_zero(workflow: Workflow) -> None:
    m = _window(workflow)
    assert m.proposals == 0
    assert m.approval_without_edit_rate is None
    assert m.cost_per_resolved_task is None
    assert m.p95_decision_latency_s is None


def test_agreement_rate_counts_shadow_comparisons(
        workflow: Workflow, agent: Agent, reviewer) -> None:  # type: ignore[no-untyped-def]
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=AutonomyLevel.SHADOW)
    workflow.refresh_from_db()
    args = {"project": "SUP", "summary": "Printer on fire"}
    for case in ("S-1", "S-2", "S-3"):
        submit(open_run(agent, workflow, case_ref=case), arguments=args)
    for case in ("S-1", "S-2"):
        shadow_services.outcome_record(actor=reviewer, workflow=workflow, case_ref=case,
                                       tool_name="jira.create_ticket", arguments=args)
    shadow_services.outcome_record(actor=reviewer, workflow=workflow, case_ref="S-3",
                                   tool_name="confluence.search", arguments={"query": "x"})
    m = _window(workflow)
    assert m.comparisons == 3
    assert m.agreement_rate == pytest.approx(2 / 3)


def test_timeseries_groups_by_day_with_one_query_per_family(
        workflow: Workflow, agent: Agent, reviewer,  # type: ignore[no-untyped-def]
        django_assert_max_num_queries) -> None:  # type: ignore[no-untyped-def]
    today = [submit(open_run(agent, workflow, case_ref=f"A-{i}")) for i in range(3)]
    older = [submit(open_run(agent, workflow, case_ref=f"B-{i}")) for i in range(2)]
    for p in today[:2] + older[:1]:
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version)
    Proposal.objects.filter(pk__in=[p.pk for p in older]).update(
        created_at=F("created_at") - timedelta(days=3),
        decided_at=F("decided_at") - timedelta(days=3))
    with django_assert_max_num_queries(6):
        points = metrics.workflow_timeseries(workflow, days=7)
    with django_assert_max_num_queries(6):
        metrics.workflow_timeseries(workflow, days=90)
    assert len(points) == 7
    by_day = {p.day: p for p in points}
    day0 = timezone.localdate()
    assert by_day[day0].proposals == 3
    assert by_day[day0].reviewed == 2
    assert by_day[day0].approval_without_edit_rate == pytest.approx(1.0)
    assert by_day[day0 - timedelta(days=3)].proposals == 2
    assert by_day[day0 - timedelta(days=3)].reviewed == 1
    assert by_day[day0 - timedelta(days=1)].proposals == 0
    assert by_day[day0 - timedelta(days=1)].approval_without_edit_rate is None
