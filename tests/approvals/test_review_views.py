from __future__ import annotations

import json

import pytest
from django.test import Client

from agents.models import AuditEvent
from approvals.models import Execution, Proposal, ProposalStatus
from shadow.models import ExampleSource, LabeledExample
from tests.factories import open_run, submit

pytestmark = pytest.mark.django_db


@pytest.fixture
def pending(agent, workflow) -> Proposal:  # type: ignore[no-untyped-def]
    return submit(open_run(agent, workflow))


def login(client: Client, user) -> Client:  # type: ignore[no-untyped-def]
    client.force_login(user)
    return client


def test_queue_needs_login(client: Client) -> None:
    response = client.get("/queue/")
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_reviewer_sees_pending_item(client: Client, reviewer, pending: Proposal) -> None:
    response = login(client, reviewer).get("/queue/")
    assert response.status_code == 200
    assert f"#{pending.pk}".encode() in response.content


def test_reviewer_of_another_workflow_sees_nothing_and_gets_404(
    client: Client, other_reviewer, pending: Proposal
) -> None:
    login(client, other_reviewer)
    assert f"#{pending.pk}".encode() not in client.get("/queue/").content
    assert client.get(f"/queue/{pending.pk}/").status_code == 404
    response = client.post(f"/queue/{pending.pk}/approve/", {"version": pending.version})
    assert response.status_code == 404
    assert Proposal.objects.get(pk=pending.pk).status == ProposalStatus.PENDING


def test_decide_is_post_only(client: Client, reviewer, pending: Proposal) -> None:
    assert login(client, reviewer).get(f"/queue/{pending.pk}/approve/").status_code == 405


def test_approve_writes_execution_audit_and_example(
    client: Client, reviewer, pending: Proposal
) -> None:
    response = login(client, reviewer).post(
        f"/queue/{pending.pk}/approve/",
        {"version": pending.version, "args_hash": pending.args_hash})
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.status == ProposalStatus.APPROVED and pending.decided_by == reviewer
    assert Execution.objects.filter(proposal=pending).count() == 1
    assert AuditEvent.objects.filter(action="proposal.approve",
                                     object_id=str(pending.pk)).count() == 1
    example = LabeledExample.objects.get(proposal=pending)
    assert example.source == ExampleSource.APPROVAL and example.is_good


def test_stale_version_gets_409_and_changes_nothing(
    client: Client, reviewer, pending: Proposal
) -> None:
    response = login(client, reviewer).post(f"/queue/{pending.pk}/approve/",
                                            {"version": pending.version + 5})
    assert response.status_code == 409
    assert Proposal.objects.get(pk=pending.pk).status == ProposalStatus.PENDING
    assert not Execution.objects.exists()


def test_edit_revalidates_against_the_schema(client: Client, reviewer, pending: Proposal) -> None:
    response = login(client, reviewer).post(f"/queue/{pending.pk}/edit/", {
        "version": pending.version, "arguments": json.dumps({"project": "SUP", "summary": ""}),
        "failure_category": "wrong_params"})
    assert response.status_code == 400
    assert b"arguments.summary" in response.content
    assert Proposal.objects.get(pk=pending.pk).status == ProposalStatus.PENDING


def test_edit_then_approve_stores_before_after_and_category(
    client: Client, reviewer, pending: Proposal
) -> None:
    edited = {"project": "SUP", "summary": "Printer smoking, 3rd floor", "priority": "high"}
    response = login(client, reviewer).post(f"/queue/{pending.pk}/edit/", {
        "version": pending.version, "arguments": json.dumps(edited),
        "failure_category": "wrong_params"})
    assert response.status_code == 302
    pending.refresh_from_db()
    assert pending.edited and pending.final_arguments == edited
    assert pending.arguments["summary"] == "Printer on fire"
    example = LabeledExample.objects.get(proposal=pending)
    assert example.source == ExampleSource.EDIT and example.failure_category == "wrong_params"
    assert example.human_output["arguments"] == edited


def test_bad_json_in_edit_is_a_400_naming_arguments(client: Client, reviewer,
                                                    pending: Proposal) -> None:
    response = login(client, reviewer).post(f"/queue/{pending.pk}/edit/", {
        "version": pending.version, "arguments": "{nope"})
    assert response.status_code == 400 and b"arguments" in response.content


def test_reject_needs_a_known_reason(client: Client, reviewer, pending: Proposal) -> None:
    login(client, reviewer)
    bad = client.post(f"/queue/{pending.pk}/reject/", {"version": pending.version,
                                                      "reason_code": "meh"})
    assert bad.status_code == 400 and b"reason_code" in bad.content
    ok = client.post(f"/queue/{pending.pk}/reject/", {"version": pending.version,
                                                     "reason_code": "tone", "note": "too curt"})
    assert ok.status_code == 302
    pending.refresh_from_db()
    assert pending.status == ProposalStatus.REJECTED and pending.reject_reason == "tone"
    assert LabeledExample.objects.get(proposal=pending).source == ExampleSource.REJECTION


def test_hand_off(client: Client, reviewer, pending: Proposal) -> None:
    response = login(client, reviewer).post(f"/queue/{pending.pk}/handoff/",
                                            {"version": pending.version})
    assert response.status_code == 302
    assert Proposal.objects.get(pk=pending.pk).status == ProposalStatus.HANDED_OFF


def test_agent_content_is_escaped(client: Client, reviewer, agent, workflow) -> None:
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>'
    p = submit(open_run(agent, workflow, case_ref=evil),
               arguments={"project": "SUP", "summary": evil}, rationale=evil)
    body = login(client, reviewer).get(f"/queue/{p.pk}/").content.decode()
    assert "<script>alert(1)" not in body and "<img src=x" not in body
    assert "&lt;script&gt;" in body
    assert "unsafe-inline" not in client.get("/queue/")["Content-Security-Policy"]


def test_a_rejected_edit_comes_back_with_what_the_reviewer_typed(
    client: Client, reviewer, pending: Proposal
) -> None:
    typed = '{"project": "SUP", "summary": "Smoke on 3rd floor", "priority": "meh"}'
    response = login(client, reviewer).post(f"/queue/{pending.pk}/edit/", {
        "version": pending.version, "arguments": typed, "failure_category": "tone",
        "note": "kept <b>note</b>"})
    body = response.content.decode()
    assert response.status_code == 400 and "arguments.priority" in body
    assert '<details class="edit" open>' in body
    assert "Smoke on 3rd floor" in body and "kept &lt;b&gt;note&lt;/b&gt;" in body
    assert '<option value="tone" selected>' in body


def test_an_execution_error_is_redacted_like_the_arguments(
    client: Client, reviewer, pending: Proposal
) -> None:
    from shadow.services import review_approve

    approved = review_approve(actor=reviewer, proposal=pending, expected_version=pending.version)
    Execution.objects.filter(proposal=approved).update(
        status="failed", error="HTTP 400: unknown reporter jane.doe@example.com")
    body = login(client, reviewer).get(f"/queue/{approved.pk}/").content.decode()
    assert "jane.doe@example.com" not in body and "[email redacted]" in body
