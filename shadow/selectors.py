"""Reads for shadow pages and the outcomes API: who sees what, and what they are shown."""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Count, QuerySet

from approvals import pii
from approvals.models import Proposal
from approvals.selectors import workflows_for_user
from shadow.models import Comparison, Dataset, ExportJob, HumanOutcome


def outcomes_for_user(user: AbstractBaseUser) -> QuerySet[HumanOutcome]:
    return HumanOutcome.objects.filter(workflow__in=workflows_for_user(user))


def comparisons_for_workflow(workflow_id: int, *, verdict: str = "") -> QuerySet[Comparison]:
    qs = Comparison.objects.filter(proposal__workflow_id=workflow_id)
    if verdict:
        qs = qs.filter(verdict=verdict)
    return qs.select_related("proposal__run", "proposal__policy", "outcome").order_by(
        "-created_at", "-id")


def verdict_counts(workflow_id: int) -> dict[str, int]:
    rows = (Comparison.objects.filter(proposal__workflow_id=workflow_id)
            .values("verdict").annotate(n=Count("id")).order_by())
    return {r["verdict"]: r["n"] for r in rows}


def datasets_for_user(user: AbstractBaseUser) -> QuerySet[Dataset]:
    return Dataset.objects.filter(workflow__in=workflows_for_user(user)).select_related(
        "workflow")


def exports_for_user(user: AbstractBaseUser) -> QuerySet[ExportJob]:
    return ExportJob.objects.filter(
        version__dataset__workflow__in=workflows_for_user(user)).select_related(
        "version__dataset")


def redacts(proposal: Proposal) -> bool:
    return bool(proposal.policy and proposal.policy.parsed.get("pii_redaction"))


def shown_diff(comparison: Comparison) -> list[dict[str, Any]]:
    """The per-field diff as rows, redacted where the proposal's policy says so (the
    agent side is untrusted and may carry PII; the human side is the same case)."""
    redact = redacts(comparison.proposal)
    rows = []
    for name, cell in (comparison.field_diff or {}).items():
        agent, human = cell.get("agent"), cell.get("human")
        if redact:
            agent, human = pii.redact(agent), pii.redact(human)
        rows.append({"field": name, "agent": agent, "human": human,
                     "match": bool(cell.get("match")), "similarity": cell.get("similarity")})
    return rows


def shown_diff_dict(comparison: Comparison) -> dict[str, dict[str, Any]]:
    return {r["field"]: {k: v for k, v in r.items() if k != "field" and
                         (k != "similarity" or v is not None)}
            for r in shown_diff(comparison)}
