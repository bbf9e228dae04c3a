"""Proposal ingest throughput vs a bare DRF endpoint doing one INSERT.

Both are POSTed the same JSON body by the same client threads against the same
gunicorn server (2 sync workers), interleaved in rounds so drift hits both alike.
Target: ingest throughput / bare throughput >= 0.5. The bare endpoint uses the
project's DRF defaults (agent bearer token + IsAuthenticated: one SELECT then one
INSERT); an unauthenticated variant is reported too, for reference.
"""

from __future__ import annotations

import http.client
import itertools
import json
import threading
import time
from typing import Any

from bench.harness import Fixture, GunicornServer, summary_ms

TARGET = 0.5


def _post(port: int, path: str, body: bytes, headers: dict[str, str]) -> tuple[int, float]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        conn.request("POST", path, body=body, headers=headers)
        response = conn.getresponse()
        response.read()
        return response.status, time.perf_counter() - started
    finally:
        conn.close()


def load(port: int, path: str, requests_: list[tuple[bytes, dict[str, str]]],
         threads: int) -> dict[str, Any]:
    """Send every request, `threads` at a time; return throughput and latencies."""
    cursor = itertools.count()
    statuses: dict[int, int] = {}
    latencies: list[float] = []
    lock = threading.Lock()

    def client() -> None:
        while True:
            i = next(cursor)
            if i >= len(requests_):
                return
            body, headers = requests_[i]
            status, took = _post(port, path, body, headers)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
                latencies.append(took)

    pool = [threading.Thread(target=client) for _ in range(threads)]
    started = time.perf_counter()
    for t in pool:
        t.start()
    for t in pool:
        t.join()
    elapsed = time.perf_counter() - started
    return {"requests": len(requests_), "seconds": round(elapsed, 3),
            "per_second": round(len(requests_) / elapsed, 1), "statuses": statuses,
            "latency": summary_ms(latencies)}


def _open_runs(fx: Fixture, count: int) -> list[int]:
    from agents.models import Agent, Workflow
    from approvals import services
    agent = Agent.objects.get(pk=fx.agent_id)
    workflow = Workflow.objects.get(pk=fx.workflow_ids[0])
    return [services.run_open(actor=agent, workflow=workflow, case_ref=f"INGEST-{i}",
                              agent_version="v1").pk for i in range(count)]


_seq = itertools.count()


def _bodies(fx: Fixture, n: int) -> list[tuple[bytes, dict[str, str]]]:
    # The default policy allows 8 tool calls per run: a fresh run every 8 proposals.
    runs = _open_runs(fx, -(-n // 8))
    out = []
    for i in range(n):
        k = next(_seq)
        body = json.dumps({
            "run": runs[i // 8], "tool": "jira.create_ticket",
            "arguments": {"project": "SUP", "summary": f"Printer on fire, floor {k}"},
            "draft_text": "Hello, we have opened a ticket for the printer.",
            "rationale": "Customer reports a broken printer.", "model": "bench-model",
            "agent_version": "v1", "tokens": 120, "cost": "0.0125"}).encode()
        out.append((body, {"Authorization": f"Bearer {fx.token}",
                           "Content-Type": "application/json",
                           "Idempotency-Key": f"bench-{k}"}))
    return out


def run(server: GunicornServer, fx: Fixture, *, n: int = 1000, rounds: int = 3,
        threads: int = 4) -> dict[str, Any]:
    port = server.port
    paths = {"ingest": "/api/v1/proposals/", "bare": "/bench/bare-insert/",
             "bare_anon": "/bench/bare-insert-anon/"}
    # Warm up every worker's imports, connections and caches.
    for name, path in paths.items():
        bodies = _bodies(fx, 60) if name == "ingest" else _bodies_plain(fx, 60)
        load(port, path, bodies, threads)
    per_round: list[dict[str, Any]] = []
    for _ in range(rounds):
        row: dict[str, Any] = {}
        for name, path in paths.items():
            bodies = _bodies(fx, n) if name == "ingest" else _bodies_plain(fx, n)
            row[name] = load(port, path, bodies, threads)
        per_round.append(row)

    def best(name: str) -> float:
        return max(r[name]["per_second"] for r in per_round)

    def median(name: str) -> float:
        values = sorted(r[name]["per_second"] for r in per_round)
        return values[len(values) // 2]

    ratio = median("ingest") / median("bare")
    bad = [r[k]["statuses"] for r in per_round for k in r
           if set(r[k]["statuses"]) - {201}]
    return {
        "benchmark": "ingest",
        "what": "POST /api/v1/proposals/ (level 2: each queues for review) vs a bare "
                "DRF endpoint doing one INSERT, same body, same server",
        "config": {"requests_per_round": n, "rounds": rounds, "client_threads": threads,
                   "server": "gunicorn, 2 sync workers, CONN_MAX_AGE=60"},
        "target_per_second_median": median("ingest"),
        "baseline_per_second_median": median("bare"),
        "baseline_anon_per_second_median": median("bare_anon"),
        "best": {k: best(k) for k in paths},
        "ratio": round(ratio, 3),
        "ratio_vs_anon": round(median("ingest") / median("bare_anon"), 3),
        "goal": f">= {TARGET}",
        "pass": ratio >= TARGET and not bad,
        "non_201": bad,
        "rounds": per_round,
    }


def _bodies_plain(fx: Fixture, n: int) -> list[tuple[bytes, dict[str, str]]]:
    """The same shape of body, without opening runs (the bare endpoint ignores them)."""
    out = []
    for _ in range(n):
        k = next(_seq)
        body = json.dumps({
            "run": 1, "tool": "jira.create_ticket",
            "arguments": {"project": "SUP", "summary": f"Printer on fire, floor {k}"},
            "draft_text": "Hello, we have opened a ticket for the printer.",
            "rationale": "Customer reports a broken printer.", "model": "bench-model",
            "agent_version": "v1", "tokens": 120, "cost": "0.0125"}).encode()
        out.append((body, {"Authorization": f"Bearer {fx.token}",
                           "Content-Type": "application/json",
                           "Idempotency-Key": f"bench-{k}"}))
    return out
