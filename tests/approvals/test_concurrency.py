"""Two reviewers can never both decide one item: 16 threads, one winner, 15 conflicts.

Real PostgreSQL, one connection per thread, all released together by a barrier so
their transactions genuinely overlap on the proposal's row lock.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import pytest
from django.db import connection
from django.test import Client

from agents.models import AuditEvent
from approvals import services
from approvals.models import Execution, Proposal, ProposalStatus
from shadow import services as review
from tests.factories import open_run, submit

THREADS = 16
DECISION_ACTIONS = ["proposal.approve", "proposal.edit_approve", "proposal.reject"]
EDITED = {"project": "SUP", "summary": "Printer on fire (edited)"}


def _race(work: Callable[[int], Any]) -> list[Any]:
    """Run work(i) in THREADS threads released at once; return results or exceptions."""
    barrier = threading.Barrier(THREADS)
    results: list[Any] = [None] * THREADS

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[i] = work(i)
        except BaseException as exc:  # noqa: BLE001 - inspected by the test
            results[i] = exc
        finally:
            # Each thread opened its own connection; leaving it open would block the
            # test database's teardown.
            connection.close()

    threads = [threading.Thread(target=run, args=(i,)) for i in range(THREADS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a thread hung"
    return results


@pytest.fixture
def pending(transactional_db: None, agent, workflow) -> Proposal:  # type: ignore[no-untyped-def]
    services.break_glass_get()  # created up front so no thread races its get_or_create
    return submit(open_run(agent, workflow))


def _decision_events(proposal: Proposal) -> int:
    return AuditEvent.objects.filter(
        object_type="approvals.proposal", object_id=str(proposal.pk),
        action__in=DECISION_ACTIONS).count()


def _assert_one_winner(proposal: Proposal) -> None:
    proposal.refresh_from_db()
    assert proposal.status in (ProposalStatus.APPROVED, ProposalStatus.REJECTED)
    assert proposal.version == 2
    assert _decision_events(proposal) == 1
    executions = Execution.objects.filter(proposal=proposal).count()
    assert executions == (1 if proposal.status == ProposalStatus.APPROVED else 0)


def test_sixteen_concurrent_decisions_have_exactly_one_winner(
    pending: Proposal, reviewer
) -> None:
    version = pending.version

    def decide(i: int) -> Proposal:
        p = Proposal.objects.select_related("workflow", "run", "policy", "tool").get(
            pk=pending.pk)
        if i % 3 == 0:
            return review.review_approve(actor=reviewer, proposal=p, expected_version=version,
                                         expected_args_hash=p.args_hash)
        if i % 3 == 1:
            return review.review_approve(actor=reviewer, proposal=p, expected_version=version,
                                         expected_args_hash=p.args_hash,
                                         edited_arguments=EDITED,
                                         failure_category="wrong_params")
        return review.review_reject(actor=reviewer, proposal=p, expected_version=version,
                                    reason_code="tone")

    results = _race(decide)
    winners = [r for r in results if isinstance(r, Proposal)]
    conflicts = [r for r in results if isinstance(r, services.ConflictError)]
    assert len(winners) == 1, results
    assert len(conflicts) == THREADS - 1, results
    _assert_one_winner(pending)


def test_sixteen_concurrent_posts_get_one_success_and_fifteen_409s(
    pending: Proposal, reviewer
) -> None:
    clients = []
    for _ in range(THREADS):
        client = Client()
        client.force_login(reviewer)
        clients.append(client)
    forms: list[tuple[str, dict[str, str]]] = [
        ("approve", {"args_hash": pending.args_hash}),
        ("edit", {"args_hash": pending.args_hash,
                  "arguments": '{"project": "SUP", "summary": "edited"}',
                  "failure_category": "wrong_params"}),
        ("reject", {"reason_code": "factual"}),
    ]

    def post(i: int) -> tuple[int, str]:
        action, form = forms[i % 3]
        response = clients[i].post(f"/queue/{pending.pk}/{action}/",
                                    {"version": str(pending.version), **form})
        return response.status_code, response.content.decode()

    results = _race(post)
    assert all(isinstance(r, tuple) for r in results), results
    codes = sorted(code for code, _ in results)
    assert codes.count(302) == 1, codes
    assert codes.count(409) == THREADS - 1, codes
    for code, body in results:
        if code == 409:
            # The page says why: someone else decided it first.
            assert "proposal is approved, not pending" in body \
                or "proposal is rejected, not pending" in body, body[:500]
    _assert_one_winner(pending)


def test_approve_with_a_superseded_args_hash_is_refused(
    pending: Proposal, reviewer
) -> None:
    with pytest.raises(services.ConflictError, match="superseded"):
        review.review_approve(actor=reviewer, proposal=pending,
                              expected_version=pending.version,
                              expected_args_hash="0" * 64)
    client = Client()
    client.force_login(reviewer)
    response = client.post(f"/queue/{pending.pk}/approve/",
                           {"version": pending.version, "args_hash": "f" * 64})
    assert response.status_code == 409
    assert b"superseded" in response.content
    pending.refresh_from_db()
    assert pending.status == ProposalStatus.PENDING and pending.version == 1
    assert not Execution.objects.filter(proposal=pending).exists()
    assert _decision_events(pending) == 0
