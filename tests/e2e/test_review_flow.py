"""A reviewer works the queue in real Chromium: approve, edit-then-approve, reject."""

from __future__ import annotations

import json

import pytest
from playwright.sync_api import Page, expect

from approvals.models import Execution, Proposal, ProposalStatus
from shadow.models import ExampleSource, LabeledExample
from tests.e2e.conftest import PageWatch, login, screenshot
from tests.factories import open_run, submit

pytestmark = [pytest.mark.e2e, pytest.mark.django_db(transaction=True)]


@pytest.fixture
def pending(agent, workflow) -> Proposal:  # type: ignore[no-untyped-def]
    run = open_run(agent, workflow, case_ref="T-4711")
    submit(run, tool="confluence.search", arguments={"query": "printer on fire"})
    return submit(run, arguments={"project": "SUP", "summary": "Printer on fire"},
                  draft_text="Hi Dana,\nwe opened SUP ticket for the printer.",
                  rationale="Customer reports hardware fault; policy says open a ticket.",
                  model_name="gpt-x", agent_version="v1")


def _open_detail(page: Page, proposal: Proposal) -> None:
    page.goto("/queue/")
    page.click(f"a[href='/queue/{proposal.pk}/']")
    page.wait_for_url(f"**/queue/{proposal.pk}/")
    expect(page.locator("#detail h1")).to_contain_text(f"#{proposal.pk}")


def _assert_clean(watch: PageWatch) -> None:
    # The pages must work under the CSP: no violation, no script error.
    assert watch.csp_violations() == []
    assert watch.page_errors == []


def test_reviewer_approves_from_the_queue(
    page: Page, watch: PageWatch, reviewer, pending: Proposal
) -> None:
    login(page, reviewer.username)
    expect(page.locator("h1")).to_have_text("Review queue")
    expect(page.locator("#queue-list")).to_contain_text("T-4711")
    # The stylesheet is served and applied under the CSP (the header bar is brand blue).
    assert page.eval_on_selector(
        "header.top", "e => getComputedStyle(e).backgroundColor") == "rgb(36, 82, 122)"
    screenshot(page, "queue")

    _open_detail(page, pending)
    expect(page.locator("pre.args").first).to_contain_text('"summary": "Printer on fire"')
    screenshot(page, "detail")

    page.click("button[data-action=approve]")
    page.wait_for_url("**/queue/")
    expect(page.locator("p.flash")).to_have_text(f"Approved #{pending.pk}.")
    screenshot(page, "after-approve")

    pending.refresh_from_db()
    assert pending.status == ProposalStatus.APPROVED
    assert pending.decided_by == reviewer
    assert Execution.objects.filter(proposal=pending).count() == 1
    _assert_clean(watch)


def test_reviewer_edits_then_approves(
    page: Page, watch: PageWatch, reviewer, pending: Proposal
) -> None:
    login(page, reviewer.username)
    _open_detail(page, pending)
    page.click("details.edit summary")
    textarea = page.locator("details.edit textarea[name=arguments]")
    expect(textarea).to_be_visible()
    edited = {"project": "SUP", "summary": "Printer on fire (floor 3)", "priority": "high"}
    textarea.fill(json.dumps(edited, indent=2))
    page.select_option("details.edit select[name=failure_category]", "wrong_params")
    page.fill("details.edit input[name=note]", "floor and priority were missing")
    screenshot(page, "edit-form")

    page.click("button[data-action=edit]")
    page.wait_for_url("**/queue/")
    expect(page.locator("p.flash")).to_have_text(f"Edited and approved #{pending.pk}.")

    pending.refresh_from_db()
    assert pending.status == ProposalStatus.APPROVED
    assert pending.final_arguments == edited
    assert pending.arguments == {"project": "SUP", "summary": "Printer on fire"}
    example = LabeledExample.objects.get(proposal=pending)
    assert example.source == ExampleSource.EDIT
    assert example.failure_category == "wrong_params"
    assert Execution.objects.filter(proposal=pending).count() == 1
    _assert_clean(watch)


def test_reviewer_rejects_with_a_reason(
    page: Page, watch: PageWatch, reviewer, pending: Proposal
) -> None:
    login(page, reviewer.username)
    _open_detail(page, pending)
    page.click("details.reject summary")
    page.select_option("details.reject select[name=reason_code]", "factual")
    page.fill("details.reject input[name=note]", "wrong customer")
    page.click("button[data-action=reject]")
    page.wait_for_url("**/queue/")
    expect(page.locator("p.flash")).to_have_text(f"Rejected #{pending.pk}.")

    pending.refresh_from_db()
    assert pending.status == ProposalStatus.REJECTED
    assert pending.reject_reason == "factual"
    assert not Execution.objects.filter(proposal=pending).exists()
    assert LabeledExample.objects.get(proposal=pending).source == ExampleSource.REJECTION
    _assert_clean(watch)


def test_invalid_json_edit_shows_the_error_inline_and_changes_nothing(
    page: Page, watch: PageWatch, reviewer, pending: Proposal
) -> None:
    login(page, reviewer.username)
    _open_detail(page, pending)
    page.click("details.edit summary")
    page.locator("details.edit textarea[name=arguments]").fill('{"project": "SUP", "summary": ')
    page.click("button[data-action=edit]")

    # htmx swaps the 400 error partial into #detail (static/js/app.js); no navigation.
    alert = page.locator("#detail p.error[role=alert]")
    expect(alert).to_contain_text("arguments: not valid JSON")
    assert page.url.endswith(f"/queue/{pending.pk}/")
    assert page.locator("#detail #detail").count() == 0  # swapped inside, not nested pages
    screenshot(page, "edit-error")

    before_version = pending.version
    pending.refresh_from_db()
    assert pending.status == ProposalStatus.PENDING
    assert pending.final_arguments is None and pending.version == before_version
    assert not Execution.objects.filter(proposal=pending).exists()
    assert not LabeledExample.objects.filter(proposal=pending).exists()
    # The page still works after the error: the reviewer can approve right away.
    page.click("button[data-action=approve]")
    page.wait_for_url("**/queue/")
    pending.refresh_from_db()
    assert pending.status == ProposalStatus.APPROVED
    assert [m for m in watch.console if "Content Security Policy" in m] == []
