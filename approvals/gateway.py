"""The policy gateway's decision, as a pure function of what it is shown.

Order (DESIGN.md): break-glass -> tool allowed -> arguments valid -> budgets ->
approval-required rules -> the autonomy routing table. Schema validation and the
budget claim need the database, so the service runs them and passes the outcome in;
everything here is side-effect free and tested exhaustively.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from agents.models import AutonomyLevel, Tool, ToolRisk, Workflow
from agents.policy import PolicySpec
from approvals.models import Decision, ProposalStatus, Violation


@dataclass
class GatewayInput:
    workflow: Workflow
    level: int
    tool_name: str
    tool: Tool | None
    spec: PolicySpec
    arguments: dict
    read_only: bool
    disabled_categories: list[str]
    budget_problem: str | None  # e.g. "max_tool_calls 8 reached"; None when within budget
    has_draft: bool


@dataclass
class GatewayDecision:
    decision: Decision
    status: ProposalStatus
    reasons: list[str] = field(default_factory=list)
    violation: Violation = Violation.NONE
    fallback: str = ""

    @property
    def executes(self) -> bool:
        return self.decision == Decision.EXECUTE


def _refuse(
    inp: GatewayInput, reasons: list[str], violation: Violation, fallback_key: str | None
) -> GatewayDecision:
    if fallback_key is None or inp.level == AutonomyLevel.SHADOW:
        # Break-glass refusals are nobody's fault and shadow mode never queues work.
        return GatewayDecision(Decision.REFUSE, ProposalStatus.REFUSED, reasons, violation)
    fallback = inp.spec.fallback.get(fallback_key, "human_handoff")
    reasons = [*reasons, f"fallback {fallback_key}: {fallback}"]
    if fallback == "escalate":
        return GatewayDecision(Decision.REFUSE, ProposalStatus.PENDING, reasons, violation, fallback)
    if fallback == "reject":
        return GatewayDecision(Decision.REFUSE, ProposalStatus.REFUSED, reasons, violation, fallback)
    return GatewayDecision(Decision.REFUSE, ProposalStatus.HANDED_OFF, reasons, violation, fallback)


def check_break_glass(inp: GatewayInput) -> list[str]:
    reasons = []
    if inp.read_only:
        reasons.append("break-glass: read-only mode is on")
    if inp.workflow.paused:
        reasons.append(f"break-glass: workflow {inp.workflow.slug} is paused")
    category = inp.tool.category if inp.tool else inp.tool_name.split(".", 1)[0]
    if category in inp.disabled_categories:
        reasons.append(f"break-glass: tool category {category!r} is disabled")
    return reasons


def decide(inp: GatewayInput) -> GatewayDecision:
    stopped = check_break_glass(inp)
    if stopped:
        return _refuse(inp, stopped, Violation.NONE, None)

    if inp.tool is None:
        return _refuse(inp, [f"tool {inp.tool_name!r} is not registered"],
                       Violation.VIOLATION, "on_policy_violation")
    if inp.tool_name not in inp.spec.allowed_tools:
        return _refuse(inp, [f"tool {inp.tool_name!r} is not in allowed_tools"],
                       Violation.VIOLATION, "on_policy_violation")

    if inp.budget_problem:
        return _refuse(inp, [f"budget exceeded: {inp.budget_problem}"],
                       Violation.VIOLATION, "on_budget_exceeded")

    rules = inp.spec.matching_rules(inp.tool_name, inp.arguments)
    level = inp.level
    high = inp.tool.risk == ToolRisk.HIGH

    if level == AutonomyLevel.SHADOW:
        return GatewayDecision(Decision.RECORD, ProposalStatus.SHADOW,
                               ["level 0 shadow: recorded, never executed"])
    if rules:
        reasons = [f"approval required: {r.describe()}" for r in rules]
        return GatewayDecision(Decision.REVIEW, ProposalStatus.PENDING, reasons)
    if level == AutonomyLevel.DRAFT:
        if not high and inp.has_draft:
            return GatewayDecision(Decision.REVIEW, ProposalStatus.PENDING,
                                   ["level 1 draft: every draft is reviewed before it is sent"])
        what = "high-risk tool" if high else "a tool call without a draft"
        return _refuse(inp, [f"level 1 draft: {what} is not allowed at this level"],
                       Violation.NEAR_MISS, "on_policy_violation")
    if level == AutonomyLevel.SUGGEST:
        return GatewayDecision(Decision.REVIEW, ProposalStatus.PENDING,
                               ["level 2 suggest: one-click review"])
    if level == AutonomyLevel.ACT_LOW_RISK:
        if high:
            refused = _refuse(inp, ["level 3 act low-risk: high-risk tool handed to a human"],
                              Violation.NEAR_MISS, None)
            refused.status = ProposalStatus.HANDED_OFF
            refused.fallback = "human_handoff"
            return refused
        return GatewayDecision(Decision.EXECUTE, ProposalStatus.APPROVED,
                               ["level 3 act low-risk: low-risk tool executed at once"])
    # Level 4 act with approval.
    if high:
        return GatewayDecision(Decision.REVIEW, ProposalStatus.PENDING,
                               ["level 4: high-risk tool reviewed, then executed"])
    return GatewayDecision(Decision.EXECUTE, ProposalStatus.APPROVED,
                           ["level 4: low-risk tool executed at once"])
