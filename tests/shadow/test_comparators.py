from __future__ import annotations

import pytest

from shadow.comparators import (
    AGREE,
    DISAGREE,
    PARTIAL,
    Side,
    UnknownComparator,
    compare,
    parse_key,
)

AGENT = Side("jira.create_ticket", {"project": "SUP", "summary": "Printer on fire",
                                    "priority": "high"})


def test_fields_equal_after_case_and_whitespace_folding_agree() -> None:
    human = Side("jira.create_ticket", {"project": "sup", "summary": "  printer   ON fire ",
                                        "priority": "high"})
    result = compare("fields", AGENT, human)
    assert result.verdict == AGREE and result.score == 1.0
    assert result.field_diff["summary"] == {"agent": "Printer on fire",
                                            "human": "  printer   ON fire ", "match": True}
    assert result.failure_category == ""


def test_fields_two_of_three_is_partial_with_per_field_diff() -> None:
    human = Side("jira.create_ticket", {"project": "SUP", "summary": "Printer on fire",
                                        "priority": "low"})
    result = compare("fields", AGENT, human)
    assert result.verdict == PARTIAL and result.score == pytest.approx(2 / 3, abs=1e-3)
    assert result.field_diff["priority"] == {"agent": "high", "human": "low", "match": False}
    assert result.failure_category == "wrong_params"


def test_fields_missing_on_one_side_counts_as_mismatch_and_under_half_disagrees() -> None:
    human = Side("jira.create_ticket", {"project": "OPS", "title": "x"})
    result = compare("fields", AGENT, human)
    assert set(result.field_diff) == {"project", "summary", "priority", "title"}
    assert result.field_diff["title"] == {"agent": None, "human": "x", "match": False}
    assert result.score == 0.0 and result.verdict == DISAGREE


def test_a_different_tool_always_disagrees_even_with_equal_fields() -> None:
    human = Side("jira.close_ticket", dict(AGENT.arguments))
    result = compare("fields", AGENT, human)
    assert result.verdict == DISAGREE and not result.tool_match and result.score == 0.0
    assert result.failure_category == "wrong_tool"
    text = compare("text", Side("slack.send_message", {}, "hi"), Side("jira.x", {}, "hi"))
    assert text.verdict == DISAGREE and text.failure_category == "wrong_tool"


def test_fields_ignore_list_leaves_fields_out() -> None:
    human = Side("jira.create_ticket", {"project": "SUP", "summary": "Printer on fire",
                                        "priority": "low"})
    result = compare("fields:ignore=priority", AGENT, human)
    assert result.verdict == AGREE and "priority" not in result.field_diff


def test_fields_non_strings_compare_exactly() -> None:
    a = Side("t", {"n": 1, "tags": ["A", "b"]})
    assert compare("fields", a, Side("t", {"n": 1.0, "tags": ["a", "B "]})).verdict == AGREE
    assert compare("fields", a, Side("t", {"n": "1", "tags": ["a", "b"]})).verdict == PARTIAL


def test_text_similarity_thresholds() -> None:
    agent = Side("slack.send_message", {"channel": "#support"},
                 "Hi Anna, your printer ticket is fixed. Sorry for the wait!")
    near = Side("slack.send_message", {},
                "Hi Anna, your printer ticket is fixed. Sorry for the delay!")
    result = compare("text", agent, near)
    assert result.verdict == AGREE and result.score >= 0.85
    assert result.field_diff["text"]["match"] is True
    half = Side("slack.send_message", {}, "Hi Anna, your ticket is still open, sorry.")
    assert compare("text", agent, half).verdict == PARTIAL
    other = Side("slack.send_message", {}, "Closing as duplicate.")
    result = compare("text", agent, other)
    assert result.verdict == DISAGREE and result.failure_category == "factual"
    assert result.field_diff["text"]["agent"].startswith("Hi Anna")


def test_text_falls_back_to_the_text_argument() -> None:
    agent = Side("slack.send_message", {"text": "Deploy done"})
    human = Side("slack.send_message", {"text": "deploy   DONE"})
    assert compare("text", agent, human).verdict == AGREE


def test_unknown_comparator_and_option_are_refused() -> None:
    with pytest.raises(UnknownComparator):
        parse_key("regex")
    with pytest.raises(UnknownComparator):
        parse_key("fields:only=a")
    assert parse_key("fields:ignore=a, b") == ("fields", frozenset({"a", "b"}))
