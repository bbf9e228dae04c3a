"""Idempotency under a race: the unique constraint, not a lock, makes one proposal."""

from __future__ import annotations

import pytest

from agents.models import Agent, Workflow
from approvals import services
from approvals.models import Proposal
from tests.approvals.test_budgets import _race
from tests.factories import open_run, submit

N = 12


def test_racing_retries_with_one_key_make_one_proposal_and_claim_the_budget_once(
        transactional_db: None, workflow: Workflow, agent: Agent) -> None:
    run = open_run(agent, workflow)
    results = _race(N, lambda i: services.proposal_submit(
        actor=agent, run=run, tool_name="jira.create_ticket",
        arguments={"project": "SUP", "summary": "same"}, idempotency_key="one-key",
        tokens=5))
    errors = [r for r in results if isinstance(r, Exception)]
    assert not errors, errors[:3]
    assert len({r.proposal.pk for r in results}) == 1  # type: ignore[union-attr]
    assert sum(not r.replayed for r in results) == 1  # type: ignore[union-attr]
    assert Proposal.objects.filter(agent=agent, idempotency_key="one-key").count() == 1
    run.refresh_from_db()
    assert (run.tool_calls, run.tokens) == (1, 5)


def test_racing_requests_with_one_key_and_different_bodies_get_one_proposal_and_conflicts(
        transactional_db: None, workflow: Workflow, agent: Agent) -> None:
    run = open_run(agent, workflow)
    results = _race(N, lambda i: submit(run, idempotency_key="k",
                                        arguments={"project": "SUP", "summary": f"s{i}"}))
    made = [r for r in results if isinstance(r, Proposal)]
    conflicts = [r for r in results if isinstance(r, services.IdempotencyConflict)]
    assert len(made) == 1 and len(conflicts) == N - 1, results
    run.refresh_from_db()
    assert run.tool_calls == 1


@pytest.mark.django_db
def test_a_replay_inside_an_outer_transaction_returns_the_first(
        workflow: Workflow, agent: Agent) -> None:
    run = open_run(agent, workflow)
    first = submit(run, idempotency_key="x")
    again = services.proposal_submit(
        actor=agent, run=run, tool_name="jira.create_ticket",
        arguments={"project": "SUP", "summary": "Printer on fire"}, idempotency_key="x",
        tokens=100, cost=first.cost)
    assert again.replayed and again.proposal.pk == first.pk
