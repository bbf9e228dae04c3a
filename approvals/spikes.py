"""Violation spikes: a burst of policy violations demotes the workflow one level.

A violation is a proposal the gateway refused for breaking policy (a tool not
allowed, a budget exceeded). One is noise; many within an hour mean the agent (or
its prompt) has gone wrong, and it should lose autonomy before a person notices.
"""

from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.db.models import Count, Q
from django.utils import timezone

from agents.audit import SYSTEM
from agents.models import AutonomyLevel, ReleaseNote, ReleaseNoteKind, Workflow
from agents.services import workflow_demote
from approvals.models import Proposal, Violation

SPIKE_WINDOW = timedelta(hours=1)
MIN_VIOLATIONS = 3


def spike_threshold_per_1000() -> float:
    return float(getattr(settings, "GATEHOUSE_VIOLATION_SPIKE_PER_1000", 10))


def violation_spike_check(*, workflow: Workflow) -> Workflow | None:
    """Run inside proposal_submit's transaction after a violation was recorded.

    Demotes one level (automatic release note with the counts) when the last hour's
    violations per 1,000 runs exceed the threshold with at least MIN_VIOLATIONS of
    them. Returns the demoted workflow, or None. One spike demotes once: after an
    automatic spike demotion the next hour starts from the new level's evidence.
    """
    current = Workflow.objects.filter(pk=workflow.pk).values_list(
        "autonomy_level", flat=True).first()
    if current is None or current < AutonomyLevel.DRAFT:
        return None
    now = timezone.now()
    since = now - SPIKE_WINDOW
    counts = Proposal.objects.filter(workflow_id=workflow.pk, created_at__gte=since).aggregate(
        violations=Count("id", filter=Q(violation=Violation.VIOLATION)),
        runs=Count("run", distinct=True))
    violations, runs = counts["violations"], counts["runs"]
    if violations < MIN_VIOLATIONS or not runs:
        return None
    rate = violations * 1000 / runs
    threshold = spike_threshold_per_1000()
    if rate <= threshold:
        return None
    if ReleaseNote.objects.filter(workflow_id=workflow.pk, kind=ReleaseNoteKind.AUTO_DEMOTE,
                                  created_at__gte=since,
                                  evidence__trigger="violation_spike").exists():
        return None
    evidence = {"trigger": "violation_spike", "violations": violations, "runs": runs,
                "per_1000_runs": round(rate, 1), "threshold_per_1000": threshold,
                "window_minutes": int(SPIKE_WINDOW.total_seconds() // 60)}
    return workflow_demote(
        actor=SYSTEM, workflow=workflow, to_level=current - 1, automatic=True,
        reason=f"violation spike: {violations} violations in {runs} runs in the last hour "
               f"({rate:.0f} per 1,000 > {threshold:g})",
        evidence=evidence)
