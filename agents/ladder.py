"""The autonomy ladder's gates: pure functions of a workflow and its measured metrics.

Each step up (to level 1..4) has gates. The defaults come from the seed's ranges
(seed/agent-ops-stack-2026.txt): escalation under 10-20 %, under 1 policy violation
per 1,000 runs, $0.20-$2 per triage task, P95 5-30 s interactive, task success
70-95 %, shadow mode 2-6 weeks. Every level also needs a minimum sample size and a
minimum time at the current level, so a lucky week cannot promote anything.

A workflow's `gates` JSON overrides keys per target level, e.g.
``{"2": {"min_samples": 40}, "3": {"max_cost_per_resolved_task": 0.5}}``.

Which samples count: for 0 -> 1 the shadow comparisons (the human outcome is the
only judge of a shadow proposal); from 1 up the decided human reviews.

Latency: the seed's "P95 5-30 s interactive" is about the agent acting on its own,
so levels 3 and 4 (where actions execute without a person in between) gate on the
P95 execution latency (decision to finished execution), 30 s. The human review
latency is shown on the dashboard but is not the agent's merit, so it is not gated.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

# Gate keys: "min_*" pass when actual >= required, "max_*" when actual <= required,
# "below_*" when actual < required (the seed's "under 1 violation per 1,000 runs").
DEFAULT_GATES: dict[int, dict[str, float]] = {
    1: {  # shadow -> draft: 2-6 weeks of shadow evidence that agrees with humans
        "min_samples": 50,
        "min_agreement_rate": 0.70,
        "min_days_at_level": 14,
    },
    2: {  # draft -> suggest: drafts mostly sent as written, few hand-offs
        "min_samples": 100,
        "min_approval_without_edit_rate": 0.70,
        "max_escalation_rate": 0.20,
        "min_days_at_level": 7,
    },
    3: {  # suggest -> act on low-risk tools without a person in the loop
        "min_samples": 200,
        "min_approval_without_edit_rate": 0.85,
        "max_escalation_rate": 0.15,
        "below_violations_per_1000_runs": 1.0,
        "max_cost_per_resolved_task": 2.00,
        "max_p95_execution_latency_s": 30,
        "min_days_at_level": 14,
    },
    4: {  # act low-risk -> act with approval only for high-risk tools
        "min_samples": 300,
        "min_approval_without_edit_rate": 0.90,
        "max_escalation_rate": 0.10,
        "below_violations_per_1000_runs": 1.0,
        "max_cost_per_resolved_task": 2.00,
        "max_p95_execution_latency_s": 30,
        "min_days_at_level": 21,
    },
}

# The window the gates are measured over, unless the workflow's gates say otherwise
# (key "window_days" at the top level of Workflow.gates).
DEFAULT_WINDOW_DAYS = 30

LABELS = {
    "min_samples": "sample size",
    "min_agreement_rate": "shadow agreement rate",
    "min_approval_without_edit_rate": "approval without edit",
    "max_escalation_rate": "escalation rate",
    "below_violations_per_1000_runs": "violations per 1,000 runs",
    "max_cost_per_resolved_task": "cost per resolved task (USD)",
    "max_p95_execution_latency_s": "P95 execution latency (s)",
    "min_days_at_level": "days at current level",
}
_OPS = {"min": ">=", "max": "<=", "below": "<"}


@dataclass(frozen=True)
class GateResult:
    name: str
    required: float
    actual: float | None
    passed: bool
    target_level: int

    @property
    def op(self) -> str:
        return _OPS[self.name.split("_", 1)[0]]

    @property
    def label(self) -> str:
        return LABELS.get(self.name, self.name.replace("_", " "))

    @property
    def is_rate(self) -> bool:
        return self.name.endswith("_rate")

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "op": self.op}


def gates_for(workflow: Any, target_level: int) -> dict[str, float]:
    """The defaults for that level with the workflow's overrides on top."""
    gates = dict(DEFAULT_GATES.get(target_level, {}))
    overrides = (workflow.gates or {}).get(str(target_level)) or {}
    for key, value in overrides.items():
        if isinstance(value, int | float) and not isinstance(value, bool):
            gates[key] = float(value)
    return gates


def window_days(workflow: Any) -> int:
    raw = (workflow.gates or {}).get("window_days")
    return int(raw) if isinstance(raw, int) and raw > 0 else DEFAULT_WINDOW_DAYS


def days_at_level(workflow: Any, now: datetime) -> float:
    since = workflow.level_changed_at or workflow.created_at
    if since is None:
        return 0.0
    return max(0.0, (now - since).total_seconds() / 86400)


def _actual(
    name: str, workflow: Any, metrics: Any, now: datetime, target_level: int
) -> float | None:
    if name == "min_days_at_level":
        return round(days_at_level(workflow, now), 2)
    if name == "min_samples":
        # Shadow proposals are judged by comparisons; everything above by reviews.
        return float(metrics.comparisons if target_level <= 1 else metrics.reviewed)
    attr = name.split("_", 1)[1]
    value = getattr(metrics, attr, None)
    return None if value is None else float(value)


def gate_passes(name: str, required: float, actual: float | None) -> bool:
    if actual is None:  # nothing measured is never evidence
        return False
    kind = name.split("_", 1)[0]
    if kind == "min":
        return actual >= required
    if kind == "max":
        return actual <= required
    if kind == "below":
        return actual < required
    return False


def evaluate_gates(
    workflow: Any, metrics: Any, now: datetime, *, target_level: int | None = None,
    include_days: bool = True,
) -> list[GateResult]:
    """Each gate of the next level up (or target_level) against the metrics.

    Empty when there is no level above. include_days=False leaves out the time at
    level: requalifying a new agent version is about its evidence, not the calendar.
    """
    level = workflow.autonomy_level + 1 if target_level is None else target_level
    results = []
    for name, required in gates_for(workflow, level).items():
        if name == "min_days_at_level" and not include_days:
            continue
        if name.split("_", 1)[0] not in _OPS:
            continue
        actual = _actual(name, workflow, metrics, now, level)
        results.append(GateResult(name, float(required), actual,
                                  gate_passes(name, float(required), actual), level))
    return results


def gates_pass(results: list[GateResult], workflow: Any, target_level: int, *,
               include_days: bool = True) -> bool:
    """True only when results cover every gate of target_level and all passed.

    The service calls this on what the view measured, so a promotion without a full
    set of passing gates (or with results meant for another level) is impossible.
    """
    gates = gates_for(workflow, target_level)
    expected = {name for name in gates if name.split("_", 1)[0] in _OPS
                and (include_days or name != "min_days_at_level")}
    if {r.name for r in results} != expected or len(results) != len(expected):
        return False
    return all(
        r.target_level == target_level and r.required == float(gates[r.name])
        and gate_passes(r.name, r.required, r.actual)
        for r in results
    )
