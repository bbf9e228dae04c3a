"""Values PostgreSQL cannot store get a 400 naming the field, never a 500, nothing written.

Regression tests for 500s found by the security suite: \\u0000 and lone surrogates in
jsonb/text, 1e400 (parses as inf), deep nesting, and NUL in query strings and forms.
"""

from __future__ import annotations

import pytest
from django.test import Client
from rest_framework.test import APIClient

from approvals.models import Proposal, ProposalStatus, Run
from tests.factories import open_run, submit

pytestmark = pytest.mark.django_db

DEEP = "[" * 5000 + "]" * 5000


@pytest.fixture
def run(agent, workflow) -> Run:  # type: ignore[no-untyped-def]
    return open_run(agent, workflow)


@pytest.mark.parametrize(("body", "field"), [
    ('"arguments": {"q": "a\\u0000b"}', "arguments"),
    ('"arguments": {"a\\u0000": "b"}', "arguments"),
    ('"arguments": {"q": ["\\ud800"]}', "arguments"),
    ('"arguments": {"q": 1e400}', "arguments"),
    ('"arguments": {"q": -1e999}', "arguments"),
    ('"arguments": {"q": ' + "[" * 80 + "]" * 80 + "}", "arguments"),
    ('"arguments": {}, "draft_text": "\\udfff"', "draft_text"),
    ('"arguments": {}, "rationale": "x\\u0000"', "rationale"),
    ('"arguments": {}, "cost": 1e400', "cost"),
    ('"arguments": {}, "tokens": 1e400', "tokens"),
])
def test_unstorable_proposal_values_get_400_naming_the_field(
    agent_client: APIClient, run: Run, body: str, field: str
) -> None:
    raw = '{"run": ' + str(run.pk) + ', "tool": "confluence.search", ' + body + "}"
    response = agent_client.generic("POST", "/api/v1/proposals/", raw,
                                    content_type="application/json", HTTP_IDEMPOTENCY_KEY="k1")
    assert response.status_code == 400, response.content
    assert field in response.json()
    assert not Proposal.objects.exists()


@pytest.mark.parametrize("raw", [DEEP, '{"arguments": ' + DEEP + "}", "9" * 5000, "\\x"])
def test_pathological_json_gets_a_parse_error(agent_client: APIClient, run: Run, raw: str) -> None:
    response = agent_client.generic("POST", "/api/v1/proposals/", raw,
                                    content_type="application/json", HTTP_IDEMPOTENCY_KEY="k2")
    assert response.status_code == 400
    assert not Proposal.objects.exists()


def test_lone_surrogate_in_case_ref_gets_400(agent_client: APIClient, workflow) -> None:  # type: ignore[no-untyped-def]
    response = agent_client.generic(
        "POST", "/api/v1/runs/", '{"workflow": "support-triage", "case_ref": "\\ud83d"}',
        content_type="application/json")
    assert response.status_code == 400 and "case_ref" in response.json()
    assert not Run.objects.exists()


@pytest.mark.parametrize("url", ["/queue/?workflow=%00", "/queue/?status=%00&page=1",
                                 "/queue/?%00=1", "/workflows/?x=%00"])
def test_nul_in_a_query_string_gets_400(client: Client, reviewer, workflow, url: str) -> None:  # type: ignore[no-untyped-def]
    client.force_login(reviewer)
    response = client.get(url)
    assert response.status_code == 400
    assert b"null characters" in response.content


@pytest.mark.parametrize(("action", "data", "field"), [
    ("edit", {"arguments": '{"project": "SUP", "summary": "a\\u0000"}'}, "arguments"),
    ("edit", {"arguments": '{"project": "SUP", "summary": "\\ud800"}'}, "arguments"),
    ("edit", {"arguments": '{"project": "SUP", "summary": "x"}', "note": "a\x00b"}, "note"),
    ("edit", {"arguments": '{"project": "SUP", "summary": "x"}', "draft_text": "\x00"},
     "draft_text"),
    ("reject", {"reason_code": "other", "note": "a\x00"}, "note"),
    ("approve", {"note": "\x00"}, "note"),
])
def test_review_forms_refuse_unstorable_values_and_change_nothing(
    client: Client, reviewer, run: Run, action: str, data: dict, field: str
) -> None:  # type: ignore[no-untyped-def]
    proposal = submit(run, draft_text="hello")
    client.force_login(reviewer)
    response = client.post(f"/queue/{proposal.pk}/{action}/",
                           {"version": proposal.version, "args_hash": proposal.args_hash, **data})
    assert response.status_code == 400
    assert field in response.content.decode()
    proposal.refresh_from_db()
    assert proposal.status == ProposalStatus.PENDING and proposal.final_arguments is None


def test_edit_with_non_finite_number_for_an_open_schema_gets_400(
    client: Client, reviewer, run: Run
) -> None:  # type: ignore[no-untyped-def]
    proposal = submit(run, tool="confluence.search", arguments={"q": "x"})
    client.force_login(reviewer)
    response = client.post(f"/queue/{proposal.pk}/edit/", {
        "version": proposal.version, "arguments": '{"q": NaN}', "failure_category": "other"})
    assert response.status_code == 400 and "finite" in response.content.decode()
    assert Proposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING
