"""The policy document: YAML in the seed's shape, parsed and validated with field errors.

    max_tool_calls: 8
    max_total_tokens: 18000
    max_cost_usd: 2.00
    allowed_tools: [jira.create_ticket, confluence.search, slack.send_message]
    approval_required_tools:
      - jira.close_ticket
      - slack.send_message: { channels: ["#announcements", "#customers"] }
    pii_redaction: true
    review_sla_minutes: 240
    dry_run: false
    fallback:
      on_timeout: human_handoff
      on_policy_violation: human_handoff
      on_budget_exceeded: human_handoff

A condition `{channels: [...]}` matches when the argument `channels` (or, as in the
seed, its singular `channel`) equals one of the listed values, or, when the argument
is a list, contains one of them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

import yaml
from django.core.exceptions import ValidationError

FALLBACKS = ("human_handoff", "reject", "escalate")
FALLBACK_KEYS = ("on_timeout", "on_policy_violation", "on_budget_exceeded")
KNOWN_KEYS = {
    "max_tool_calls",
    "max_total_tokens",
    "max_cost_usd",
    "allowed_tools",
    "approval_required_tools",
    "pii_redaction",
    "review_sla_minutes",
    "dry_run",
    "fallback",
}

DEFAULT_POLICY_YAML = """\
max_tool_calls: 8
max_total_tokens: 18000
max_cost_usd: 2.00
allowed_tools:
  - jira.create_ticket
  - confluence.search
  - slack.send_message
approval_required_tools:
  - jira.close_ticket
  - slack.send_message: { channels: ["#announcements", "#customers"] }
pii_redaction: true
review_sla_minutes: 240
fallback:
  on_timeout: human_handoff
  on_policy_violation: human_handoff
  on_budget_exceeded: human_handoff
"""


@dataclass(frozen=True)
class ApprovalRule:
    tool: str
    conditions: dict[str, list[Any]] = field(default_factory=dict)

    def matches(self, tool: str, arguments: dict[str, Any]) -> bool:
        if tool != self.tool:
            return False
        if not self.conditions:
            return True
        for key, values in self.conditions.items():
            actual = _argument(arguments, key)
            if actual is None:
                continue
            candidates = actual if isinstance(actual, list) else [actual]
            if any(c in values for c in candidates):
                return True
        return False

    def describe(self) -> str:
        if not self.conditions:
            return self.tool
        conds = ", ".join(f"{k} in {v}" for k, v in self.conditions.items())
        return f"{self.tool} when {conds}"


def _argument(arguments: dict[str, Any], key: str) -> Any:
    if key in arguments:
        return arguments[key]
    if key.endswith("s") and key[:-1] in arguments:
        return arguments[key[:-1]]
    return None


@dataclass(frozen=True)
class PolicySpec:
    max_tool_calls: int | None
    max_total_tokens: int | None
    max_cost_usd: Decimal | None
    allowed_tools: tuple[str, ...]
    approval_rules: tuple[ApprovalRule, ...]
    pii_redaction: bool
    review_sla_minutes: int | None
    dry_run: bool
    fallback: dict[str, str]

    def matching_rules(self, tool: str, arguments: dict[str, Any]) -> list[ApprovalRule]:
        return [r for r in self.approval_rules if r.matches(tool, arguments)]

    def to_json(self) -> dict[str, Any]:
        return {
            "max_tool_calls": self.max_tool_calls,
            "max_total_tokens": self.max_total_tokens,
            "max_cost_usd": str(self.max_cost_usd) if self.max_cost_usd is not None else None,
            "allowed_tools": list(self.allowed_tools),
            "approval_required_tools": [
                {r.tool: r.conditions} if r.conditions else r.tool for r in self.approval_rules
            ],
            "pii_redaction": self.pii_redaction,
            "review_sla_minutes": self.review_sla_minutes,
            "dry_run": self.dry_run,
            "fallback": dict(self.fallback),
        }


# Caps keep every number inside what the database columns and timedelta can hold, so
# an absurd policy is a field error on save, never a 500 at proposal time.
MAX_COUNT = 2**31 - 1
MAX_SLA_MINUTES = 366 * 24 * 60
MAX_COST_USD = Decimal("999999")
MAX_DOCUMENT_CHARS = 64_000
SCALARS = (str, int, float, bool)


def _positive_int(data: dict[str, Any], key: str, errors: dict[str, list[str]],
                  maximum: int = MAX_COUNT) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        errors.setdefault(key, []).append("must be a whole number >= 0")
        return None
    if value > maximum:
        errors.setdefault(key, []).append(f"must be at most {maximum}")
        return None
    return value


def parse_policy(document: str) -> PolicySpec:
    """Parse and validate; raise ValidationError keyed by the offending field."""
    if len(document or "") > MAX_DOCUMENT_CHARS:
        raise ValidationError({"document": [f"at most {MAX_DOCUMENT_CHARS} characters"]})
    try:
        data = yaml.safe_load(document) if document and document.strip() else {}
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ValidationError({"document": [f"not valid YAML{where}"]}) from exc
    if not isinstance(data, dict):
        raise ValidationError({"document": ["must be a YAML mapping of policy fields"]})

    errors: dict[str, list[str]] = {}
    # Keys may be numbers or null in YAML; sort by their text so mixed keys cannot 500.
    for key in sorted(set(data) - KNOWN_KEYS, key=str):
        errors.setdefault(str(key), []).append("unknown policy field")

    max_tool_calls = _positive_int(data, "max_tool_calls", errors)
    max_total_tokens = _positive_int(data, "max_total_tokens", errors)
    review_sla = _positive_int(data, "review_sla_minutes", errors, MAX_SLA_MINUTES)
    if review_sla == 0:
        errors.setdefault("review_sla_minutes", []).append("must be at least 1 minute")

    max_cost: Decimal | None = None
    if data.get("max_cost_usd") is not None:
        raw_cost = data["max_cost_usd"]
        try:
            if isinstance(raw_cost, bool):
                raise InvalidOperation
            max_cost = Decimal(str(raw_cost))
            if not max_cost.is_finite() or max_cost < 0 or max_cost > MAX_COST_USD:
                raise InvalidOperation
        except InvalidOperation:
            errors.setdefault("max_cost_usd", []).append(
                f"must be a number between 0 and {MAX_COST_USD}")
            max_cost = None

    allowed_raw = data.get("allowed_tools", [])
    allowed: list[str] = []
    if not isinstance(allowed_raw, list) or not all(isinstance(t, str) and t for t in allowed_raw):
        errors.setdefault("allowed_tools", []).append("must be a list of tool names")
    else:
        allowed = list(allowed_raw)

    rules: list[ApprovalRule] = []
    rules_raw = data.get("approval_required_tools", [])
    if not isinstance(rules_raw, list):
        errors.setdefault("approval_required_tools", []).append("must be a list")
        rules_raw = []
    for i, item in enumerate(rules_raw):
        path = f"approval_required_tools[{i}]"
        if isinstance(item, str) and item:
            rules.append(ApprovalRule(item))
        elif isinstance(item, dict) and len(item) == 1:
            tool, conds = next(iter(item.items()))
            if conds is None:
                rules.append(ApprovalRule(str(tool)))
                continue
            if not isinstance(conds, dict) or not conds:
                errors.setdefault(path, []).append(
                    "conditions must be a mapping of argument name to a list of values"
                )
                continue
            clean: dict[str, list[Any]] = {}
            for arg, values in conds.items():
                # Scalars only: a condition compares argument values, and nested
                # (possibly YAML-aliased) structures would only bloat the stored JSON.
                if (not isinstance(values, list) or not values
                        or not all(isinstance(v, SCALARS) for v in values)):
                    errors.setdefault(f"{path}.{arg}", []).append(
                        "must be a non-empty list of plain values")
                else:
                    clean[str(arg)] = values
            rules.append(ApprovalRule(str(tool), clean))
        else:
            errors.setdefault(path, []).append(
                "must be a tool name or {tool: {argument: [values]}}"
            )

    flags: dict[str, bool] = {}
    for key in ("pii_redaction", "dry_run"):
        value = data.get(key, False)
        if not isinstance(value, bool):
            errors.setdefault(key, []).append("must be true or false")
            value = False
        flags[key] = value

    fallback_raw = data.get("fallback", {}) or {}
    fallback = {k: "human_handoff" for k in FALLBACK_KEYS}
    if not isinstance(fallback_raw, dict):
        errors.setdefault("fallback", []).append("must be a mapping")
    else:
        for key, value in fallback_raw.items():
            if key not in FALLBACK_KEYS:
                errors.setdefault(f"fallback.{key}", []).append(
                    f"unknown; expected one of {', '.join(FALLBACK_KEYS)}"
                )
            elif value not in FALLBACKS:
                errors.setdefault(f"fallback.{key}", []).append(
                    f"must be one of {', '.join(FALLBACKS)}"
                )
            else:
                fallback[key] = value

    if errors:
        raise ValidationError(errors)
    return PolicySpec(
        max_tool_calls=max_tool_calls,
        max_total_tokens=max_total_tokens,
        max_cost_usd=max_cost,
        allowed_tools=tuple(allowed),
        approval_rules=tuple(rules),
        pii_redaction=flags["pii_redaction"],
        review_sla_minutes=review_sla,
        dry_run=flags["dry_run"],
        fallback=fallback,
    )
