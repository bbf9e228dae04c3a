"""The run ledger's budgets under real concurrency: one guarded UPDATE per claim, so
50 parallel proposals against a budget of 10 give exactly 10 accepted."""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from decimal import Decimal

import pytest
from django.db import connection
from rest_framework.test import APIClient

from agents.models import Workflow
from approvals import services
from approvals.models import Execution, Proposal, ProposalStatus, Run, Violation
from tests.factories import open_run, publish, submit

N = 50


def _policy(limits: str, fallback: str = "reject") -> str:
    return f"""
{limits}
allowed_tools: [jira.create_ticket]
fallback: {{on_timeout: human_handoff, on_policy_violation: human_handoff,
           on_budget_exceeded: {fallback}}}
"""


def _race(n: int, fn: Callable[[int], object]) -> list[object]:
    """Run fn(i) in n threads released together; each thread has its own connection."""
    barrier = threading.Barrier(n)
    results: list[object] = [None] * n

    def work(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = fn(i)
        except Exception as exc:  # noqa: BLE001 - reported to the test below
            results[i] = exc
        finally:
            connection.close()

    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    return results


def _submit_many(run: Run, **kwargs: object) -> list[Proposal]:
    results = _race(N, lambda i: submit(run, idempotency_key=f"race-{i}", **kwargs))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    return results  # type: ignore[return-value]


def _tally(proposals: list[Proposal]) -> Counter:
    return Counter(p.status for p in proposals)


def test_50_concurrent_proposals_against_max_tool_calls_10_accept_exactly_10(
        transactional_db: None, workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("max_tool_calls: 10"))
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=4)
    run = open_run(agent, workflow)
    proposals = _submit_many(run)
    assert _tally(proposals) == {ProposalStatus.APPROVED: 10, ProposalStatus.REFUSED: 40}
    refused = [p for p in proposals if p.status == ProposalStatus.REFUSED]
    assert all(p.violation == Violation.VIOLATION and p.fallback_applied == "reject"
               for p in refused)
    assert all(p.decision_reasons == ["budget exceeded: max_tool_calls 10 reached",
                                      "fallback on_budget_exceeded: reject"] for p in refused)
    run.refresh_from_db()
    assert run.tool_calls == 10 and run.tokens == 10 * 100
    assert Execution.objects.count() == 10


def test_concurrent_proposals_never_exceed_the_token_budget(
        transactional_db: None, workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("max_total_tokens: 1000", fallback="human_handoff"))
    run = open_run(agent, workflow)
    proposals = _submit_many(run, tokens=100)
    assert _tally(proposals) == {ProposalStatus.PENDING: 10, ProposalStatus.HANDED_OFF: 40}
    handed = [p for p in proposals if p.status == ProposalStatus.HANDED_OFF]
    assert {p.decision_reasons[0] for p in handed} == {
        "budget exceeded: max_total_tokens 1000 would be exceeded"}
    run.refresh_from_db()
    assert (run.tool_calls, run.tokens) == (10, 1000)


def test_concurrent_proposals_never_exceed_the_cost_budget(
        transactional_db: None, workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("max_cost_usd: 0.50", fallback="escalate"))
    run = open_run(agent, workflow)
    proposals = _submit_many(run, cost=Decimal("0.05"))
    refused = [p for p in proposals if p.violation == Violation.VIOLATION]
    assert len(refused) == 40 and all(p.fallback_applied == "escalate" for p in refused)
    # Escalated: still in the queue for a human, but counted as a refusal.
    assert all(p.status == ProposalStatus.PENDING and p.decision == "refuse" for p in refused)
    assert {p.decision_reasons[0] for p in refused} == {
        "budget exceeded: max_cost_usd 0.5 would be exceeded"}
    run.refresh_from_db()
    assert (run.tool_calls, run.cost) == (10, Decimal("0.50"))


def test_a_single_call_bigger_than_the_whole_budget_is_refused(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("max_total_tokens: 1000"))
    run = open_run(agent, workflow)
    p = submit(run, tokens=1001)
    assert p.status == ProposalStatus.REFUSED
    assert p.decision_reasons[0] == "budget exceeded: max_total_tokens 1000 would be exceeded"
    run.refresh_from_db()
    assert (run.tool_calls, run.tokens) == (0, 0)


def test_a_budget_of_zero_refuses_the_first_call(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("max_tool_calls: 0"))
    assert submit(open_run(agent, workflow)).status == ProposalStatus.REFUSED


def test_a_replayed_proposal_does_not_claim_the_budget_twice(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    publish(workflow, _policy("max_tool_calls: 1"))
    run = open_run(agent, workflow)
    first = submit(run, idempotency_key="same")
    again = submit(run, idempotency_key="same")
    assert first.pk == again.pk and first.status == ProposalStatus.PENDING
    run.refresh_from_db()
    assert run.tool_calls == 1


def test_proposing_into_a_closed_run_is_a_conflict(workflow: Workflow, agent) -> None:  # type: ignore[no-untyped-def]
    run = open_run(agent, workflow)
    services.run_close(actor=agent, run=run, outcome="resolved")
    with pytest.raises(services.ConflictError, match="closed"):
        submit(run)
    with pytest.raises(services.ConflictError, match="closed"):
        submit(run, "github.merge", {"pr": 1})  # refused path checks the run too
    assert Proposal.objects.count() == 0


def test_api_closed_run_gives_409_and_closing_twice_gives_409(
        agent_client: APIClient, workflow: Workflow) -> None:
    run = agent_client.post("/api/v1/runs/", {"workflow": workflow.slug, "case_ref": "T-1"},
                            format="json").json()
    assert agent_client.post(f"/api/v1/runs/{run['id']}/close/", {"outcome": "done"},
                             format="json").status_code == 200
    again = agent_client.post(f"/api/v1/runs/{run['id']}/close/", {}, format="json")
    assert again.status_code == 409 and "already closed" in again.json()["detail"]
    r = agent_client.post("/api/v1/proposals/", {
        "run": run["id"], "tool": "jira.create_ticket",
        "arguments": {"project": "SUP", "summary": "x"}}, format="json",
        HTTP_IDEMPOTENCY_KEY="k1")
    assert r.status_code == 409 and r.json() == {"detail": "run is closed"}


def test_api_run_counters_show_the_ledger(agent_client: APIClient, workflow: Workflow) -> None:
    run = agent_client.post("/api/v1/runs/", {"workflow": workflow.slug, "case_ref": "T-2"},
                            format="json").json()
    assert (run["tool_calls"], run["tokens"], run["cost"]) == (0, 0, "0.000000")
    agent_client.post("/api/v1/proposals/", {
        "run": run["id"], "tool": "jira.create_ticket", "tokens": 700, "cost": "0.25",
        "arguments": {"project": "SUP", "summary": "x"}}, format="json",
        HTTP_IDEMPOTENCY_KEY="k2")
    after = agent_client.get(f"/api/v1/runs/{run['id']}/").json()
    assert (after["tool_calls"], after["tokens"], after["cost"]) == (1, 700, "0.250000")


@pytest.mark.parametrize(("body", "field"), [
    ({"case_ref": "T"}, "workflow"),
    ({"workflow": "support-triage"}, "case_ref"),
    ({"workflow": "nope", "case_ref": "T"}, "workflow"),
    ({"workflow": "support-triage", "case_ref": "x" * 201}, "case_ref"),
])
def test_api_bad_run_input_names_the_field(agent_client: APIClient, workflow: Workflow,
                                           body: dict, field: str) -> None:
    r = agent_client.post("/api/v1/runs/", body, format="json")
    assert r.status_code == 400 and field in r.json()
