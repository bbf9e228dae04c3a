"""Tool executors: an HTTP webhook, or a registered Python callable.

Every executor receives the execution's idempotency key; the tool side must treat a
repeated key as the same action. That is what makes a redelivered task (a killed
worker, a broker restart) safe: the claim keeps two workers from running one
execution at once, and the key keeps a retry after a crash from acting twice.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import requests
from django.conf import settings

log = logging.getLogger(__name__)


class TransientError(Exception):
    """Worth retrying: timeouts, connection errors, 5xx, 429."""


class PermanentError(Exception):
    """Retrying will not help: 4xx, bad configuration."""


@dataclass(frozen=True)
class ExecutionRequest:
    tool: str
    arguments: dict[str, Any]
    text: str
    idempotency_key: str
    dry_run: bool
    proposal_id: int


Executor = Callable[[ExecutionRequest], dict[str, Any]]
REGISTRY: dict[str, Executor] = {}


def register(name: str) -> Callable[[Executor], Executor]:
    def wrap(fn: Executor) -> Executor:
        REGISTRY[name] = fn
        return fn

    return wrap


def run_python(target: str, request: ExecutionRequest) -> dict[str, Any]:
    fn = REGISTRY.get(target)
    if fn is None:
        raise PermanentError(f"no Python executor registered as {target!r}")
    return fn(request)


def run_webhook(url: str, request: ExecutionRequest) -> dict[str, Any]:
    headers = {
        "Idempotency-Key": request.idempotency_key,
        "X-Gatehouse-Dry-Run": "1" if request.dry_run else "0",
        "Content-Type": "application/json",
    }
    body = {"tool": request.tool, "arguments": request.arguments, "text": request.text,
            "dry_run": request.dry_run, "proposal_id": request.proposal_id}
    try:
        response = requests.post(
            url, json=body, headers=headers, timeout=settings.GATEHOUSE_WEBHOOK_TIMEOUT
        )
    except (requests.ConnectionError, requests.Timeout,
            requests.exceptions.ChunkedEncodingError) as exc:
        # Includes a connection cut mid-response: the tool may have acted, and the
        # retry carries the same idempotency key, so retrying is the safe choice.
        raise TransientError(f"{type(exc).__name__}: {exc}") from exc
    except requests.RequestException as exc:
        raise PermanentError(str(exc)) from exc
    if response.status_code >= 500 or response.status_code == 429:
        raise TransientError(f"HTTP {response.status_code}: {response.text[:300]}")
    if response.status_code >= 400:
        raise PermanentError(f"HTTP {response.status_code}: {response.text[:300]}")
    try:
        data = response.json()
    except ValueError:
        data = {"body": response.text[:2000]}
    return {"status_code": response.status_code, "response": data}


# Demo executors, used by the seeded workflow. They touch nothing outside Gatehouse.


@register("demo.record")
def demo_record(request: ExecutionRequest) -> dict[str, Any]:
    log.info("demo executor %s key=%s dry_run=%s", request.tool, request.idempotency_key,
             request.dry_run)
    return {"ok": True, "tool": request.tool, "dry_run": request.dry_run,
            "idempotency_key": request.idempotency_key}
