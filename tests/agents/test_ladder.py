"""Gates (pure), promotion/demotion/requalify services, freeze on a new agent version,
automatic demotion on a violation spike."""

from __future__ import annotations

from datetime import timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import override_settings
from django.utils import timezone

from agents import ladder
from agents import services as agent_services
from agents.models import Agent, AuditEvent, AutonomyLevel, ReleaseNote, ReleaseNoteKind, Workflow
from approvals import services
from approvals.models import Proposal
from shadow import metrics
from shadow import services as shadow_services
from tests.factories import open_run, submit

NOW = timezone.now()


def _wf(level: int = 1, days_ago: float = 30, gates: dict | None = None) -> Any:
    return SimpleNamespace(autonomy_level=level, gates=gates or {},
                           level_changed_at=NOW - timedelta(days=days_ago), created_at=NOW)


def _m(**kwargs: Any) -> Any:
    base = dict(comparisons=0, reviewed=150, approval_without_edit_rate=0.8,
                escalation_rate=0.1, violations_per_1000_runs=0.0, cost_per_resolved_task=0.5,
                p95_execution_latency_s=5.0, agreement_rate=None)
    return SimpleNamespace(**{**base, **kwargs})


def _by_name(results: list[ladder.GateResult]) -> dict[str, ladder.GateResult]:
    return {r.name: r for r in results}


def test_gates_to_suggest_pass_on_good_evidence() -> None:
    results = ladder.evaluate_gates(_wf(1), _m(), NOW)
    assert {r.name for r in results} == {"min_samples", "min_approval_without_edit_rate",
                                         "max_escalation_rate", "min_days_at_level"}
    assert all(r.passed for r in results)
    assert ladder.gates_pass(results, _wf(1), 2)


def test_min_samples_fails_below_the_sample_size() -> None:
    results = _by_name(ladder.evaluate_gates(_wf(1), _m(reviewed=99), NOW))
    assert not results["min_samples"].passed
    assert results["min_samples"].actual == 99


def test_min_days_at_level_fails_when_promoted_recently() -> None:
    results = _by_name(ladder.evaluate_gates(_wf(1, days_ago=2), _m(), NOW))
    assert not results["min_days_at_level"].passed
    assert results["min_days_at_level"].required == 7


def test_shadow_gate_counts_comparisons_and_agreement() -> None:
    results = _by_name(ladder.evaluate_gates(_wf(0), _m(comparisons=60, agreement_rate=0.65), NOW))
    assert results["min_samples"].passed
    assert not results["min_agreement_rate"].passed


def test_unmeasured_metric_never_passes() -> None:
    results = _by_name(ladder.evaluate_gates(_wf(2), _m(cost_per_resolved_task=None), NOW))
    assert not results["max_cost_per_resolved_task"].passed


def test_violations_gate_is_strictly_below_one_per_thousand() -> None:
    at_one = _by_name(ladder.evaluate_gates(_wf(3), _m(violations_per_1000_runs=1.0,
                                                       reviewed=400), NOW))
    assert not at_one["below_violations_per_1000_runs"].passed
    below = _by_name(ladder.evaluate_gates(_wf(3), _m(violations_per_1000_runs=0.9,
                                                      reviewed=400, escalation_rate=0.05,
                                                      approval_without_edit_rate=0.95), NOW))
    assert all(r.passed for r in below.values())


def test_workflow_gates_override_the_defaults() -> None:
    wf = _wf(1, gates={"2": {"min_samples": 10, "max_escalation_rate": 0.05}})
    results = _by_name(ladder.evaluate_gates(wf, _m(reviewed=12), NOW))
    assert results["min_samples"].passed and results["min_samples"].required == 10
    assert not results["max_escalation_rate"].passed


def test_gates_pass_refuses_incomplete_or_tampered_results() -> None:
    results = ladder.evaluate_gates(_wf(1), _m(), NOW)
    assert not ladder.gates_pass(results[:-1], _wf(1), 2)
    assert not ladder.gates_pass(results, _wf(1), 3)
    lowered = [ladder.GateResult(r.name, 0.0, r.actual, True, r.target_level) for r in results]
    assert not ladder.gates_pass(lowered, _wf(1), 2)
    assert ladder.evaluate_gates(_wf(4), _m(), NOW) == []


# ------------------------------------------------------------------ services

EASY = {"2": {"min_samples": 2, "min_days_at_level": 0}}


@pytest.fixture
def draft_workflow(workflow: Workflow, agent: Agent, reviewer) -> Workflow:  # type: ignore[no-untyped-def]
    """support-triage at level 1 with two unedited approvals and easy level-2 gates."""
    for i in range(2):
        p = submit(open_run(agent, workflow, case_ref=f"D-{i}"))
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version)
    Workflow.objects.filter(pk=workflow.pk).update(
        autonomy_level=AutonomyLevel.DRAFT, gates=EASY,
        level_changed_at=timezone.now() - timedelta(days=20))
    workflow.refresh_from_db()
    return workflow


def _evidence(workflow: Workflow, version: str | None = None,
              level: int | None = None) -> tuple[metrics.Metrics, list[ladder.GateResult]]:
    from agents.views import gate_evidence
    return gate_evidence(workflow, agent_version=version or workflow.current_agent_version,
                         target_level=level, include_days=level is None)


@pytest.mark.django_db
def test_promote_moves_one_level_with_a_release_note(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    m, results = _evidence(draft_workflow)
    promoted = agent_services.workflow_promote(
        actor=manager, workflow=draft_workflow, reason="two clean weeks",
        evidence={"metrics": m.to_json()}, gate_results=results)
    assert promoted.autonomy_level == AutonomyLevel.SUGGEST
    note = ReleaseNote.objects.get(workflow=draft_workflow, kind=ReleaseNoteKind.PROMOTE)
    assert (note.old_level, note.new_level, note.actor) == (1, 2, manager)
    assert note.evidence["gates_passed"] is True
    assert AuditEvent.objects.filter(action="workflow.promote").count() == 1


@pytest.mark.django_db
def test_promote_refuses_without_reason(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    _, results = _evidence(draft_workflow)
    with pytest.raises(ValidationError) as exc:
        agent_services.workflow_promote(actor=manager, workflow=draft_workflow, reason=" ",
                                        evidence={}, gate_results=results)
    assert "reason" in exc.value.message_dict


@pytest.mark.django_db
def test_promote_refuses_failing_gates_without_override(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    Workflow.objects.filter(pk=draft_workflow.pk).update(gates={})
    draft_workflow.refresh_from_db()
    _, results = _evidence(draft_workflow)
    with pytest.raises(ValidationError) as exc:
        agent_services.workflow_promote(actor=manager, workflow=draft_workflow, reason="go",
                                        evidence={}, gate_results=results)
    assert "override_justification" in exc.value.message_dict
    draft_workflow.refresh_from_db()
    assert draft_workflow.autonomy_level == AutonomyLevel.DRAFT
    assert not ReleaseNote.objects.filter(kind__in=["promote", "override"]).exists()


@pytest.mark.django_db
def test_promote_without_gate_results_is_impossible(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as exc:
        agent_services.workflow_promote(actor=manager, workflow=draft_workflow, reason="go",
                                        evidence={}, gate_results=[])
    assert "override_justification" in exc.value.message_dict


@pytest.mark.django_db
def test_override_is_recorded_with_its_justification(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    Workflow.objects.filter(pk=draft_workflow.pk).update(gates={})
    draft_workflow.refresh_from_db()
    _, results = _evidence(draft_workflow)
    agent_services.workflow_promote(
        actor=manager, workflow=draft_workflow, reason="pilot customer",
        evidence={}, gate_results=results, override_justification="signed off by VP support")
    note = ReleaseNote.objects.get(workflow=draft_workflow, new_level=2)
    assert note.kind == ReleaseNoteKind.OVERRIDE
    assert note.evidence["override_justification"] == "signed off by VP support"
    assert AuditEvent.objects.filter(action="workflow.override_promote").count() == 1


@pytest.mark.django_db
def test_promote_is_for_managers_only(draft_workflow: Workflow, reviewer) -> None:  # type: ignore[no-untyped-def]
    _, results = _evidence(draft_workflow)
    with pytest.raises(PermissionDenied):
        agent_services.workflow_promote(actor=reviewer, workflow=draft_workflow, reason="go",
                                        evidence={}, gate_results=results)


@pytest.mark.django_db
def test_first_agent_version_becomes_current_without_freezing(workflow: Workflow,
                                                              agent: Agent) -> None:
    open_run(agent, workflow)
    workflow.refresh_from_db()
    assert workflow.current_agent_version == "v1"
    assert not workflow.promotion_frozen


@pytest.mark.django_db
def test_new_agent_version_freezes_promotion(draft_workflow: Workflow, agent: Agent,
                                             manager) -> None:  # type: ignore[no-untyped-def]
    services.run_open(actor=agent, workflow=draft_workflow, case_ref="N-1", agent_version="v2")
    services.run_open(actor=agent, workflow=draft_workflow, case_ref="N-2", agent_version="v2")
    draft_workflow.refresh_from_db()
    assert draft_workflow.promotion_frozen
    assert (draft_workflow.current_agent_version, draft_workflow.pending_agent_version) == (
        "v1", "v2")
    kinds = list(ReleaseNote.objects.filter(workflow=draft_workflow).exclude(kind="policy")
                 .values_list("kind", flat=True))
    assert sorted(kinds) == sorted(["agent_version", "agent_version", "freeze"])
    _, results = _evidence(draft_workflow)
    with pytest.raises(ValidationError) as exc:
        agent_services.workflow_promote(actor=manager, workflow=draft_workflow, reason="go",
                                        evidence={}, gate_results=results,
                                        override_justification="even so")
    assert "promotion_frozen" in exc.value.message_dict


@pytest.mark.django_db
def test_requalify_needs_the_new_versions_own_evidence(
        draft_workflow: Workflow, agent: Agent, manager, reviewer) -> None:  # type: ignore[no-untyped-def]
    Workflow.objects.filter(pk=draft_workflow.pk).update(autonomy_level=AutonomyLevel.SUGGEST)
    runs = [services.run_open(actor=agent, workflow=draft_workflow, case_ref=f"N-{i}",
                              agent_version="v2") for i in range(2)]
    draft_workflow.refresh_from_db()
    assert draft_workflow.promotion_frozen
    # v1's two clean reviews do not count for v2: it has no evidence of its own yet.
    _, results = _evidence(draft_workflow, "v2", level=2)
    with pytest.raises(ValidationError) as exc:
        agent_services.workflow_requalify(actor=manager, workflow=draft_workflow,
                                          reason="v2 looks fine", evidence={},
                                          gate_results=results)
    assert "gates" in exc.value.message_dict
    for run in runs:
        p = submit(run)
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version)
    _, results = _evidence(draft_workflow, "v2", level=2)
    done = agent_services.workflow_requalify(actor=manager, workflow=draft_workflow,
                                             reason="v2 passes", evidence={},
                                             gate_results=results)
    assert not done.promotion_frozen
    assert (done.current_agent_version, done.pending_agent_version) == ("v2", "")
    assert ReleaseNote.objects.filter(workflow=done, kind=ReleaseNoteKind.UNFREEZE).exists()


@pytest.mark.django_db
def test_manual_demote_needs_a_reason_and_a_manager(draft_workflow: Workflow, manager,
                                                    reviewer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(ValidationError) as exc:
        agent_services.workflow_demote_manual(actor=manager, workflow=draft_workflow, reason="")
    assert "reason" in exc.value.message_dict
    with pytest.raises(PermissionDenied):
        agent_services.workflow_demote_manual(actor=reviewer, workflow=draft_workflow,
                                              reason="x")
    demoted = agent_services.workflow_demote_manual(actor=manager, workflow=draft_workflow,
                                                    reason="too many edits")
    assert demoted.autonomy_level == AutonomyLevel.SHADOW
    assert ReleaseNote.objects.get(workflow=demoted, new_level=0).kind == ReleaseNoteKind.DEMOTE


@pytest.mark.django_db
def test_violation_spike_demotes_one_level_once(workflow: Workflow, agent: Agent) -> None:
    assert workflow.autonomy_level == AutonomyLevel.SUGGEST
    for i in range(2):
        submit(open_run(agent, workflow, case_ref=f"V-{i}"), tool="bogus.tool", arguments={})
    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.SUGGEST  # below the 3-violation minimum
    submit(open_run(agent, workflow, case_ref="V-2"), tool="bogus.tool", arguments={})
    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.DRAFT
    note = ReleaseNote.objects.get(workflow=workflow, kind=ReleaseNoteKind.AUTO_DEMOTE)
    assert note.evidence["violations"] == 3 and note.evidence["runs"] == 3
    assert note.evidence["trigger"] == "violation_spike"
    submit(open_run(agent, workflow, case_ref="V-3"), tool="bogus.tool", arguments={})
    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.DRAFT  # one spike, one demotion


@pytest.mark.django_db
@override_settings(GATEHOUSE_VIOLATION_SPIKE_PER_1000=500)
def test_violations_under_the_threshold_do_not_demote(workflow: Workflow, agent: Agent) -> None:
    for i in range(10):
        submit(open_run(agent, workflow, case_ref=f"OK-{i}"))
    for i in range(3):
        submit(open_run(agent, workflow, case_ref=f"V-{i}"), tool="bogus.tool", arguments={})
    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.SUGGEST  # 3 in 13 runs = 231 per 1,000
    assert Proposal.objects.filter(violation="violation").count() == 3
