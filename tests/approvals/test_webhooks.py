"""Signed webhooks to the agent: HMAC format, delivery on decision and on execution
result to a real local HTTP server, and retry bookkeeping."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from agents.client import verify_signature
from agents.models import Agent, Workflow
from approvals import services, webhooks
from approvals.execution import execute_one
from approvals.models import Execution, ProposalStatus, WebhookDelivery
from tests.factories import open_run, submit

SECRET = "s3cret"


def test_sign_and_verify_round_trip() -> None:
    body = b'{"event":"proposal.decided","proposal_id":7}'
    now = int(time.time())
    header = webhooks.sign(SECRET, body, now)
    assert header.startswith(f"t={now},v1=") and len(header.split("v1=")[1]) == 64
    assert verify_signature(SECRET, body, header)


@pytest.mark.parametrize("mutate", [
    lambda b, h: (b + b" ", h),                                  # tampered body
    lambda b, h: (b.replace(b"7", b"8"), h),                     # tampered value
    lambda b, h: (b, h.replace("v1=", "v1=0")),                  # tampered signature
    lambda b, h: (b, h.split(",")[0]),                           # no signature
    lambda b, h: (b, ""),                                        # no header
    lambda b, h: (b, "garbage"),
    lambda b, h: (b, h.replace("t=", "t=x")),                    # bad timestamp
])
def test_verification_fails_on_any_tampering(mutate: Any) -> None:
    body = b'{"event":"proposal.decided","proposal_id":7}'
    header = webhooks.sign(SECRET, body, int(time.time()))
    assert not verify_signature(SECRET, *mutate(body, header))


def test_a_wrong_secret_fails() -> None:
    body = b"{}"
    assert not verify_signature("other", body, webhooks.sign(SECRET, body, int(time.time())))


def test_an_old_signature_is_refused_as_a_replay() -> None:
    body = b"{}"
    old = int(time.time()) - 301
    assert not verify_signature(SECRET, body, webhooks.sign(SECRET, body, old))
    assert verify_signature(SECRET, body, webhooks.sign(SECRET, body, old), tolerance_s=600)
    future = int(time.time()) + 301
    assert not verify_signature(SECRET, body, webhooks.sign(SECRET, body, future))


def test_one_of_several_v1_signatures_may_match_during_secret_rotation() -> None:
    body = b"{}"
    t = int(time.time())
    current = webhooks.sign(SECRET, body, t).split("v1=")[1]
    header = webhooks.sign("old-secret", body, t) + ",v1=" + current
    assert verify_signature(SECRET, body, header) and verify_signature("old-secret", body, header)


# --------------------------------------------------------------- real delivery


class Receiver:
    def __init__(self) -> None:
        self.requests: list[tuple[dict[str, str], bytes]] = []
        self.status = 200
        self.location = ""


@pytest.fixture
def receiver() -> Iterator[tuple[Receiver, str]]:
    state = Receiver()

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            state.requests.append((dict(self.headers.items()), body))
            self.send_response(state.status)
            if state.location:
                self.send_header("Location", state.location)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield state, f"http://127.0.0.1:{server.server_port}/hook"
    server.shutdown()
    server.server_close()


@pytest.fixture
def hooked_agent(agent: Agent, receiver: tuple[Receiver, str]) -> Agent:
    agent.webhook_url = receiver[1]
    agent.save(update_fields=["webhook_url"])
    return agent


@pytest.fixture
def republished(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, float | None]]:
    """Retries are handed to the broker; record them instead of sending."""
    calls: list[tuple[int, float | None]] = []
    monkeypatch.setattr(webhooks.dispatch, "publish_webhook",
                        lambda pk, countdown=None: calls.append((pk, countdown)) or True)
    return calls


def _check_signed(agent: Agent, headers: dict[str, str], body: bytes) -> dict:
    assert verify_signature(agent.webhook_secret, body, headers["X-Gatehouse-Signature"])
    assert headers["Content-Type"] == "application/json"
    return json.loads(body)


def test_the_decision_is_delivered_signed(workflow: Workflow, hooked_agent: Agent, reviewer,  # type: ignore[no-untyped-def]
                                          receiver: tuple[Receiver, str]) -> None:
    p = submit(open_run(hooked_agent, workflow))
    assert not WebhookDelivery.objects.exists()  # pending: nothing to say yet
    services.proposal_reject(actor=reviewer, proposal=p, expected_version=1, reason_code="tone")
    delivery = WebhookDelivery.objects.get(proposal=p)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"
    headers, body = receiver[0].requests[0]
    payload = _check_signed(hooked_agent, headers, body)
    assert headers["X-Gatehouse-Event"] == "proposal.decided"
    assert headers["X-Gatehouse-Delivery"] == str(delivery.pk)
    assert payload["proposal_id"] == p.pk and payload["status"] == ProposalStatus.REJECTED
    assert payload["delivery_id"] == delivery.pk
    delivery.refresh_from_db()
    assert delivery.delivered_at is not None and delivery.attempts == 1
    # A redelivered task does not post twice.
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "skipped"
    assert len(receiver[0].requests) == 1


def test_refusals_are_delivered_at_once(workflow: Workflow, hooked_agent: Agent) -> None:
    p = submit(open_run(hooked_agent, workflow), "github.merge", {"pr": 1})
    assert p.status == ProposalStatus.HANDED_OFF
    assert WebhookDelivery.objects.get(proposal=p).payload["reasons"][0] == (
        "tool 'github.merge' is not registered")


def test_the_execution_result_is_delivered_signed(workflow: Workflow, hooked_agent: Agent,
                                                  receiver: tuple[Receiver, str]) -> None:
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=4)
    p = submit(open_run(hooked_agent, workflow))
    execution = Execution.objects.get(proposal=p)
    assert execute_one(execution.pk) == "succeeded"
    delivery = WebhookDelivery.objects.get(proposal=p, event="execution.finished")
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"
    headers, body = receiver[0].requests[-1]
    payload = _check_signed(hooked_agent, headers, body)
    assert payload["event"] == "execution.finished"
    assert payload["execution_status"] == "succeeded" and payload["proposal_id"] == p.pk


def test_a_failed_delivery_is_retried_with_backoff(workflow: Workflow, hooked_agent: Agent,  # type: ignore[no-untyped-def]
                                                   receiver: tuple[Receiver, str], reviewer,
                                                   republished: list) -> None:
    receiver[0].status = 500
    p = submit(open_run(hooked_agent, workflow))
    services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    delivery = WebhookDelivery.objects.get(proposal=p)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retry"
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_error, delivery.delivered_at) == (2, "HTTP 500", None)
    assert republished == [(delivery.pk, 2), (delivery.pk, 4)]
    receiver[0].status = 204
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "delivered"
    delivery.refresh_from_db()
    assert (delivery.attempts, delivery.last_error) == (3, "")
    assert delivery.delivered_at is not None


def test_retries_stop_after_max_attempts(workflow: Workflow, hooked_agent: Agent, reviewer,  # type: ignore[no-untyped-def]
                                         receiver: tuple[Receiver, str],
                                         republished: list) -> None:
    receiver[0].status = 503
    p = submit(open_run(hooked_agent, workflow))
    services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    delivery = WebhookDelivery.objects.get(proposal=p)
    for _ in range(webhooks.MAX_ATTEMPTS):
        webhooks.webhook_deliver(delivery_id=delivery.pk)
    delivery.refresh_from_db()
    assert delivery.attempts == webhooks.MAX_ATTEMPTS
    assert len(republished) == webhooks.MAX_ATTEMPTS - 1
    assert max(c for _, c in republished) <= 600


def test_an_unreachable_receiver_is_recorded_and_retried(workflow: Workflow, agent: Agent,  # type: ignore[no-untyped-def]
                                                         reviewer, republished: list) -> None:
    agent.webhook_url = "http://127.0.0.1:9/hook"  # discard port: connection refused
    agent.save(update_fields=["webhook_url"])
    p = submit(open_run(agent, workflow))
    services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    delivery = WebhookDelivery.objects.get(proposal=p)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retry"
    delivery.refresh_from_db()
    assert "ConnectionError" in delivery.last_error and len(republished) == 1


def test_a_redirect_is_a_failure_not_followed(workflow: Workflow, hooked_agent: Agent, reviewer,  # type: ignore[no-untyped-def]
                                              receiver: tuple[Receiver, str],
                                              republished: list) -> None:
    receiver[0].status, receiver[0].location = 307, receiver[1] + "/elsewhere"
    p = submit(open_run(hooked_agent, workflow))
    services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    delivery = WebhookDelivery.objects.get(proposal=p)
    assert webhooks.webhook_deliver(delivery_id=delivery.pk) == "retry"
    assert len(receiver[0].requests) == 1  # the Location was not followed
    delivery.refresh_from_db()
    assert delivery.last_error == "HTTP 307"


def test_agents_without_a_webhook_url_get_no_deliveries(workflow: Workflow, agent: Agent,  # type: ignore[no-untyped-def]
                                                        reviewer) -> None:
    p = submit(open_run(agent, workflow))
    services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    assert not WebhookDelivery.objects.exists()


def test_deliveries_are_published_only_after_commit(workflow: Workflow, hooked_agent: Agent,  # type: ignore[no-untyped-def]
                                                    reviewer, republished: list,
                                                    django_capture_on_commit_callbacks) -> None:
    p = submit(open_run(hooked_agent, workflow))
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    assert republished == []
    for callback in callbacks:
        callback()
    assert republished == [(WebhookDelivery.objects.get(proposal=p).pk, None)]


def test_the_sweep_republishes_deliveries_whose_first_publish_was_lost(
        workflow: Workflow, hooked_agent: Agent, reviewer, republished: list,  # type: ignore[no-untyped-def]
        receiver: tuple[Receiver, str]) -> None:
    from datetime import timedelta

    from django.utils import timezone
    run = open_run(hooked_agent, workflow)
    lost, fresh, done = (submit(run) for _ in range(3))
    for p in (lost, fresh, done):
        services.proposal_hand_off(actor=reviewer, proposal=p, expected_version=1)
    old = timezone.now() - timedelta(minutes=5)
    WebhookDelivery.objects.filter(proposal__in=[lost, done]).update(created_at=old)
    webhooks.webhook_deliver(delivery_id=WebhookDelivery.objects.get(proposal=done).pk)
    assert webhooks.webhooks_sweep(grace_s=60) == 1
    assert republished == [(WebhookDelivery.objects.get(proposal=lost).pk, None)]
