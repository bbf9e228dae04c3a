from __future__ import annotations

from decimal import Decimal

import pytest
from rest_framework.test import APIClient

from agents.models import AuditEvent, Workflow
from approvals.models import Execution, Proposal, ProposalStatus, Run

pytestmark = pytest.mark.django_db


def open_run_via_api(client: APIClient, workflow: str = "support-triage") -> dict:
    response = client.post("/api/v1/runs/", {"workflow": workflow, "case_ref": "T-4711",
                                              "agent_version": "v1"}, format="json")
    assert response.status_code == 201, response.content
    return response.json()


def propose(client: APIClient, run_id: int, key: str = "k1", **overrides: object):  # type: ignore[no-untyped-def]
    body = {"run": run_id, "tool": "jira.create_ticket",
            "arguments": {"project": "SUP", "summary": "Printer on fire"},
            "rationale": "customer reports fire", "tokens": 120, "cost": "0.012"}
    body.update(overrides)
    return client.post("/api/v1/proposals/", body, format="json", HTTP_IDEMPOTENCY_KEY=key)


def test_it_queues_a_valid_proposal_for_review_at_level_2(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    response = propose(agent_client, run["id"])
    assert response.status_code == 201, response.content
    data = response.json()
    assert data["status"] == "pending"
    assert data["decision"] == "review"
    assert data["policy_version"] == 1
    assert data["decision_reasons"] == ["level 2 suggest: one-click review"]
    assert AuditEvent.objects.filter(action="proposal.submit").count() == 1
    assert Run.objects.get(pk=run["id"]).tool_calls == 1


def test_it_names_the_field_when_arguments_break_the_schema(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    response = propose(agent_client, run["id"], arguments={"project": "SUP", "summary": "",
                                                            "priority": "meh"})
    assert response.status_code == 400
    body = response.json()
    assert "arguments.summary" in body and "arguments.priority" in body
    assert Proposal.objects.count() == 0
    assert Run.objects.get(pk=run["id"]).tool_calls == 0


def test_it_names_a_missing_required_argument(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    response = propose(agent_client, run["id"], arguments={"project": "SUP"})
    assert response.status_code == 400
    assert "arguments.summary" in response.json()


@pytest.mark.parametrize("field,value", [("run", "abc"), ("tokens", -1), ("cost", "lots"),
                                         ("arguments", [1, 2]), ("tool", "")])
def test_it_rejects_bad_fields_with_400_naming_them(agent_client: APIClient, field: str,
                                                    value: object) -> None:
    run = open_run_via_api(agent_client)
    response = propose(agent_client, run["id"], **{field: value})
    assert response.status_code == 400
    assert field in response.json()
    assert Proposal.objects.count() == 0


def test_it_requires_an_idempotency_key(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    response = agent_client.post("/api/v1/proposals/", {"run": run["id"], "tool": "x",
                                                        "arguments": {}}, format="json")
    assert response.status_code == 400
    assert "Idempotency-Key" in response.json()


def test_it_replays_the_same_proposal_for_a_repeated_key(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    first = propose(agent_client, run["id"], key="same")
    second = propose(agent_client, run["id"], key="same")
    assert first.status_code == 201 and second.status_code == 201
    assert second["Idempotent-Replayed"] == "true"
    assert first.json()["id"] == second.json()["id"]
    assert Proposal.objects.count() == 1
    assert Run.objects.get(pk=run["id"]).tool_calls == 1


def test_it_refuses_a_reused_key_with_a_different_body(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    propose(agent_client, run["id"], key="same")
    response = propose(agent_client, run["id"], key="same", rationale="changed")
    assert response.status_code == 422
    assert "Idempotency-Key" in response.json()
    assert Proposal.objects.count() == 1


def test_it_shows_a_proposal_to_its_agent(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    created = propose(agent_client, run["id"]).json()
    response = agent_client.get(f"/api/v1/proposals/{created['id']}/")
    assert response.status_code == 200
    assert response.json()["status"] == "pending"
    assert response.json()["cost"] == "0.012000"


def test_another_agent_gets_404_on_detail_and_sees_nothing_in_list(
    agent_client: APIClient, workflow: Workflow
) -> None:
    from tests.factories import make_agent

    run = open_run_via_api(agent_client)
    created = propose(agent_client, run["id"]).json()
    _, other_token = make_agent(workflow, name="other-bot")
    other = APIClient()
    other.credentials(HTTP_AUTHORIZATION=f"Bearer {other_token}")
    assert other.get(f"/api/v1/proposals/{created['id']}/").status_code == 404
    assert other.get(f"/api/v1/runs/{run['id']}/").status_code == 404
    assert other.get("/api/v1/proposals/").json()["results"] == []
    response = propose(other, run["id"], key="theirs")
    assert response.status_code == 400 and "run" in response.json()


def test_it_needs_a_valid_token() -> None:
    client = APIClient()
    assert client.post("/api/v1/runs/", {}, format="json").status_code in (401, 403)
    client.credentials(HTTP_AUTHORIZATION="Bearer gh_nope")
    assert client.get("/api/v1/proposals/").status_code == 401


def test_methods_not_allowed_get_405(agent_client: APIClient) -> None:
    assert agent_client.delete("/api/v1/proposals/").status_code == 405
    assert agent_client.put("/api/v1/runs/").status_code == 405


def test_it_refuses_unknown_workflows_naming_the_field(agent_client: APIClient) -> None:
    response = agent_client.post("/api/v1/runs/", {"workflow": "nope", "case_ref": "x"},
                                 format="json")
    assert response.status_code == 400 and "workflow" in response.json()


def test_a_closed_run_takes_no_more_proposals(agent_client: APIClient) -> None:
    run = open_run_via_api(agent_client)
    assert agent_client.post(f"/api/v1/runs/{run['id']}/close/", {"outcome": "resolved"},
                             format="json").status_code == 200
    assert agent_client.post(f"/api/v1/runs/{run['id']}/close/", {},
                             format="json").status_code == 409
    response = propose(agent_client, run["id"])
    assert response.status_code == 409
    assert Proposal.objects.count() == 0


def test_level_3_executes_a_low_risk_tool_at_once(agent_client: APIClient,
                                                  workflow: Workflow) -> None:
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=3)
    run = open_run_via_api(agent_client)
    data = propose(agent_client, run["id"]).json()
    assert data["status"] == ProposalStatus.APPROVED
    assert Execution.objects.filter(proposal_id=data["id"]).count() == 1
    assert Decimal(data["cost"]) == Decimal("0.012")


def test_openapi_schema_and_docs_are_served(client) -> None:  # type: ignore[no-untyped-def]
    schema = client.get("/api/schema/")
    assert schema.status_code == 200
    assert b"/api/v1/proposals/" in schema.content
    assert client.get("/api/docs/").status_code == 200
