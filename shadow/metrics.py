"""Metrics per workflow and agent version over a window: the evidence behind the gates.

Definitions (all over proposals created in [since, until), optionally one agent
version):

- reviewed: proposals a human decided in review (approved, rejected, handed off or
  expired with a decided_at, that went through the queue: decision "review"/"refuse"
  routed to a person, i.e. anything not shadow/refused/auto-executed).
- approval_without_edit_rate / edit_rate / rejection_rate: over reviewed.
- escalation_rate: (handed off + expired + escalated) / decided, where decided is
  every non-shadow proposal that has an outcome, plus escalated ones still pending.
- agreement_rate: shadow comparisons with verdict "agree" / all comparisons.
- violations_per_1000_runs: proposals with violation "violation" per distinct runs
  those proposals belong to, x 1000.
- cost_per_resolved_task: sum of run.cost / count, over runs opened in the window
  whose outcome is "resolved"; None when there are none.
- decision latency: decided_at - created_at of reviewed proposals (seconds).
- execution latency: execution.finished_at - proposal.decided_at (seconds).

Everything is a database aggregate. On PostgreSQL percentiles are percentile_cont;
SQLite (the `make run` quickstart only) has no ordered-set aggregates, so there the
percentiles are computed in Python from the one latency column.
"""

from __future__ import annotations

import math
from collections import defaultdict
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, timedelta
from decimal import Decimal
from typing import Any

from django.db import connection
from django.db.models import (
    Aggregate,
    Count,
    DurationField,
    ExpressionWrapper,
    F,
    FloatField,
    Func,
    Q,
    QuerySet,
    Sum,
)
from django.db.models.functions import TruncDate
from django.utils import timezone

from agents.models import Workflow
from approvals.models import Proposal, ProposalStatus, Run, Violation
from shadow.models import Comparison, Verdict

ESCALATED_FALLBACKS = ("escalate", "on_timeout:escalate")
REVIEWED_STATUSES = (ProposalStatus.APPROVED, ProposalStatus.REJECTED,
                     ProposalStatus.HANDED_OFF, ProposalStatus.EXPIRED)
RESOLVED = "resolved"


class PercentileCont(Aggregate):
    """PostgreSQL's ordered-set aggregate: percentile_cont(p) WITHIN GROUP (ORDER BY x)."""

    function = "PERCENTILE_CONT"
    template = "%(function)s(%(percentile)s) WITHIN GROUP (ORDER BY %(expressions)s)"
    output_field = FloatField()

    def __init__(self, expression: Any, percentile: float, **extra: Any) -> None:
        # A float literal we produce ourselves; never user input.
        super().__init__(expression, percentile=repr(float(percentile)), **extra)


def _seconds_between(start: str, end: str) -> Func:
    return Func(ExpressionWrapper(F(end) - F(start), output_field=DurationField()),
                template="EXTRACT(EPOCH FROM %(expressions)s)", output_field=FloatField())


def percentile(values: list[float], p: float) -> float | None:
    """Linear interpolation between closest ranks: the same as percentile_cont."""
    if not values:
        return None
    ordered = sorted(values)
    pos = (len(ordered) - 1) * p
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)


@dataclass
class Metrics:
    since: datetime
    until: datetime
    agent_version: str | None
    proposals: int = 0
    reviewed: int = 0
    decided: int = 0
    runs: int = 0
    comparisons: int = 0
    violations: int = 0
    resolved_tasks: int = 0
    approval_without_edit_rate: float | None = None
    edit_rate: float | None = None
    rejection_rate: float | None = None
    agreement_rate: float | None = None
    escalation_rate: float | None = None
    violations_per_1000_runs: float | None = None
    cost_per_resolved_task: float | None = None
    p50_decision_latency_s: float | None = None
    p95_decision_latency_s: float | None = None
    p50_execution_latency_s: float | None = None
    p95_execution_latency_s: float | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["since"], data["until"] = self.since.isoformat(), self.until.isoformat()
        return data


def _ratio(part: int | None, whole: int | None) -> float | None:
    return (part or 0) / whole if whole else None


def _proposals(workflow: Workflow, agent_version: str | None) -> QuerySet[Proposal]:
    qs = Proposal.objects.filter(workflow=workflow)
    if agent_version:
        qs = qs.filter(agent_version=agent_version)
    return qs


def _reviewed_q(prefix: str = "") -> Q:
    # A person decided it: everything shadow-recorded, refused or executed at once by
    # the gateway has decided_by empty; expired items were a person's to decide.
    return Q(**{f"{prefix}status__in": REVIEWED_STATUSES}) & (
        Q(**{f"{prefix}decided_by__isnull": False})
        | Q(**{f"{prefix}status": ProposalStatus.EXPIRED})
        | Q(**{f"{prefix}decision": "review"}))


def _proposal_counts() -> dict[str, Any]:
    reviewed = _reviewed_q()
    escalated = (Q(status__in=(ProposalStatus.HANDED_OFF, ProposalStatus.EXPIRED))
                 | Q(fallback_applied__in=ESCALATED_FALLBACKS))
    decided = (~Q(status__in=(ProposalStatus.PENDING, ProposalStatus.SHADOW))
               | Q(fallback_applied__in=ESCALATED_FALLBACKS))
    return {
        "n_proposals": Count("id"),
        "n_reviewed": Count("id", filter=reviewed),
        "n_plain_approved": Count("id", filter=reviewed & Q(status=ProposalStatus.APPROVED,
                                                             edited=False)),
        "n_edited": Count("id", filter=reviewed & Q(status=ProposalStatus.APPROVED, edited=True)),
        "n_rejected": Count("id", filter=reviewed & Q(status=ProposalStatus.REJECTED)),
        "n_decided": Count("id", filter=decided),
        "n_escalated": Count("id", filter=decided & escalated),
        "n_violations": Count("id", filter=Q(violation=Violation.VIOLATION)),
        "n_runs": Count("run", distinct=True),
    }


def _latencies(qs: QuerySet[Proposal], start: str, end: str) -> tuple[float | None, float | None]:
    if connection.vendor == "postgresql":
        expr = _seconds_between(start, end)
        row = qs.aggregate(p50=PercentileCont(expr, 0.5), p95=PercentileCont(expr, 0.95))
        return row["p50"], row["p95"]
    # SQLite quickstart only: one column of pairs, never used on PostgreSQL.
    values = [(b - a).total_seconds() for a, b in qs.values_list(start, end)]
    return percentile(values, 0.5), percentile(values, 0.95)


def workflow_metrics(
    workflow: Workflow, *, agent_version: str | None = None, since: datetime,
    until: datetime | None = None,
) -> Metrics:
    until = until or timezone.now()
    m = Metrics(since=since, until=until, agent_version=agent_version or None)
    window = _proposals(workflow, agent_version).filter(created_at__gte=since, created_at__lt=until)

    c = window.aggregate(**_proposal_counts())
    m.proposals, m.reviewed, m.decided = c["n_proposals"], c["n_reviewed"], c["n_decided"]
    m.runs, m.violations = c["n_runs"], c["n_violations"]
    m.approval_without_edit_rate = _ratio(c["n_plain_approved"], m.reviewed)
    m.edit_rate = _ratio(c["n_edited"], m.reviewed)
    m.rejection_rate = _ratio(c["n_rejected"], m.reviewed)
    m.escalation_rate = _ratio(c["n_escalated"], m.decided)
    m.violations_per_1000_runs = (m.violations * 1000 / m.runs) if m.runs else None

    comparisons = Comparison.objects.filter(proposal__in=window).aggregate(
        n=Count("id"), agree=Count("id", filter=Q(verdict=Verdict.AGREE)))
    m.comparisons = comparisons["n"]
    m.agreement_rate = _ratio(comparisons["agree"], m.comparisons)

    runs = Run.objects.filter(workflow=workflow, opened_at__gte=since, opened_at__lt=until,
                              outcome=RESOLVED)
    if agent_version:
        runs = runs.filter(agent_version=agent_version)
    cost = runs.aggregate(n=Count("id"), total=Sum("cost"))
    m.resolved_tasks = cost["n"]
    if cost["n"]:
        m.cost_per_resolved_task = float(cost["total"] or Decimal(0)) / cost["n"]

    reviewed = window.filter(_reviewed_q(), decided_at__isnull=False)
    m.p50_decision_latency_s, m.p95_decision_latency_s = _latencies(
        reviewed, "created_at", "decided_at")
    executed = window.filter(decided_at__isnull=False, execution__finished_at__isnull=False)
    m.p50_execution_latency_s, m.p95_execution_latency_s = _latencies(
        executed, "decided_at", "execution__finished_at")
    return m


# ------------------------------------------------------------------ time series


@dataclass
class DayPoint:
    day: date
    proposals: int = 0
    reviewed: int = 0
    runs: int = 0
    comparisons: int = 0
    resolved_tasks: int = 0
    approval_without_edit_rate: float | None = None
    edit_rate: float | None = None
    rejection_rate: float | None = None
    escalation_rate: float | None = None
    agreement_rate: float | None = None
    violations_per_1000_runs: float | None = None
    cost_per_resolved_task: float | None = None
    p95_decision_latency_s: float | None = None
    p95_execution_latency_s: float | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _daily_p95(qs: QuerySet[Proposal], start: str, end: str) -> dict[date, float]:
    if connection.vendor == "postgresql":
        rows = (qs.annotate(day=TruncDate("created_at")).values("day")
                .annotate(p95=PercentileCont(_seconds_between(start, end), 0.95)).order_by())
        return {r["day"]: r["p95"] for r in rows}
    grouped: dict[date, list[float]] = defaultdict(list)
    tz = timezone.get_current_timezone()
    for created, a, b in qs.values_list("created_at", start, end):
        grouped[timezone.localtime(created, tz).date()].append((b - a).total_seconds())
    return {day: percentile(vals, 0.95) or 0.0 for day, vals in grouped.items()}


def workflow_timeseries(
    workflow: Workflow, days: int = 30, agent_version: str | None = None,
    now: datetime | None = None,
) -> list[DayPoint]:
    """One point per local day over the last `days` days (today included).

    One grouped query per metric family (proposal counts, comparisons, resolved-run
    cost, each latency), never one query per day.
    """
    now = now or timezone.now()
    today = timezone.localdate(now)
    first = today - timedelta(days=days - 1)
    since = timezone.make_aware(datetime.combine(first, datetime.min.time()))
    points = {first + timedelta(days=i): DayPoint(first + timedelta(days=i)) for i in range(days)}
    window = _proposals(workflow, agent_version).filter(created_at__gte=since, created_at__lte=now)

    for row in (window.annotate(day=TruncDate("created_at")).values("day")
                .annotate(**_proposal_counts()).order_by()):
        p = points.get(row["day"])
        if p is None:
            continue
        p.proposals, p.reviewed, p.runs = row["n_proposals"], row["n_reviewed"], row["n_runs"]
        p.approval_without_edit_rate = _ratio(row["n_plain_approved"], p.reviewed)
        p.edit_rate = _ratio(row["n_edited"], p.reviewed)
        p.rejection_rate = _ratio(row["n_rejected"], p.reviewed)
        p.escalation_rate = _ratio(row["n_escalated"], row["n_decided"])
        p.violations_per_1000_runs = (row["n_violations"] * 1000 / p.runs) if p.runs else None

    for row in (Comparison.objects.filter(proposal__in=window)
                .annotate(day=TruncDate("proposal__created_at")).values("day")
                .annotate(n=Count("id"), agree=Count("id", filter=Q(verdict=Verdict.AGREE)))
                .order_by()):
        p = points.get(row["day"])
        if p is not None:
            p.comparisons = row["n"]
            p.agreement_rate = _ratio(row["agree"], row["n"])

    runs = Run.objects.filter(workflow=workflow, opened_at__gte=since, opened_at__lte=now,
                              outcome=RESOLVED)
    if agent_version:
        runs = runs.filter(agent_version=agent_version)
    for row in (runs.annotate(day=TruncDate("opened_at")).values("day")
                .annotate(n=Count("id"), total=Sum("cost")).order_by()):
        p = points.get(row["day"])
        if p is not None and row["n"]:
            p.resolved_tasks = row["n"]
            p.cost_per_resolved_task = float(row["total"] or 0) / row["n"]

    for day, value in _daily_p95(window.filter(_reviewed_q(), decided_at__isnull=False),
                                 "created_at", "decided_at").items():
        if day in points:
            points[day].p95_decision_latency_s = value
    for day, value in _daily_p95(
            window.filter(decided_at__isnull=False, execution__finished_at__isnull=False),
            "decided_at", "execution__finished_at").items():
        if day in points:
            points[day].p95_execution_latency_s = value
    return [points[d] for d in sorted(points)]


def agent_versions(workflow: Workflow) -> list[str]:
    """The versions that proposed for this workflow, for the dashboard's filter."""
    return list(Proposal.objects.filter(workflow=workflow).exclude(agent_version="")
                .values_list("agent_version", flat=True).distinct().order_by("agent_version"))
