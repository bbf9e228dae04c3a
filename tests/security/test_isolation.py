"""Per-agent isolation on the API, per-workflow scoping for reviewers, login and CSRF."""

from __future__ import annotations

import re

import pytest
from django.contrib.auth.models import Group
from django.test import Client
from rest_framework.test import APIClient

from agents.models import Workflow
from approvals.models import Execution, Proposal, ProposalStatus, Run
from tests.factories import WorkflowFactory, make_agent, open_run, publish, submit

pytestmark = pytest.mark.django_db


def _client_for(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


@pytest.fixture
def billing(tools, other_reviewer) -> Workflow:  # type: ignore[no-untyped-def]
    wf = WorkflowFactory(slug="billing", name="Billing",
                         reviewer_group=Group.objects.get(name="billing-reviewers"))
    publish(wf)
    return wf


@pytest.fixture
def agent_b(workflow: Workflow, billing: Workflow):  # type: ignore[no-untyped-def]
    """A second agent on the same workflow as `agent` (and on billing): isolation is per
    agent, not per workflow."""
    agent, token = make_agent(workflow, name="other-bot")
    agent.workflows.add(billing)
    return agent, token


@pytest.fixture
def b_objects(agent_b, workflow: Workflow) -> tuple[Run, Proposal]:  # type: ignore[no-untyped-def]
    run = open_run(agent_b[0], workflow, case_ref="B-1")
    return run, submit(run)


# -- agents ----------------------------------------------------------------------------------

def test_agent_gets_404_on_another_agents_run_and_proposal(
    agent_client: APIClient, b_objects: tuple[Run, Proposal]
) -> None:
    run, proposal = b_objects
    assert agent_client.get(f"/api/v1/runs/{run.pk}/").status_code == 404
    assert agent_client.get(f"/api/v1/proposals/{proposal.pk}/").status_code == 404
    assert agent_client.get(f"/api/v1/proposals/{proposal.pk}/?wait=1").status_code == 404
    assert agent_client.post(f"/api/v1/runs/{run.pk}/close/", {}, format="json").status_code == 404
    assert Run.objects.get(pk=run.pk).status == "open"


def test_agent_lists_only_its_own_proposals(
    agent, workflow, agent_client: APIClient, b_objects: tuple[Run, Proposal]
) -> None:  # type: ignore[no-untyped-def]
    mine = submit(open_run(agent, workflow))
    body = agent_client.get("/api/v1/proposals/").json()
    ids = {p["id"] for p in body["results"]}
    assert ids == {mine.pk}
    assert b_objects[1].pk not in ids


def test_agent_cannot_submit_into_another_agents_run(
    agent_client: APIClient, b_objects: tuple[Run, Proposal]
) -> None:
    run, _ = b_objects
    before = Proposal.objects.count()
    response = agent_client.post(
        "/api/v1/proposals/", {"run": run.pk, "tool": "jira.create_ticket",
                               "arguments": {"project": "SUP", "summary": "x"}},
        format="json", HTTP_IDEMPOTENCY_KEY="steal-1")
    assert response.status_code == 400 and "run" in response.json()
    assert Proposal.objects.count() == before


def test_agent_cannot_open_a_run_on_a_workflow_it_is_not_registered_for(
    agent_client: APIClient, billing: Workflow
) -> None:
    response = agent_client.post("/api/v1/runs/", {"workflow": "billing", "case_ref": "X"},
                                 format="json")
    assert response.status_code == 400 and "workflow" in response.json()
    assert not Run.objects.filter(workflow=billing).exists()


def test_same_idempotency_key_from_two_agents_never_crosses(
    agent, workflow, agent_b, agent_client: APIClient
) -> None:  # type: ignore[no-untyped-def]
    run_a = open_run(agent, workflow)
    run_b = open_run(agent_b[0], workflow)
    body = {"tool": "jira.create_ticket", "arguments": {"project": "SUP", "summary": "x"}}
    a = agent_client.post("/api/v1/proposals/", {**body, "run": run_a.pk}, format="json",
                          HTTP_IDEMPOTENCY_KEY="shared-key")
    b = _client_for(agent_b[1]).post("/api/v1/proposals/", {**body, "run": run_b.pk},
                                     format="json", HTTP_IDEMPOTENCY_KEY="shared-key")
    assert a.status_code == 201 and b.status_code == 201
    assert a.json()["id"] != b.json()["id"]


@pytest.mark.parametrize("header", ["Bearer gh_not-a-real-token", "Bearer", "Bearer a b",
                                    "Token abc"])
def test_bad_or_missing_tokens_get_401(header: str, workflow: Workflow) -> None:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert client.get("/api/v1/proposals/").status_code == 401


def test_inactive_agent_token_gets_401(agent_and_token) -> None:  # type: ignore[no-untyped-def]
    agent, token = agent_and_token
    agent.is_active = False
    agent.save(update_fields=["is_active"])
    assert _client_for(token).get("/api/v1/whoami/").status_code == 401


def test_tokens_are_stored_only_as_a_sha256_hash(agent_and_token) -> None:  # type: ignore[no-untyped-def]
    agent, token = agent_and_token
    agent.refresh_from_db()
    assert token not in {str(v) for v in agent.__dict__.values()}
    assert re.fullmatch(r"[0-9a-f]{64}", agent.token_hash)


def test_a_logged_in_reviewer_cannot_use_the_agent_api(client: Client, reviewer) -> None:  # type: ignore[no-untyped-def]
    client.force_login(reviewer)
    assert client.get("/api/v1/proposals/").status_code == 403
    assert client.post("/api/v1/runs/", {}).status_code == 403


# -- reviewers -------------------------------------------------------------------------------

def test_reviewer_sees_only_the_workflows_they_review(
    client: Client, reviewer, other_reviewer, agent_b, billing: Workflow, b_objects
) -> None:  # type: ignore[no-untyped-def]
    billing_item = submit(open_run(agent_b[0], billing, case_ref="BILL-9"))
    support_item = b_objects[1]

    client.force_login(reviewer)
    page = client.get("/queue/").content.decode()
    assert f"/queue/{support_item.pk}/" in page and "BILL-9" not in page
    assert client.get(f"/queue/{billing_item.pk}/").status_code == 404

    client.force_login(other_reviewer)
    for status in ProposalStatus.values:
        page = client.get(f"/queue/?status={status}").content.decode()
        assert f"/queue/{support_item.pk}/" not in page and "B-1" not in page
    assert f"/queue/{billing_item.pk}/" in client.get("/queue/").content.decode()
    assert client.get(f"/queue/{support_item.pk}/").status_code == 404
    assert "Support triage" not in client.get("/workflows/").content.decode()


@pytest.mark.parametrize("action", ["approve", "edit", "reject", "handoff"])
def test_outsider_gets_404_on_every_decision_and_nothing_changes(
    client: Client, other_reviewer, b_objects, action: str
) -> None:  # type: ignore[no-untyped-def]
    proposal = b_objects[1]
    client.force_login(other_reviewer)
    response = client.post(f"/queue/{proposal.pk}/{action}/", {
        "version": proposal.version, "args_hash": proposal.args_hash,
        "arguments": '{"project": "SUP", "summary": "pwned"}', "reason_code": "other"})
    assert response.status_code == 404
    proposal.refresh_from_db()
    assert proposal.status == ProposalStatus.PENDING and proposal.final_arguments is None
    assert not Execution.objects.filter(proposal=proposal).exists()


def test_reviewer_who_is_not_a_manager_gets_403_on_break_glass(
    client: Client, reviewer
) -> None:  # type: ignore[no-untyped-def]
    client.force_login(reviewer)
    assert client.get("/break-glass/").status_code == 403
    response = client.post("/break-glass/", {"what": "read_only", "value": "on", "reason": "x"})
    assert response.status_code == 403


# -- anonymous -------------------------------------------------------------------------------

@pytest.mark.parametrize("path", ["/queue/", "/queue/1/", "/workflows/", "/datasets/",
                                  "/break-glass/"])
def test_anonymous_pages_redirect_to_login(client: Client, path: str) -> None:
    response = client.get(path)
    assert response.status_code == 302
    assert response["Location"].startswith("/accounts/login/?next=")


def test_anonymous_decide_post_redirects_and_changes_nothing(
    client: Client, b_objects
) -> None:  # type: ignore[no-untyped-def]
    proposal = b_objects[1]
    response = client.post(f"/queue/{proposal.pk}/approve/", {"version": proposal.version})
    assert response.status_code == 302
    assert Proposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING


@pytest.mark.parametrize(("method", "path"), [
    ("get", "/api/v1/whoami/"), ("get", "/api/v1/proposals/"), ("post", "/api/v1/proposals/"),
    ("post", "/api/v1/runs/"), ("get", "/api/v1/runs/1/"), ("post", "/api/v1/runs/1/close/"),
    ("get", "/api/v1/proposals/1/"),
])
def test_anonymous_api_gets_401_with_a_bearer_challenge(method: str, path: str) -> None:
    response = getattr(APIClient(), method)(path)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == "Bearer"


# -- CSRF ------------------------------------------------------------------------------------

@pytest.mark.parametrize("action", ["approve", "reject", "handoff", "edit"])
def test_review_posts_without_a_csrf_token_are_refused(
    reviewer, b_objects, action: str
) -> None:  # type: ignore[no-untyped-def]
    proposal = b_objects[1]
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    response = client.post(f"/queue/{proposal.pk}/{action}/",
                           {"version": proposal.version, "reason_code": "other"})
    assert response.status_code == 403
    assert Proposal.objects.get(pk=proposal.pk).status == ProposalStatus.PENDING


def test_review_post_with_the_pages_csrf_token_is_accepted(reviewer, b_objects) -> None:  # type: ignore[no-untyped-def]
    proposal = b_objects[1]
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    page = client.get(f"/queue/{proposal.pk}/").content.decode()
    token = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page).group(1)
    response = client.post(f"/queue/{proposal.pk}/approve/", {
        "csrfmiddlewaretoken": token, "version": proposal.version,
        "args_hash": proposal.args_hash})
    assert response.status_code == 302
    assert Proposal.objects.get(pk=proposal.pk).status == ProposalStatus.APPROVED


def test_htmx_header_token_is_accepted_and_a_foreign_one_refused(reviewer, b_objects) -> None:  # type: ignore[no-untyped-def]
    proposal = b_objects[1]
    client = Client(enforce_csrf_checks=True)
    client.force_login(reviewer)
    client.get(f"/queue/{proposal.pk}/")
    bad = client.post(f"/queue/{proposal.pk}/approve/", {"version": proposal.version},
                      HTTP_X_CSRFTOKEN="x" * 64, HTTP_HX_REQUEST="true")
    assert bad.status_code == 403
    good = client.post(f"/queue/{proposal.pk}/approve/", {"version": proposal.version},
                       HTTP_X_CSRFTOKEN=client.cookies["csrftoken"].value,
                       HTTP_HX_REQUEST="true")
    assert good.status_code == 200 and good["HX-Redirect"] == "/queue/"


def test_break_glass_post_without_csrf_is_refused(manager) -> None:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    response = client.post("/break-glass/", {"what": "read_only", "value": "on", "reason": "x"})
    assert response.status_code == 403


@pytest.mark.parametrize(("path", "expected"), [
    ("/workflows/support-triage/", 404),
    # managers-only page: 403 before the lookup, so it reveals no workflow either
    ("/workflows/support-triage/policy/", 403),
    ("/shadow/support-triage/", 404),
    ("/shadow/support-triage/outcomes/new/", 404),
])
def test_outsider_learns_nothing_from_the_pages_of_a_workflow_they_do_not_review(
    client: Client, other_reviewer, workflow: Workflow, path: str, expected: int
) -> None:  # type: ignore[no-untyped-def]
    client.force_login(other_reviewer)
    assert client.get(path).status_code == expected
    assert client.get(path.replace("support-triage", "no-such-workflow")).status_code == expected


@pytest.mark.parametrize("action", ["promote", "demote", "requalify"])
def test_ladder_posts_are_404_for_outsiders_and_403_for_reviewers(
    client: Client, reviewer, other_reviewer, workflow: Workflow, action: str
) -> None:  # type: ignore[no-untyped-def]
    data = {"reason": "x", "override_justification": "y"}
    client.force_login(other_reviewer)
    assert client.post(f"/workflows/support-triage/{action}/", data).status_code == 404
    client.force_login(reviewer)
    assert client.post(f"/workflows/support-triage/{action}/", data).status_code == 403
    workflow.refresh_from_db()
    assert workflow.autonomy_level == 2 and not workflow.release_notes.filter(
        kind__in=["promote", "override", "demote", "unfreeze"]).exists()
