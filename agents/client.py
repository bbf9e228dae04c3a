"""Gatehouse client for agents: open a run, propose actions, wait for the decision.

Standard library only (urllib, json, hmac): an agent can vendor this one file. It must
never import Django; tests/agents/test_client.py checks that.

    from agents.client import GatehouseClient

    gh = GatehouseClient("http://localhost:8000", token="gh_...")
    run = gh.open_run("support-triage", case_ref="T-4711", agent_version="triage-v3")
    p = gh.propose(run["id"], "jira.create_ticket",
                   {"project": "SUP", "summary": "Printer on fire"},
                   rationale="customer reports a fire", tokens=850, cost="0.012")
    if p["status"] == "pending":
        p = gh.wait_for_decision(p["id"], timeout=600)
    gh.close_run(run["id"], outcome="resolved")

Retries: propose() sends an Idempotency-Key (a fresh uuid4 unless given) and retries
on connection errors and 502/503/504 with the same key, so a request that reached the
server before the connection broke is replayed, never proposed twice.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from decimal import Decimal
from typing import Any

__all__ = ["SETTLED_STATUSES", "GatehouseClient", "GatehouseError", "verify_signature"]

# A proposal is decided when it left "pending"; it is settled when, in addition, its
# execution (if any) finished.
SETTLED_STATUSES = ("shadow", "approved", "rejected", "handed_off", "expired", "refused")
UNFINISHED_EXECUTION = ("queued", "running", "held")
MAX_SERVER_WAIT = 30  # the API's cap on ?wait=
RETRY_STATUSES = (502, 503, 504)


class GatehouseError(Exception):
    """An error answer from the API.

    status: the HTTP status (0 when the server could not be reached at all).
    detail: the decoded body, e.g. {"arguments.summary": ["... is too long"]} for a 400,
            {"detail": "..."} for 401/403/404/409.
    """

    def __init__(self, status: int, detail: Any, *, method: str = "", url: str = "") -> None:
        self.status = status
        self.detail = detail
        self.method = method
        self.url = url
        super().__init__(f"{method} {url} -> {status}: {detail}")

    @property
    def field_errors(self) -> dict[str, list[str]]:
        """The field errors of a 400/422 (empty for other errors)."""
        if isinstance(self.detail, dict) and "detail" not in self.detail:
            return {str(k): v if isinstance(v, list) else [v] for k, v in self.detail.items()}
        return {}


def verify_signature(secret: str, body: bytes, header: str, tolerance_s: int = 300,
                     *, now: float | None = None) -> bool:
    """Check an `X-Gatehouse-Signature: t=<unix>,v1=<hex>` header on a webhook body.

    The HMAC-SHA256 covers "<t>." + body with the agent's webhook secret; a timestamp
    further than tolerance_s from now is refused, so a captured delivery cannot be
    replayed later. Compare the raw body bytes, before any JSON parsing.
    """
    parts: dict[str, list[str]] = {}
    for item in (header or "").split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        timestamp = int(parts["t"][0])
    except (KeyError, ValueError, IndexError):
        return False
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance_s:
        return False
    expected = hmac.new(secret.encode(), f"{timestamp}.".encode() + body,
                        hashlib.sha256).hexdigest()
    return any(hmac.compare_digest(expected, sig) for sig in parts.get("v1", []))


class GatehouseClient:
    def __init__(self, base_url: str, token: str, *, timeout: float = 30.0,
                 retries: int = 3, backoff_s: float = 0.5) -> None:
        self.base_url = base_url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retries = retries
        self.backoff_s = backoff_s

    # ------------------------------------------------------------------ plumbing

    def _request(self, method: str, path: str, body: dict[str, Any] | None = None, *,
                 headers: dict[str, str] | None = None, timeout: float | None = None,
                 retry: bool = False) -> tuple[int, dict[str, str], Any]:
        url = f"{self.base_url}/api/v1/{path.lstrip('/')}"
        data = json.dumps(body, default=_json_default).encode() if body is not None else None
        all_headers = {"Authorization": f"Bearer {self.token}", "Accept": "application/json",
                       **(headers or {})}
        if data is not None:
            all_headers["Content-Type"] = "application/json"
        attempts = 1 + (self.retries if retry else 0)
        last: Exception | None = None
        for attempt in range(attempts):
            if attempt:
                time.sleep(self.backoff_s * (2 ** (attempt - 1)))
            request = urllib.request.Request(url, data=data, method=method, headers=all_headers)
            try:
                with urllib.request.urlopen(request, timeout=timeout or self.timeout) as resp:
                    return resp.status, dict(resp.headers.items()), _decode(resp.read())
            except urllib.error.HTTPError as exc:
                detail = _decode(exc.read())
                if retry and exc.code in RETRY_STATUSES and attempt + 1 < attempts:
                    last = GatehouseError(exc.code, detail, method=method, url=url)
                    continue
                raise GatehouseError(exc.code, detail, method=method, url=url) from None
            except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
                # Reached the server or not, we cannot tell: only an idempotent request
                # (retry=True) may be sent again.
                last = exc
                if not retry:
                    break
        if isinstance(last, GatehouseError):
            raise last
        raise GatehouseError(0, {"detail": f"could not reach Gatehouse: {last}"},
                             method=method, url=url) from last

    # ---------------------------------------------------------------------- API

    def whoami(self) -> dict[str, Any]:
        return self._request("GET", "whoami/", retry=True)[2]

    def open_run(self, workflow: str, case_ref: str, agent_version: str = "") -> dict[str, Any]:
        """Open a run (one attempt at one case). Returns the run, with its budget counters."""
        return self._request("POST", "runs/", {"workflow": workflow, "case_ref": case_ref,
                                               "agent_version": agent_version})[2]

    def get_run(self, run_id: int) -> dict[str, Any]:
        return self._request("GET", f"runs/{int(run_id)}/", retry=True)[2]

    def close_run(self, run_id: int, outcome: str = "") -> dict[str, Any]:
        return self._request("POST", f"runs/{int(run_id)}/close/", {"outcome": outcome})[2]

    def propose(self, run_id: int, tool: str, arguments: dict[str, Any], *,
                draft_text: str = "", rationale: str = "", model: str = "",
                agent_version: str = "", tokens: int = 0, cost: Decimal | str | float = 0,
                idempotency_key: str | None = None) -> dict[str, Any]:
        """Propose one action. Returns the proposal with the gateway's decision:
        status "approved" (executing), "pending" (wait_for_decision), "shadow",
        "refused" / "handed_off" (see decision_reasons and fallback_applied)."""
        key = idempotency_key or str(uuid.uuid4())
        body = {"run": run_id, "tool": tool, "arguments": arguments, "draft_text": draft_text,
                "rationale": rationale, "model": model, "agent_version": agent_version,
                "tokens": tokens, "cost": str(cost)}
        _status, headers, proposal = self._request(
            "POST", "proposals/", body, headers={"Idempotency-Key": key}, retry=True)
        if isinstance(proposal, dict):
            proposal["_replayed"] = headers.get("Idempotent-Replayed") == "true"
            proposal["_idempotency_key"] = key
        return proposal

    def get_proposal(self, proposal_id: int, *, wait: int = 0) -> dict[str, Any]:
        wait = max(0, min(int(wait), MAX_SERVER_WAIT))
        return self._request("GET", f"proposals/{int(proposal_id)}/?wait={wait}",
                             timeout=max(self.timeout, wait + 10), retry=True)[2]

    def wait_for_decision(self, proposal_id: int, timeout: float = 300,
                          *, until_executed: bool = False,
                          chunk_s: int = MAX_SERVER_WAIT) -> dict[str, Any]:
        """Long-poll until the proposal is decided (or, with until_executed, until its
        execution finished too). Returns the last state seen; check its "status"
        (still "pending" when the timeout passed first).

        The server holds each request while the proposal is pending *or* its execution
        is unfinished, so with a worker running the answer normally arrives with the
        execution result. With no worker, an approval is seen at the end of the current
        chunk: lower chunk_s to hear about the decision sooner at the cost of more
        requests."""
        deadline = time.monotonic() + timeout
        chunk = max(1, min(MAX_SERVER_WAIT, int(chunk_s)))
        while True:
            remaining = deadline - time.monotonic()
            proposal = self.get_proposal(proposal_id, wait=max(0, min(chunk, int(remaining))))
            if _done(proposal, until_executed) or time.monotonic() >= deadline:
                return proposal


def _done(proposal: dict[str, Any], until_executed: bool) -> bool:
    if proposal.get("status") not in SETTLED_STATUSES:
        return False
    if not until_executed:
        return True
    execution = proposal.get("execution") or {}
    return execution.get("status") not in UNFINISHED_EXECUTION


def _decode(raw: bytes) -> Any:
    if not raw:
        return {}
    try:
        return json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return {"detail": raw.decode("utf-8", "replace")[:2000]}


def _json_default(value: Any) -> Any:
    if isinstance(value, Decimal):
        return str(value)
    raise TypeError(f"not JSON serializable: {type(value).__name__}")
