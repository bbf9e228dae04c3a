"""Comparators: how far a shadow proposal is from what the human actually did.

Pure functions of plain values (no database), so they are cheap to test
exhaustively and can be replayed over stored outcomes. A tool picks its comparator
by key (Tool.comparator); a key may carry options after a colon, e.g.
``fields:ignore=request_id,timestamp`` (fields left out of the comparison because
they can never match: generated ids, clocks).
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

AGREE, PARTIAL, DISAGREE = "agree", "partial", "disagree"


@dataclass(frozen=True)
class Side:
    """One side of a comparison: what the agent proposed or what the human did."""

    tool: str
    arguments: dict[str, Any]
    text: str = ""


@dataclass
class ComparisonResult:
    comparator: str
    verdict: str
    score: float
    tool_match: bool
    # {field: {"agent": value, "human": value, "match": bool}}
    field_diff: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def failure_category(self) -> str:
        """The labeled example's failure category, read from the diff."""
        if self.verdict == AGREE:
            return ""
        if not self.tool_match:
            return "wrong_tool"
        return "factual" if self.comparator == "text" else "wrong_params"


def _normalise(value: Any) -> Any:
    """Strings compare case- and whitespace-insensitively, at any depth."""
    if isinstance(value, str):
        return " ".join(value.split()).casefold()
    if isinstance(value, list):
        return [_normalise(v) for v in value]
    if isinstance(value, dict):
        return {k: _normalise(v) for k, v in value.items()}
    return value


_MISSING = object()


def compare_fields(agent: Side, human: Side, *, ignore: frozenset[str] = frozenset()
                   ) -> ComparisonResult:
    """Per-field rules over the arguments: score = matched / total fields."""
    keys = [k for k in dict.fromkeys([*agent.arguments, *human.arguments]) if k not in ignore]
    diff: dict[str, dict[str, Any]] = {}
    matched = 0
    for key in keys:
        a = agent.arguments.get(key, _MISSING)
        h = human.arguments.get(key, _MISSING)
        ok = a is not _MISSING and h is not _MISSING and _normalise(a) == _normalise(h)
        matched += ok
        diff[key] = {"agent": None if a is _MISSING else a,
                     "human": None if h is _MISSING else h, "match": ok}
    tool_match = agent.tool == human.tool
    score = matched / len(keys) if keys else 1.0
    if not tool_match:
        verdict, score = DISAGREE, 0.0
    elif score == 1.0:
        verdict = AGREE
    elif score >= 0.5:
        verdict = PARTIAL
    else:
        verdict = DISAGREE
    return ComparisonResult("fields", verdict, round(score, 4), tool_match, diff)


TEXT_AGREE = 0.85
TEXT_PARTIAL = 0.5


def _text_of(side: Side) -> str:
    if side.text.strip():
        return side.text
    value = side.arguments.get("text", "")
    return value if isinstance(value, str) else ""


def compare_text(agent: Side, human: Side, *, ignore: frozenset[str] = frozenset()
                 ) -> ComparisonResult:
    """Similarity of the message text (draft_text, or the 'text' argument)."""
    a, h = _text_of(agent), _text_of(human)
    # Whitespace and case are formatting, not content.
    ratio = difflib.SequenceMatcher(None, " ".join(a.split()).casefold(),
                                    " ".join(h.split()).casefold(), autojunk=False).ratio()
    tool_match = agent.tool == human.tool
    if not tool_match:
        verdict, score = DISAGREE, 0.0
    else:
        score = ratio
        verdict = AGREE if ratio >= TEXT_AGREE else PARTIAL if ratio >= TEXT_PARTIAL else DISAGREE
    diff = {"text": {"agent": a, "human": h, "match": tool_match and ratio >= TEXT_AGREE,
                     "similarity": round(ratio, 4)}}
    return ComparisonResult("text", verdict, round(score, 4), tool_match, diff)


Comparator = Callable[..., ComparisonResult]
REGISTRY: dict[str, Comparator] = {"fields": compare_fields, "text": compare_text}


class UnknownComparator(ValueError):
    pass


def parse_key(key: str) -> tuple[str, frozenset[str]]:
    """'fields:ignore=a,b' -> ('fields', {'a', 'b'})."""
    name, _, options = (key or "fields").partition(":")
    ignore: set[str] = set()
    for option in filter(None, options.split(";")):
        opt, _, value = option.partition("=")
        if opt.strip() != "ignore":
            raise UnknownComparator(f"unknown comparator option {opt!r}")
        ignore.update(v.strip() for v in value.split(",") if v.strip())
    name = name.strip()
    if name not in REGISTRY:
        raise UnknownComparator(f"unknown comparator {name!r}; known: {', '.join(REGISTRY)}")
    return name, frozenset(ignore)


def compare(key: str, agent: Side, human: Side) -> ComparisonResult:
    name, ignore = parse_key(key)
    return REGISTRY[name](agent, human, ignore=ignore)
