"""agents/client.py against a real HTTP server (pytest-django's live_server)."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from django.db import connection

from agents.client import GatehouseClient, GatehouseError, verify_signature
from agents.models import Agent, Workflow
from approvals import services, webhooks
from approvals.execution import execute_one
from approvals.models import Execution, Proposal

ROOT = Path(__file__).resolve().parents[2]
ARGS = {"project": "SUP", "summary": "Printer on fire"}


def test_importing_the_client_does_not_import_django() -> None:
    code = ("import agents.client, sys; "
            "bad = [m for m in sys.modules "
            "       if m.split('.')[0] in ('django', 'requests', 'rest_framework')]; "
            "assert not bad, bad")
    result = subprocess.run([sys.executable, "-c", code], check=False, cwd=ROOT,
                            capture_output=True, text=True, env={"PATH": "/usr/bin:/bin"},
                            timeout=60)
    assert result.returncode == 0, result.stderr


def test_verify_signature_accepts_what_the_server_signs() -> None:
    body = b'{"event": "execution.finished"}'
    t = int(time.time())
    assert verify_signature("k", body, webhooks.sign("k", body, t))
    assert not verify_signature("k", body + b"x", webhooks.sign("k", body, t))
    assert not verify_signature("k", body, webhooks.sign("k", body, t - 1000))
    assert verify_signature("k", body, webhooks.sign("k", body, t - 1000), now=t - 1000)


@pytest.fixture
def gh(transactional_db: None, live_server: Any, agent_and_token: tuple[Agent, str]
       ) -> GatehouseClient:
    return GatehouseClient(live_server.url, agent_and_token[1], retries=2, backoff_s=0.05)


def _in_thread(delay: float, fn: Any) -> threading.Thread:
    def work() -> None:
        try:
            time.sleep(delay)
            fn()
        finally:
            connection.close()
    thread = threading.Thread(target=work)
    thread.start()
    return thread


def test_open_propose_wait_for_the_decision_and_close(gh: GatehouseClient, workflow: Workflow,
                                                      reviewer) -> None:  # type: ignore[no-untyped-def]
    assert gh.whoami()["workflows"][0]["slug"] == "support-triage"
    run = gh.open_run("support-triage", "T-4711", agent_version="v3")
    assert (run["status"], run["tool_calls"], run["agent_version"]) == ("open", 0, "v3")
    p = gh.propose(run["id"], "jira.create_ticket", ARGS, rationale="fire", tokens=850,
                   cost="0.012")
    assert p["status"] == "pending" and p["policy_version"] == 1 and not p["_replayed"]
    assert p["decision_reasons"] == ["level 2 suggest: one-click review"]

    def approve_and_execute() -> None:  # the reviewer, then the worker
        proposal = Proposal.objects.get(pk=p["id"])
        services.proposal_approve(actor=reviewer, proposal=proposal, expected_version=1)
        execute_one(Execution.objects.get(proposal=proposal).pk)

    thread = _in_thread(1.0, approve_and_execute)
    started = time.monotonic()
    decided = gh.wait_for_decision(p["id"], timeout=20)
    thread.join()
    assert decided["status"] == "approved" and time.monotonic() - started < 10
    assert decided["execution"]["status"] == "succeeded"
    assert gh.get_run(run["id"])["tool_calls"] == 1
    closed = gh.close_run(run["id"], outcome="resolved")
    assert (closed["status"], closed["outcome"]) == ("closed", "resolved")


def test_a_short_chunk_hears_of_the_approval_even_without_a_worker(
        gh: GatehouseClient, workflow: Workflow, reviewer) -> None:  # type: ignore[no-untyped-def]
    run = gh.open_run("support-triage", "T-1")
    p = gh.propose(run["id"], "jira.create_ticket", ARGS)
    thread = _in_thread(0.5, lambda: services.proposal_approve(
        actor=reviewer, proposal=Proposal.objects.get(pk=p["id"]), expected_version=1))
    started = time.monotonic()
    decided = gh.wait_for_decision(p["id"], timeout=20, chunk_s=1)
    thread.join()
    assert decided["status"] == "approved" and decided["execution"]["status"] == "queued"
    assert time.monotonic() - started < 6


def test_wait_for_decision_returns_the_pending_state_after_its_timeout(
        gh: GatehouseClient, workflow: Workflow) -> None:
    run = gh.open_run("support-triage", "T-1")
    p = gh.propose(run["id"], "jira.create_ticket", ARGS)
    started = time.monotonic()
    assert gh.wait_for_decision(p["id"], timeout=1)["status"] == "pending"
    assert time.monotonic() - started < 5


def test_a_decided_proposal_returns_at_once(gh: GatehouseClient, workflow: Workflow) -> None:
    run = gh.open_run("support-triage", "T-1")
    p = gh.propose(run["id"], "github.merge", {"pr": 1})
    assert p["status"] == "handed_off" and p["violation"] == "violation"
    started = time.monotonic()
    assert gh.wait_for_decision(p["id"], timeout=20)["status"] == "handed_off"
    assert time.monotonic() - started < 2


def test_a_lost_response_is_retried_with_the_same_key_and_replayed(
        gh: GatehouseClient, workflow: Workflow, monkeypatch: pytest.MonkeyPatch) -> None:
    run = gh.open_run("support-triage", "T-1")
    real = urllib.request.urlopen
    sent: list[str] = []

    def flaky(request: urllib.request.Request, timeout: float) -> Any:
        sent.append(request.get_header("Idempotency-key") or "")
        response = real(request, timeout=timeout)
        if len(sent) == 1:  # the server did the work, then the connection broke
            response.close()
            raise urllib.error.URLError(ConnectionResetError("connection reset by peer"))
        return response

    monkeypatch.setattr(urllib.request, "urlopen", flaky)
    p = gh.propose(run["id"], "jira.create_ticket", ARGS, idempotency_key="retry-me")
    assert sent == ["retry-me", "retry-me"]
    assert p["_replayed"] is True and p["status"] == "pending"
    assert Proposal.objects.count() == 1


def test_every_propose_gets_a_fresh_uuid_key(gh: GatehouseClient, workflow: Workflow) -> None:
    run = gh.open_run("support-triage", "T-1")
    a = gh.propose(run["id"], "jira.create_ticket", ARGS)
    b = gh.propose(run["id"], "jira.create_ticket", ARGS)
    assert a["id"] != b["id"] and len(a["_idempotency_key"]) == 36


def test_a_reused_key_with_a_different_body_is_a_422(gh: GatehouseClient,
                                                     workflow: Workflow) -> None:
    run = gh.open_run("support-triage", "T-1")
    gh.propose(run["id"], "jira.create_ticket", ARGS, idempotency_key="k")
    with pytest.raises(GatehouseError) as exc:
        gh.propose(run["id"], "jira.create_ticket", {**ARGS, "summary": "other"},
                   idempotency_key="k")
    assert exc.value.status == 422 and "Idempotency-Key" in exc.value.field_errors


def test_field_errors_come_back_on_the_exception(gh: GatehouseClient, workflow: Workflow) -> None:
    run = gh.open_run("support-triage", "T-1")
    with pytest.raises(GatehouseError) as exc:
        gh.propose(run["id"], "jira.create_ticket", {"project": "SUP", "summary": ""})
    assert exc.value.status == 400
    assert list(exc.value.field_errors) == ["arguments.summary"]
    with pytest.raises(GatehouseError) as exc:
        gh.open_run("no-such-workflow", "T-1")
    assert exc.value.status == 400 and "workflow" in exc.value.detail


def test_auth_not_found_and_conflict_errors(gh: GatehouseClient, live_server: Any,
                                            workflow: Workflow) -> None:
    with pytest.raises(GatehouseError) as exc:
        GatehouseClient(live_server.url, "gh_wrong").open_run("support-triage", "T")
    assert exc.value.status == 401 and exc.value.field_errors == {}
    assert exc.value.detail == {"detail": "Invalid or inactive agent token."}
    with pytest.raises(GatehouseError) as exc:
        gh.wait_for_decision(999999, timeout=1)
    assert (exc.value.status, exc.value.detail) == (404, {"detail": "Not found."})
    with pytest.raises(GatehouseError) as exc:
        gh._request("PUT", "runs/", {})
    assert exc.value.status == 405 and exc.value.detail == {
        "detail": 'Method "PUT" not allowed.'}
    run = gh.open_run("support-triage", "T-1")
    gh.close_run(run["id"])
    with pytest.raises(GatehouseError) as exc:
        gh.close_run(run["id"])
    assert exc.value.status == 409 and "already closed" in exc.value.detail["detail"]
    with pytest.raises(GatehouseError) as exc:
        gh.propose(run["id"], "jira.create_ticket", ARGS)
    assert exc.value.status == 409


def test_an_unreachable_server_is_a_status_0_error_after_retries() -> None:
    gh = GatehouseClient("http://127.0.0.1:9", "gh_x", retries=1, backoff_s=0.01, timeout=2)
    with pytest.raises(GatehouseError) as exc:
        gh.propose(1, "jira.create_ticket", ARGS)
    assert exc.value.status == 0 and "could not reach" in exc.value.detail["detail"]
