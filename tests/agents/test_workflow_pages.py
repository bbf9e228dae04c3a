"""Workflow list and dashboard pages: access, forms, errors, release notes, charts."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from agents.models import Agent, AutonomyLevel, ReleaseNote, ReleaseNoteKind, Workflow
from approvals import services
from shadow import services as shadow_services
from tests.factories import open_run, submit

pytestmark = pytest.mark.django_db


def _client(user) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(user)
    return client


@pytest.fixture
def draft_workflow(workflow: Workflow, agent: Agent, reviewer) -> Workflow:  # type: ignore[no-untyped-def]
    for i in range(2):
        p = submit(open_run(agent, workflow, case_ref=f"D-{i}"))
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version)
    submit(open_run(agent, workflow, case_ref="D-pending"))
    Workflow.objects.filter(pk=workflow.pk).update(
        autonomy_level=AutonomyLevel.DRAFT, level_changed_at=timezone.now() - timedelta(days=20),
        gates={"2": {"min_samples": 2, "min_days_at_level": 0}})
    workflow.refresh_from_db()
    return workflow


def _url(name: str, wf: Workflow) -> str:
    return reverse(f"agents:{name}", args=[wf.slug])


def test_list_shows_level_and_pending_count(draft_workflow: Workflow, reviewer) -> None:  # type: ignore[no-untyped-def]
    response = _client(reviewer).get(reverse("agents:workflows"))
    assert response.status_code == 200
    body = response.content.decode()
    assert "1 draft" in body and _url("workflow_detail", draft_workflow) in body
    assert response.context["workflows"][0].pending == 1


def test_reviewer_sees_the_dashboard_with_gates_and_charts(draft_workflow: Workflow,
                                                           reviewer) -> None:  # type: ignore[no-untyped-def]
    response = _client(reviewer).get(_url("workflow_detail", draft_workflow) + "?days=7")
    assert response.status_code == 200
    body = response.content.decode()
    assert "Gates to 2 suggest" in body
    assert body.count('<svg class="chart"') == 3
    assert "<polyline" in body or "<circle" in body
    assert 'data-action="promote"' not in body  # forms are for managers
    assert "style=" not in body  # CSP: no inline styles
    assert response.context["gates_pass"] is True


def test_other_reviewer_gets_404(draft_workflow: Workflow, other_reviewer) -> None:  # type: ignore[no-untyped-def]
    client = _client(other_reviewer)
    assert client.get(_url("workflow_detail", draft_workflow)).status_code == 404
    assert client.post(_url("workflow_promote", draft_workflow), {"reason": "x"}).status_code == 404


def test_unknown_workflow_is_404(manager) -> None:  # type: ignore[no-untyped-def]
    client = _client(manager)
    assert client.get("/workflows/nope/").status_code == 404
    for name in ("promote", "demote", "requalify"):
        assert client.post(f"/workflows/nope/{name}/", {"reason": "x"}).status_code == 404


def test_get_on_post_only_endpoints_is_405(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    client = _client(manager)
    for name in ("workflow_promote", "workflow_demote", "workflow_requalify"):
        assert client.get(_url(name, draft_workflow)).status_code == 405
    assert client.post(_url("workflow_detail", draft_workflow)).status_code == 405


def test_reviewer_post_is_403(draft_workflow: Workflow, reviewer) -> None:  # type: ignore[no-untyped-def]
    client = _client(reviewer)
    for name in ("workflow_promote", "workflow_demote", "workflow_requalify"):
        assert client.post(_url(name, draft_workflow), {"reason": "x"}).status_code == 403
    draft_workflow.refresh_from_db()
    assert draft_workflow.autonomy_level == AutonomyLevel.DRAFT


def test_anonymous_is_sent_to_login(draft_workflow: Workflow) -> None:
    response = Client().get(_url("workflow_detail", draft_workflow))
    assert response.status_code == 302 and "/accounts/login/" in response["Location"]


def test_manager_promotes_from_the_page(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    client = _client(manager)
    page = client.get(_url("workflow_detail", draft_workflow)).content.decode()
    assert 'data-action="promote"' in page
    response = client.post(_url("workflow_promote", draft_workflow),
                           {"reason": "two clean weeks"}, follow=True)
    assert response.status_code == 200
    draft_workflow.refresh_from_db()
    assert draft_workflow.autonomy_level == AutonomyLevel.SUGGEST
    body = response.content.decode()
    assert "two clean weeks" in body  # listed in the release notes
    assert ReleaseNote.objects.filter(kind=ReleaseNoteKind.PROMOTE).count() == 1


def test_promote_without_reason_is_400_naming_the_field(draft_workflow: Workflow,
                                                        manager) -> None:  # type: ignore[no-untyped-def]
    response = _client(manager).post(_url("workflow_promote", draft_workflow), {"reason": ""})
    assert response.status_code == 400
    assert "reason" in response.context["errors"]
    draft_workflow.refresh_from_db()
    assert draft_workflow.autonomy_level == AutonomyLevel.DRAFT


def test_failing_gates_need_an_override_justification(draft_workflow: Workflow,
                                                      manager) -> None:  # type: ignore[no-untyped-def]
    Workflow.objects.filter(pk=draft_workflow.pk).update(gates={})
    client = _client(manager)
    page = client.get(_url("workflow_detail", draft_workflow)).content.decode()
    assert "Override and promote" in page and 'class="fail"' in page
    response = client.post(_url("workflow_promote", draft_workflow), {"reason": "go"})
    assert response.status_code == 400
    assert "override_justification" in response.context["errors"]
    response = client.post(_url("workflow_promote", draft_workflow),
                           {"reason": "go", "override_justification": "pilot signed off"})
    assert response.status_code == 302
    note = ReleaseNote.objects.get(kind=ReleaseNoteKind.OVERRIDE)
    assert note.evidence["override_justification"] == "pilot signed off"


def test_manager_demotes_with_a_reason(draft_workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    client = _client(manager)
    assert client.post(_url("workflow_demote", draft_workflow), {"reason": ""}).status_code == 400
    response = client.post(_url("workflow_demote", draft_workflow), {"reason": "bad week"})
    assert response.status_code == 302
    draft_workflow.refresh_from_db()
    assert draft_workflow.autonomy_level == AutonomyLevel.SHADOW


def test_frozen_workflow_offers_requalify_and_refuses_promote(
        draft_workflow: Workflow, agent: Agent, manager, reviewer) -> None:  # type: ignore[no-untyped-def]
    Workflow.objects.filter(pk=draft_workflow.pk).update(
        autonomy_level=AutonomyLevel.SUGGEST,
        gates={"2": {"min_samples": 2, "min_days_at_level": 0}})
    runs = [services.run_open(actor=agent, workflow=draft_workflow, case_ref=f"N-{i}",
                              agent_version="v2") for i in range(2)]
    client = _client(manager)
    page = client.get(_url("workflow_detail", draft_workflow)).content.decode()
    assert "promotion frozen" in page and 'data-action="requalify"' in page
    assert 'data-action="promote"' not in page
    response = client.post(_url("workflow_promote", draft_workflow),
                           {"reason": "go", "override_justification": "x"})
    assert response.status_code == 400 and "promotion_frozen" in response.context["errors"]
    response = client.post(_url("workflow_requalify", draft_workflow), {"reason": "v2"})
    assert response.status_code == 400 and "gates" in response.context["errors"]
    for run in runs:
        p = submit(run)
        shadow_services.review_approve(actor=reviewer, proposal=p, expected_version=p.version)
    response = client.post(_url("workflow_requalify", draft_workflow), {"reason": "v2 passes"})
    assert response.status_code == 302
    draft_workflow.refresh_from_db()
    assert not draft_workflow.promotion_frozen and draft_workflow.current_agent_version == "v2"


def test_bad_window_or_version_is_400_naming_the_field(draft_workflow: Workflow,
                                                       reviewer) -> None:  # type: ignore[no-untyped-def]
    client = _client(reviewer)
    response = client.get(_url("workflow_detail", draft_workflow) + "?days=12")
    assert response.status_code == 400 and "days" in response.context["errors"]
    response = client.get(_url("workflow_detail", draft_workflow) + "?version=v9")
    assert response.status_code == 400 and "version" in response.context["errors"]
    assert client.get(_url("workflow_detail", draft_workflow) + "?days=90&version=v1"
                      ).status_code == 200


def test_agent_content_in_release_notes_is_escaped(draft_workflow: Workflow, agent: Agent) -> None:
    services.run_open(actor=agent, workflow=draft_workflow, case_ref="X",
                      agent_version="<script>alert(1)</script>")
    from django.contrib.auth import get_user_model
    admin = get_user_model().objects.create_superuser("boss", password="pw-for-tests-123")
    body = _client(admin).get(_url("workflow_detail", draft_workflow)).content.decode()
    assert "<script>alert(1)</script>" not in body
    assert "&lt;script&gt;" in body
