"""Untrusted agent output renders inert in real Chromium.

An injection corpus is submitted through the agent REST API in every field an agent
controls (arguments keys and values, draft_text, rationale, model, agent_version, case_ref,
and the tool name of unknown tools), then the queue (every tab, and its htmx filter swap)
and each detail page (plus the htmx error swap of the edit form) are loaded in Debian's
chromium. Nothing may run: no dialog, no CSP violation, no request to a payload URL,
window.__pwned stays undefined; and the payload must be visible as plain text.
"""

from __future__ import annotations

import json
from itertools import count

import pytest
from playwright.sync_api import Page, expect
from rest_framework.test import APIClient

from approvals.models import Proposal, ProposalStatus
from tests.e2e.conftest import PageWatch, login, screenshot

pytestmark = [pytest.mark.e2e, pytest.mark.django_db]  # live_server makes it transactional

PWN = "window.__pwned=1"
CORPUS: list[str] = [
    f"<script>{PWN};alert('script')</script>",
    f'<img src=x onerror="{PWN};alert(\'img\')">',
    f"<svg onload=\"{PWN};alert('svg')\"><circle r=5 /></svg>",
    '<div hx-get="/pwned-hx-get" hx-trigger="load">hx-get</div>',
    '<button hx-post="/pwned-hx-post" hx-trigger="load" hx-target="body">hx-post</button>',
    f'<p hx-on:htmx:load="{PWN}" hx-get="/pwned-hx-on" hx-trigger="load">hx-on</p>',
    '" hx-get="/pwned-attr-break" hx-trigger="load" x="',
    f"' autofocus onfocus='{PWN}' x='",
    f"javascript:{PWN};alert('js-url')",
    f'<a href="javascript:{PWN}" id="pwn-link">click me</a>',
    f"\"></textarea><script>{PWN}</script><textarea>",
    f"</pre><script>{PWN}</script><pre>",
    f"</title><script>{PWN}</script>",
    f"--><script>{PWN}</script><!--",
    f'<noscript><p title="</noscript><img src=x onerror={PWN}>">',
    "{{ request.user.password }} {% csrf_token %} {% debug %} {{ settings.SECRET_KEY }}",
    "${7*7} #{7*7} <%= 7*7 %>",
    "\u202egnp.exe\u202c invoice \u200b\u200d\ufeff zero-width and RTL override",
    '<meta http-equiv="refresh" content="0;url=/pwned-meta-refresh">',
    '<base href="/pwned-base/"><link rel="stylesheet" href="/pwned-css">',
    '<iframe src="/pwned-iframe"></iframe><object data="/pwned-object"></object>',
    '<form action="/pwned-form"><input type="submit" value="go"></form>',
    "\\u003cscript\\u003ewindow.__pwned=1\\u003c/script\\u003e",
    "A" * 19_000 + "<script>" + PWN + "</script>",
]
# A payload PostgreSQL cannot store: refused at the API with a 400, never rendered.
NUL_PAYLOAD = "before\x00<script>window.__pwned=1</script>"

_keys = count()


def _post(client: APIClient, path: str, body: dict) -> dict:
    response = client.post(path, body, format="json", HTTP_IDEMPOTENCY_KEY=f"inj-{next(_keys)}")
    assert response.status_code in (200, 201), (path, response.status_code, response.content[:300])
    return response.json()


@pytest.fixture
def injected(agent_client: APIClient, workflow) -> list[tuple[str, int]]:  # type: ignore[no-untyped-def]
    """One run per payload: a reviewable proposal carrying the payload in every field, and
    (for payloads that fit in a tool name) a proposal for an unknown tool named after it."""
    made: list[tuple[str, int]] = []
    for i, payload in enumerate(CORPUS):
        short = payload[:100]
        run = _post(agent_client, "/api/v1/runs/", {
            "workflow": workflow.slug, "case_ref": payload[:200], "agent_version": short})
        proposal = _post(agent_client, "/api/v1/proposals/", {
            "run": run["id"], "tool": "confluence.search",
            "arguments": {"query": payload, "url": payload, payload[:300]: [payload], "n": i},
            "draft_text": payload, "rationale": payload, "model": short,
            "agent_version": short, "tokens": 10, "cost": "0.001"})
        assert proposal["status"] == ProposalStatus.PENDING
        made.append((payload, proposal["id"]))
        unknown = _post(agent_client, "/api/v1/proposals/", {
            "run": run["id"], "tool": short, "arguments": {"q": payload[:200]}})
        assert unknown["decision"] == "refuse"
        made.append((short, unknown["id"]))
    return made


def _assert_inert(page: Page, watch: PageWatch, where: str) -> None:
    assert watch.dialogs == [], (where, watch.dialogs)
    assert watch.csp_violations() == [], (where, watch.csp_violations())
    assert watch.page_errors == [], (where, watch.page_errors)
    assert [r for r in watch.requests if "pwned" in r] == [], where
    assert page.evaluate("typeof window.__pwned") == "undefined", where
    # Nothing from the corpus became an element.
    assert page.locator("#pwn-link, [hx-trigger=load], svg circle, iframe, object, "
                        "main script, main img, main meta, main base").count() == 0, where


def test_the_api_refuses_a_nul_payload_before_anything_is_stored(
    agent_client: APIClient, workflow
) -> None:  # type: ignore[no-untyped-def]
    run = _post(agent_client, "/api/v1/runs/", {"workflow": workflow.slug, "case_ref": "nul"})
    for field, value in [("arguments", {"q": NUL_PAYLOAD}), ("draft_text", NUL_PAYLOAD),
                         ("rationale", NUL_PAYLOAD), ("tool", NUL_PAYLOAD)]:
        body = {"run": run["id"], "tool": "confluence.search", "arguments": {}, field: value}
        response = agent_client.post("/api/v1/proposals/", body, format="json",
                                     HTTP_IDEMPOTENCY_KEY=f"nul-{field}")
        assert response.status_code == 400 and field in response.json()
    assert not Proposal.objects.exists()


def test_injection_corpus_renders_inert_in_the_queue(
    page: Page, watch: PageWatch, reviewer, injected: list[tuple[str, int]]
) -> None:  # type: ignore[no-untyped-def]
    login(page, reviewer.username)
    for status in ProposalStatus.values:
        page.goto(f"/queue/?status={status}")
        expect(page.locator("h1")).to_have_text("Review queue")
        _assert_inert(page, watch, f"queue {status}")
    page.goto("/queue/")
    # A 19,000-character unbroken case_ref wraps instead of widening the page.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1280
    screenshot(page, "injection-queue")
    listed = page.locator("#queue-list").inner_text()
    assert "<script>window.__pwned=1</script>" in listed  # case_ref shown as text
    assert '<div hx-get="/pwned-hx-get" hx-trigger="load">hx-get</div>' in listed

    # The htmx filter swap renders the same rows through a partial: still inert.
    with page.expect_response(lambda r: "/queue/?" in r.url and "workflow=" in r.url):
        page.select_option("select[name=workflow]", "support-triage")
    expect(page.locator("#queue-list")).to_contain_text("hx-get")
    _assert_inert(page, watch, "queue htmx swap")


def test_injection_corpus_renders_inert_as_text_on_every_detail_page(
    page: Page, watch: PageWatch, reviewer, injected: list[tuple[str, int]]
) -> None:  # type: ignore[no-untyped-def]
    login(page, reviewer.username)
    for payload, pk in injected:
        page.goto(f"/queue/{pk}/")
        expect(page.locator("#detail h1")).to_contain_text(f"#{pk}")
        _assert_inert(page, watch, f"detail #{pk} {payload[:40]!r}")
        proposal = Proposal.objects.get(pk=pk)
        assert page.locator("#detail h1 code").inner_text() == proposal.tool_name
        assert page.title().startswith(f"#{pk} ")
        if proposal.rationale:
            # Visible exactly as the agent wrote it, in the rationale and the draft.
            assert page.locator("p.rationale").inner_text() == payload.strip()
            assert page.locator("div.draft").first.inner_text() == payload.strip()
            # The edit form's textarea holds the JSON with the payload inside, unbroken.
            shown = json.loads(page.locator("textarea[name=arguments]").input_value())
            assert shown["query"] == payload
            assert page.locator("textarea[name=draft_text]").input_value() == payload
            assert page.locator("textarea").count() == 2
        assert page.evaluate("document.documentElement.scrollWidth") <= 1280, pk
    page.goto(f"/queue/{injected[0][1]}/")
    screenshot(page, "injection-detail")


def test_htmx_error_swap_of_the_detail_partial_stays_inert(
    page: Page, watch: PageWatch, reviewer, injected: list[tuple[str, int]]
) -> None:  # type: ignore[no-untyped-def]
    """app.js assigns 4xx bodies with innerHTML, where <img onerror> would run if the
    partial let markup through: escaping is what keeps it text."""
    login(page, reviewer.username)
    for payload, pk in injected[:12:2]:
        page.goto(f"/queue/{pk}/")
        page.click("details.edit summary")
        page.locator("textarea[name=arguments]").fill("{not json")
        with page.expect_response(lambda r, pk=pk: r.url.endswith(f"/queue/{pk}/edit/")) as info:
            page.click("button[data-action=edit]")
        assert info.value.status == 400
        expect(page.locator("#detail p.error")).to_contain_text("not valid JSON")
        assert page.locator("p.rationale").inner_text() == payload.strip()
        _assert_inert(page, watch, f"error swap #{pk}")
        assert Proposal.objects.get(pk=pk).status == ProposalStatus.PENDING


def test_approving_an_injected_proposal_keeps_the_payload_inert_afterwards(
    page: Page, watch: PageWatch, reviewer, injected: list[tuple[str, int]]
) -> None:  # type: ignore[no-untyped-def]
    payload, pk = injected[2]  # the reviewable proposal carrying <img onerror>
    login(page, reviewer.username)
    page.goto(f"/queue/{pk}/")
    page.click("details.edit summary")
    page.locator("textarea[name=arguments]").fill(json.dumps({"query": payload}))
    page.locator("textarea[name=draft_text]").fill(payload + "\n" + CORPUS[0])
    page.click("button[data-action=edit]")
    page.wait_for_url("**/queue/")
    page.goto(f"/queue/{pk}/")
    _assert_inert(page, watch, "approved detail")
    assert payload in page.locator("#detail").inner_text()
    assert Proposal.objects.get(pk=pk).final_arguments == {"query": payload}
