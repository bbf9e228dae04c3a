"""Approve -> executed latency vs a bare Celery no-op round trip.

One real Celery worker (prefork, 2 processes, the project's settings: acks_late,
prefetch 1) on a private redis-server. Measured one at a time, interleaved:

* target: a reviewer approves a pending proposal (shadow.services.review_approve, the
  web queue's path); the clock starts when the approval commits and stops at the
  execution's finished_at, written by the worker after the demo.record executor ran.
* baseline: send a no-op task; the clock stops when the task body has run (it writes
  its finish time to a Redis key).

Both waits poll at the same interval; the figures come from the recorded timestamps,
not from the polling. Target: P95(target) / P95(baseline) <= 2.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

import redis

from bench.harness import Fixture, percentile, summary_ms

TARGET = 2.0
POLL = 0.003


def _pending(fx: Fixture, n: int) -> list[int]:
    from agents.models import Agent, Workflow
    from approvals import services
    agent = Agent.objects.get(pk=fx.agent_id)
    workflow = Workflow.objects.get(pk=fx.workflow_ids[0])
    ids = []
    run = None
    for i in range(n):
        if i % 8 == 0:
            run = services.run_open(actor=agent, workflow=workflow, case_ref=f"APPROVE-{i}")
        ids.append(services.proposal_submit(
            actor=agent, run=run, tool_name="jira.create_ticket",
            arguments={"project": "SUP", "summary": f"Approve me {i}"},
            idempotency_key=f"approve-{uuid.uuid4()}").proposal.pk)
    return ids


def _approve_and_wait(proposal_id: int, reviewer: Any, timeout: float = 30,
                      stages: list[tuple[float, float]] | None = None) -> float:
    from django.db import transaction

    from approvals.models import Execution, Proposal
    from shadow.services import review_approve

    proposal = Proposal.objects.select_related("workflow", "run", "policy", "tool").get(
        pk=proposal_id)
    committed: dict[str, float] = {}
    with transaction.atomic():
        # Registered before the service's own on_commit (the publish), so it runs first:
        # the clock starts at the commit, before the task is handed to the broker.
        transaction.on_commit(lambda: committed.setdefault("at", time.time()))
        review_approve(actor=reviewer, proposal=proposal, expected_version=proposal.version,
                       expected_args_hash=proposal.args_hash)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        finished = (Execution.objects.filter(proposal_id=proposal_id)
                    .values_list("finished_at", "status", "claimed_at").first())
        if finished and finished[0] is not None:
            if finished[1] != "succeeded":
                raise RuntimeError(f"execution of {proposal_id} ended {finished[1]}")
            if stages is not None:
                # (commit -> claimed by the worker, claimed -> finished)
                stages.append((finished[2].timestamp() - committed["at"],
                               finished[0].timestamp() - finished[2].timestamp()))
            return finished[0].timestamp() - committed["at"]
        time.sleep(POLL)
    raise TimeoutError(f"execution of proposal {proposal_id} did not finish in {timeout}s")


def _noop_round_trip(app: Any, queue: str, signal: redis.Redis, signal_url: str,
                     timeout: float = 30) -> float:
    token = uuid.uuid4().hex
    started = time.time()
    app.send_task("bench.noop", args=[token, signal_url], queue=queue)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = signal.get(f"bench:noop:{token}")
        if value is not None:
            return float(value) - started
        time.sleep(POLL)
    raise TimeoutError("no-op task did not run")


def run(fx: Fixture, *, queue: str, signal_url: str, n: int = 200,
        warmup: int = 20) -> dict[str, Any]:
    from django.contrib.auth import get_user_model

    from config.celery import app

    reviewer = get_user_model().objects.get(pk=fx.reviewer_id)
    signal = redis.Redis.from_url(signal_url)
    ids = _pending(fx, n + warmup)
    for pk in ids[:warmup]:
        _noop_round_trip(app, queue, signal, signal_url)
        _approve_and_wait(pk, reviewer)
    target: list[float] = []
    baseline: list[float] = []
    stages: list[tuple[float, float]] = []
    for pk in ids[warmup:]:
        baseline.append(_noop_round_trip(app, queue, signal, signal_url))
        target.append(_approve_and_wait(pk, reviewer, stages=stages))
    ratio = percentile(target, 95) / percentile(baseline, 95)
    return {
        "benchmark": "approve_to_executed",
        "what": "approval commit -> Execution.finished_at (demo.record executor) vs send "
                "no-op task -> task body ran; real worker, real Redis",
        "config": {"samples": n, "warmup": warmup, "worker": "celery prefork -c 2",
                   "broker": "private redis-server", "poll_seconds": POLL},
        "target": summary_ms(target),
        "baseline": summary_ms(baseline),
        "target_stages": {"commit_to_claimed": summary_ms([a for a, _ in stages]),
                          "claimed_to_finished": summary_ms([b for _, b in stages])},
        "ratio": round(ratio, 3),
        "ratio_median": round(summary_ms(target)["median_ms"]
                              / summary_ms(baseline)["median_ms"], 3),
        "goal": f"P95 ratio <= {TARGET}",
        "pass": ratio <= TARGET,
    }
