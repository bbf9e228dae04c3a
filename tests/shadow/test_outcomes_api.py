"""POST/GET /api/v1/outcomes/: people only, field errors, idempotent external_id."""

from __future__ import annotations

import base64

import pytest
from rest_framework.test import APIClient

from shadow.models import Comparison, HumanOutcome
from tests.shadow.conftest import shadow_proposal

pytestmark = pytest.mark.django_db
URL = "/api/v1/outcomes/"
BODY = {"workflow": "support-triage", "case_ref": "T-1", "tool": "jira.create_ticket",
        "arguments": {"project": "SUP", "summary": "Printer on fire"}, "external_id": "zd-1"}


def test_reviewer_posts_an_outcome_and_gets_its_comparisons(
    reviewer_api: APIClient, agent, shadow_workflow
) -> None:
    p = shadow_proposal(agent, shadow_workflow, case_ref="T-1",
                        arguments={"project": "SUP", "summary": "Printer is on fire"})
    response = reviewer_api.post(URL, BODY, format="json")
    assert response.status_code == 201, response.json()
    data = response.json()
    assert data["workflow"] == "support-triage" and data["source"] == "api"
    (comparison,) = data["comparisons"]
    assert comparison["proposal"] == p.pk and comparison["verdict"] == "partial"
    assert comparison["field_diff"]["summary"]["match"] is False
    assert comparison["field_diff"]["project"] == {"agent": "SUP", "human": "SUP", "match": True}


def test_repeating_external_id_returns_the_same_outcome_with_200(
    reviewer_api: APIClient, shadow_workflow
) -> None:
    first = reviewer_api.post(URL, BODY, format="json")
    again = reviewer_api.post(URL, BODY, format="json")
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"] and HumanOutcome.objects.count() == 1
    changed = reviewer_api.post(URL, {**BODY, "tool": "jira.close_ticket"}, format="json")
    assert changed.status_code == 409 and "external_id" in changed.json()


@pytest.mark.parametrize("patch, field", [
    ({"workflow": ""}, "workflow"),
    ({"case_ref": ""}, "case_ref"),
    ({"case_ref": "x" * 201}, "case_ref"),
    ({"tool": ""}, "tool"),
    ({"arguments": [1, 2]}, "arguments"),
    ({"external_id": "x" * 201}, "external_id"),
])
def test_bad_fields_get_400_naming_the_field(reviewer_api: APIClient, shadow_workflow,
                                             patch: dict, field: str) -> None:
    response = reviewer_api.post(URL, {**BODY, **patch}, format="json")
    assert response.status_code == 400 and field in response.json()
    assert not HumanOutcome.objects.exists()


def test_missing_fields_are_named(reviewer_api: APIClient, shadow_workflow) -> None:
    response = reviewer_api.post(URL, {}, format="json")
    assert response.status_code == 400
    assert {"workflow", "case_ref", "tool"} <= set(response.json())


def test_anonymous_gets_401(shadow_workflow) -> None:
    response = APIClient().post(URL, BODY, format="json")
    assert response.status_code == 401 and response["WWW-Authenticate"].startswith("Basic")


def test_agent_token_is_refused_with_403(agent_client: APIClient, agent,
                                         shadow_workflow) -> None:
    shadow_proposal(agent, shadow_workflow, case_ref="T-1")
    assert agent_client.post(URL, BODY, format="json").status_code == 403
    assert agent_client.get(URL).status_code == 403
    assert not HumanOutcome.objects.exists() and not Comparison.objects.exists()


def test_user_without_any_workflow_gets_403(shadow_workflow) -> None:
    from tests.factories import UserFactory

    client = APIClient()
    client.force_login(UserFactory(username="nobody"))
    assert client.post(URL, BODY, format="json").status_code == 403


@pytest.fixture
def billing(db: None):  # type: ignore[no-untyped-def]
    from django.contrib.auth.models import Group

    from tests.factories import WorkflowFactory

    return WorkflowFactory(slug="billing", name="Billing",
                           reviewer_group=Group.objects.get_or_create(name="billing-reviewers")[0])


def test_reviewer_of_another_workflow_gets_404(other_reviewer, billing,
                                               shadow_workflow) -> None:
    client = APIClient()
    client.force_login(other_reviewer)
    assert client.post(URL, BODY, format="json").status_code == 404
    assert client.get(URL, {"workflow": "support-triage"}).status_code == 404
    assert not HumanOutcome.objects.exists()


def test_basic_auth_works_for_a_reviewer(reviewer, shadow_workflow) -> None:
    client = APIClient()
    token = base64.b64encode(b"reviewer:pw-for-tests-123").decode()
    client.credentials(HTTP_AUTHORIZATION=f"Basic {token}")
    assert client.post(URL, BODY, format="json").status_code == 201


def test_session_post_needs_csrf(reviewer, shadow_workflow) -> None:
    client = APIClient(enforce_csrf_checks=True)
    client.force_login(reviewer)
    assert client.post(URL, BODY, format="json").status_code == 403


def test_other_methods_get_405(reviewer_api: APIClient, shadow_workflow) -> None:
    assert reviewer_api.put(URL, BODY, format="json").status_code == 405
    assert reviewer_api.delete(URL).status_code == 405


def test_list_is_filtered_by_workflow_and_visibility(
    reviewer_api: APIClient, other_reviewer, billing, shadow_workflow
) -> None:
    reviewer_api.post(URL, BODY, format="json")
    reviewer_api.post(URL, {**BODY, "external_id": "zd-2", "case_ref": "T-2"}, format="json")
    data = reviewer_api.get(URL, {"workflow": "support-triage"}).json()
    assert [o["case_ref"] for o in data["results"]] == ["T-2", "T-1"]
    outsider = APIClient()
    outsider.force_login(other_reviewer)
    assert outsider.get(URL).json()["results"] == []


def test_outcomes_endpoint_is_in_the_openapi_schema(reviewer_api: APIClient) -> None:
    schema = reviewer_api.get("/api/schema/", HTTP_ACCEPT="application/vnd.oai.openapi+json")
    assert schema.status_code == 200
    text = schema.content.decode()
    assert "/api/v1/outcomes/" in text and "agent token is refused" in text


def test_list_does_not_query_per_outcome(reviewer_api: APIClient, agent, shadow_workflow,
                                         django_assert_max_num_queries) -> None:
    for i in range(8):
        shadow_proposal(agent, shadow_workflow, case_ref=f"T-{i}")
        reviewer_api.post(URL, {**BODY, "case_ref": f"T-{i}", "external_id": f"e{i}"},
                          format="json")
    with django_assert_max_num_queries(12):
        data = reviewer_api.get(URL).json()
    assert len(data["results"]) == 8 and all(len(o["comparisons"]) == 1 for o in data["results"])
