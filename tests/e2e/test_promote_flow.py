"""A manager moves a workflow up the autonomy ladder on its dashboard, in real Chromium."""

from __future__ import annotations

import pytest
from django.core.management import call_command
from playwright.sync_api import Page, expect

from agents.models import AuditEvent, AutonomyLevel, ReleaseNote, ReleaseNoteKind, Workflow
from tests.e2e.conftest import PageWatch, login, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]  # live_server makes it transactional

# Loose gates for the demo history, so the ordinary (non-override) path can be shown.
LOOSE_GATES = {
    "2": {"min_samples": 20, "min_approval_without_edit_rate": 0.5, "max_escalation_rate": 0.5},
    "3": {"min_samples": 20, "min_approval_without_edit_rate": 0.5, "max_escalation_rate": 0.5,
          "below_violations_per_1000_runs": 500, "max_cost_per_resolved_task": 10,
          "max_p95_execution_latency_s": 600, "min_days_at_level": 0},
}


def _assert_clean(watch: PageWatch) -> None:
    assert watch.csp_violations() == []
    assert watch.page_errors == []


def test_manager_requalifies_and_promotes_on_the_dashboard_with_demo_history(
    page: Page, watch: PageWatch, live_server
) -> None:  # type: ignore[no-untyped-def]
    # Three weeks of history through the real services (v1, then v2, which froze promotion).
    call_command("seed_demo", quiet=True)
    call_command("demo_traffic", quiet=True)
    login(page, "manager", "manager-demo-2026")
    page.goto("/workflows/")
    page.click("a[href='/workflows/support-triage/']")
    page.wait_for_url("**/workflows/support-triage/")
    expect(page.locator("h1")).to_have_text("Support triage")
    charts = page.locator("svg.chart")
    assert charts.count() >= 3
    expect(charts.first.locator("polyline, path").first).to_be_attached()
    expect(page.locator("table.metrics")).to_contain_text("Approval without edit")
    screenshot(page, "workflow")
    _assert_clean(watch)

    wf = Workflow.objects.get(slug="support-triage")
    assert wf.promotion_frozen and wf.autonomy_level == AutonomyLevel.SUGGEST
    # A frozen workflow offers requalification, not promotion.
    assert page.locator("button[data-action=promote]").count() == 0
    Workflow.objects.filter(pk=wf.pk).update(gates=LOOSE_GATES)  # admin configuration
    page.reload()
    requalify = page.locator("form:has(button[data-action=requalify])")
    requalify.locator("textarea[name=reason]").fill("v2 evidence reviewed in the weekly")
    requalify.locator("button[data-action=requalify]").click()
    page.wait_for_url("**/workflows/support-triage/")
    expect(page.locator("p.flash")).to_contain_text("requalified")

    promote = page.locator("form:has(button[data-action=promote])")
    expect(promote.locator("button[data-action=promote]")).to_have_class("primary")
    assert promote.locator("textarea[name=override_justification]").count() == 0
    promote.locator("textarea[name=reason]").fill("gates pass for three weeks")
    screenshot(page, "workflow-promote-form")
    promote.locator("button[data-action=promote]").click()
    page.wait_for_url("**/workflows/support-triage/")
    expect(page.locator("p.flash")).to_contain_text("Promoted to level")
    expect(page.locator("ul.release-notes")).to_contain_text("gates pass for three weeks")

    wf.refresh_from_db()
    assert wf.autonomy_level == AutonomyLevel.ACT_LOW_RISK
    note = ReleaseNote.objects.filter(workflow=wf).order_by("-id").first()
    assert note is not None and note.kind == ReleaseNoteKind.PROMOTE
    assert (note.old_level, note.new_level) == (2, 3)
    assert note.evidence["gates_passed"] is True
    _assert_clean(watch)


def test_failing_gates_need_a_written_override_justification(
    page: Page, watch: PageWatch, manager, workflow: Workflow
) -> None:  # type: ignore[no-untyped-def]
    login(page, manager.username)
    page.goto(f"/workflows/{workflow.slug}/")
    expect(page.locator("table.gates").first).to_contain_text("fail")
    promote = page.locator("form:has(button[data-action=promote])")
    expect(promote.locator("button[data-action=promote]")).to_have_class("danger")

    # Reason alone is refused: the page says which field is missing and nothing changes.
    promote.locator("textarea[name=reason]").fill("customer pressure")
    promote.locator("button[data-action=promote]").click()
    alert = page.locator("div.error[role=alert]")
    expect(alert).to_contain_text("override_justification")
    expect(page.locator("textarea[name=reason]").first).to_have_value("customer pressure")
    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.SUGGEST
    assert not ReleaseNote.objects.filter(workflow=workflow, kind__in=[
        ReleaseNoteKind.PROMOTE, ReleaseNoteKind.OVERRIDE]).exists()

    promote = page.locator("form:has(button[data-action=promote])")
    promote.locator("textarea[name=override_justification]").fill(
        "pilot with two named customers; reviewed daily by the support lead")
    promote.locator("button[data-action=promote]").click()
    page.wait_for_url(f"**/workflows/{workflow.slug}/")
    expect(page.locator("p.flash")).to_contain_text("Promoted to level")

    workflow.refresh_from_db()
    assert workflow.autonomy_level == AutonomyLevel.ACT_LOW_RISK
    note = ReleaseNote.objects.get(workflow=workflow, kind=ReleaseNoteKind.OVERRIDE)
    assert "pilot with two named customers" in note.reason
    assert note.actor == manager
    assert AuditEvent.objects.filter(action="workflow.override_promote").count() == 1
    _assert_clean(watch)


def test_a_reviewer_sees_the_dashboard_but_no_ladder_forms(
    page: Page, watch: PageWatch, reviewer, workflow: Workflow
) -> None:  # type: ignore[no-untyped-def]
    login(page, reviewer.username)
    page.goto(f"/workflows/{workflow.slug}/")
    expect(page.locator("h1")).to_have_text(workflow.name)
    assert page.locator("button[data-action=promote], button[data-action=demote]").count() == 0
    _assert_clean(watch)
