"""PII redaction: e-mails, phones, Luhn-valid cards; no false positives on ids, dates
and amounts; what the reviewer sees; and edit-then-approve keeping redacted values."""

from __future__ import annotations

import pytest
from django.test import Client

from agents.models import Workflow
from agents.policy import DEFAULT_POLICY_YAML
from approvals.models import Proposal, ProposalStatus
from approvals.pii import (
    CARD_MASK,
    EMAIL_MASK,
    PHONE_MASK,
    luhn_valid,
    redact,
    redact_text,
    restore,
)
from tests.factories import open_run, publish, submit


@pytest.mark.parametrize("text", [
    "ada@example.com", "Ada.Lovelace+billing@mail.example.co.uk", "x_y-z@sub-domain.example.org",
])
def test_emails_are_redacted(text: str) -> None:
    assert redact_text(f"write to {text}, thanks") == f"write to {EMAIL_MASK}, thanks"


@pytest.mark.parametrize("text", [
    "+49 171 1234567", "+491711234567", "+1 (555) 123-4567", "+44 20 7946 0958",
    "+49 (0)30 1234567", "0049 30 1234567", "+33 1 23 45 67 89",
    "030 1234567", "(030) 1234567", "0171-234 5678", "030/1234567", "01711234567",
    "555-123-4567", "555.123.4567", "(555) 123-4567", "020 7946 0958",
])
def test_phone_numbers_are_redacted_in_international_and_national_formats(text: str) -> None:
    assert redact_text(f"call {text} today") == f"call {PHONE_MASK} today"


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1111", "4111-1111-1111-1111", "4111111111111111",
    "5500 0000 0000 0004", "3782 822463 10005", "6011000990139424",
])
def test_luhn_valid_card_numbers_are_redacted_with_or_without_separators(text: str) -> None:
    assert redact_text(f"card {text} expires") == f"card {CARD_MASK} expires"


@pytest.mark.parametrize("text", [
    "4111 1111 1111 1112", "4111-1111-1111-1110", "1234567812345678",
])
def test_digit_runs_failing_luhn_are_not_cards(text: str) -> None:
    assert CARD_MASK not in redact_text(f"ref {text}")


@pytest.mark.parametrize("text", [
    "ticket 4711", "T-4711", "SUP-123456", "INC-0012345", "order 123456789", "#123456",
    "2026-11-25", "25.11.2026", "05.11.2026", "01/02/2026", "2026/11/25 10:30",
    "$1,234.56", "EUR 1.234.567,89", "1234567.89", "12 345 678 EUR", "0.5", "v1.2.3",
    "192.168.0.1", "id 20261125", "build 7", "3 items at 19.99",
])
def test_ordinary_numbers_are_left_alone(text: str) -> None:
    assert redact_text(text) == text


def test_luhn() -> None:
    assert luhn_valid("79927398713") and not luhn_valid("79927398710")


def test_redact_walks_json_and_keeps_keys_and_non_strings() -> None:
    value = {"to": "ada@example.com", "cc": ["bob@example.com", 5], "n": 4111111111111111,
             "nested": {"phone": "+49 171 1234567"}, "ok": True}
    assert redact(value) == {"to": EMAIL_MASK, "cc": [EMAIL_MASK, 5], "n": 4111111111111111,
                             "nested": {"phone": PHONE_MASK}, "ok": True}


def test_several_kinds_in_one_text_each_get_their_own_mask() -> None:
    text = "Ada (ada@example.com, +49 171 1234567) paid with 4111 1111 1111 1111."
    assert redact_text(text) == f"Ada ({EMAIL_MASK}, {PHONE_MASK}) paid with {CARD_MASK}."


def test_restore_keeps_an_untouched_redacted_field_and_takes_edits() -> None:
    original = {"to": "ada@example.com", "summary": "Printer broken", "tags": ["a@b.io", "x"]}
    shown = redact(original)
    edited = {**shown, "summary": "Printer on fire"}
    assert restore(edited, original) == {"to": "ada@example.com", "summary": "Printer on fire",
                                         "tags": ["a@b.io", "x"]}


def test_restore_puts_values_back_behind_masks_in_an_edited_sentence() -> None:
    original = "Hi, we will call +49 171 1234567 or mail ada@example.com. Thx"
    edited = redact_text(original).replace("Thx", "Kind regards")
    assert restore(edited, original) == (
        "Hi, we will call +49 171 1234567 or mail ada@example.com. Kind regards")


def test_restore_pairs_masks_in_order_and_keeps_extra_masks_as_typed() -> None:
    original = "a@x.io then b@x.io"
    assert restore(f"{EMAIL_MASK} and {EMAIL_MASK} and {EMAIL_MASK}", original) == (
        f"a@x.io and b@x.io and {EMAIL_MASK}")
    assert restore("removed both", original) == "removed both"


def test_restore_never_invents_values_for_a_field_that_had_none() -> None:
    assert restore({"new": EMAIL_MASK}, {"old": "a@x.io"}) == {"new": EMAIL_MASK}


# -------------------------------------------------------------- the review page

PII_ARGS = {"project": "SUP", "summary": "Call ada@example.com on +49 171 1234567"}
DRAFT = "Dear Ada, we charged 4111 1111 1111 1111 and will call +49 171 1234567."


def _proposal(workflow: Workflow, agent, redaction: bool) -> Proposal:  # type: ignore[no-untyped-def]
    doc = DEFAULT_POLICY_YAML.replace("pii_redaction: true",
                                      f"pii_redaction: {str(redaction).lower()}")
    publish(workflow, doc)
    return submit(open_run(agent, workflow), "jira.create_ticket", PII_ARGS, draft_text=DRAFT)


@pytest.fixture
def reviewer_client(reviewer) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(reviewer)
    return client


def test_the_reviewer_sees_redacted_arguments_and_draft_when_the_policy_says_so(
        workflow: Workflow, agent, reviewer_client: Client) -> None:  # type: ignore[no-untyped-def]
    p = _proposal(workflow, agent, redaction=True)
    body = reviewer_client.get(f"/queue/{p.pk}/").content.decode()
    assert "ada@example.com" not in body and "1234567" not in body and "4111" not in body
    assert EMAIL_MASK in body and PHONE_MASK in body and CARD_MASK in body


def test_the_reviewer_sees_raw_values_when_redaction_is_off(
        workflow: Workflow, agent, reviewer_client: Client) -> None:  # type: ignore[no-untyped-def]
    p = _proposal(workflow, agent, redaction=False)
    body = reviewer_client.get(f"/queue/{p.pk}/").content.decode()
    assert "ada@example.com" in body and "4111 1111 1111 1111" in body
    assert EMAIL_MASK not in body


def test_edit_then_approve_leaving_redacted_fields_untouched_keeps_the_originals(
        workflow: Workflow, agent, reviewer_client: Client) -> None:  # type: ignore[no-untyped-def]
    import json
    p = _proposal(workflow, agent, redaction=True)
    shown_args = redact(PII_ARGS)
    r = reviewer_client.post(f"/queue/{p.pk}/edit/", {
        "version": p.version, "args_hash": p.args_hash,
        "arguments": json.dumps({**shown_args, "project": "OPS"}),
        "draft_text": redact_text(DRAFT).replace("Dear Ada", "Hello Ada"),
        "failure_category": "wrong_params"})
    assert r.status_code == 302
    p.refresh_from_db()
    assert p.status == ProposalStatus.APPROVED and p.edited
    assert p.final_arguments == {**PII_ARGS, "project": "OPS"}
    assert p.final_text == DRAFT.replace("Dear Ada", "Hello Ada")


def test_without_redaction_a_typed_mask_is_taken_literally(
        workflow: Workflow, agent, reviewer) -> None:  # type: ignore[no-untyped-def]
    from approvals import services
    p = _proposal(workflow, agent, redaction=False)
    approved = services.proposal_approve(
        actor=reviewer, proposal=p, expected_version=p.version,
        edited_arguments={**PII_ARGS, "summary": f"Call {EMAIL_MASK}"})
    assert approved.final_arguments["summary"] == f"Call {EMAIL_MASK}"


def test_the_api_returns_the_agent_its_own_raw_arguments(
        workflow: Workflow, agent, agent_client) -> None:  # type: ignore[no-untyped-def]
    p = _proposal(workflow, agent, redaction=True)
    assert agent_client.get(f"/api/v1/proposals/{p.pk}/").json()["arguments"] == PII_ARGS
