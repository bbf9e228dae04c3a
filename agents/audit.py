"""The audit log: append-only and hash-chained.

It lives in the bottom app because every layer writes to it. Each event's hash covers
its fields and the previous event's hash, so editing or deleting any row breaks the
chain from that row on; `manage.py verify_audit` names the first broken entry. On
PostgreSQL, triggers (migration 0002) refuse UPDATE, DELETE and TRUNCATE outright.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.core.serializers.json import DjangoJSONEncoder
from django.db import connection, transaction
from django.db.models import Model
from django.utils import timezone

from agents.models import Agent, AuditEvent

GENESIS = "0" * 64
# Any constant works; it only has to be the same for every writer.
_CHAIN_LOCK_KEY = 740_211_001


class _System:
    """The actor for work nobody asked for at that moment: beat, sweeps, breakers."""

    name = "system"

    def __repr__(self) -> str:
        return "SYSTEM"


SYSTEM = _System()
Actor = AbstractBaseUser | Agent | _System


def actor_fields(actor: Actor) -> tuple[str, str, str]:
    if isinstance(actor, Agent):
        return "agent", str(actor.pk), actor.name
    if isinstance(actor, _System):
        return "system", "", "system"
    if isinstance(actor, AnonymousUser) or actor is None:
        raise ValueError("an audited action needs a real actor")
    return "user", str(actor.pk), actor.get_username()


def _canonical(fields: dict[str, Any]) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":"), cls=DjangoJSONEncoder).encode()


def compute_hash(event: AuditEvent) -> str:
    fields = {
        "actor_type": event.actor_type,
        "actor_id": event.actor_id,
        "actor_name": event.actor_name,
        "action": event.action,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "from_state": event.from_state,
        "to_state": event.to_state,
        "reason": event.reason,
        # Round-trip through JSON so the hash matches what the database returns.
        "data": json.loads(_canonical(event.data or {})),
        "created_at": event.created_at.isoformat(),
        "prev_hash": event.prev_hash,
    }
    return hashlib.sha256(_canonical(fields)).hexdigest()


def audit_record(
    *,
    actor: Actor,
    action: str,
    obj: Model | None = None,
    object_type: str = "",
    object_id: str = "",
    from_state: str = "",
    to_state: str = "",
    reason: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event. Must run inside the transaction of the change it records."""
    if not connection.in_atomic_block:
        raise RuntimeError("audit_record must be called inside the change's transaction")
    if obj is not None:
        object_type = object_type or obj._meta.label_lower
        object_id = object_id or str(obj.pk)
    actor_type, actor_id, actor_name = actor_fields(actor)
    if connection.vendor == "postgresql":
        # Serialise chain appends: two writers reading the same tail would fork it. The
        # function (migration 0004) takes the lock and then reads the tail with a fresh
        # snapshot, in one round trip.
        with connection.cursor() as cur:
            cur.execute("SELECT gatehouse_audit_chain_tail(%s)", [_CHAIN_LOCK_KEY])
            last = cur.fetchone()[0]
    else:
        last = AuditEvent.objects.order_by("-id").values_list("hash", flat=True).first()
    event = AuditEvent(
        actor_type=actor_type,
        actor_id=actor_id,
        actor_name=actor_name[:150],
        action=action,
        object_type=object_type,
        object_id=object_id,
        from_state=from_state,
        to_state=to_state,
        reason=reason,
        data=json.loads(_canonical(data or {})),
        prev_hash=last or GENESIS,
        created_at=timezone.now(),
    )
    event.hash = compute_hash(event)
    event.save(force_insert=True)
    return event


@dataclass
class ChainBreak:
    event_id: int
    problem: str


def verify_chain(batch_size: int = 5000) -> tuple[int, ChainBreak | None]:
    """Walk the chain in id order; return (events checked, first break or None)."""
    expected_prev = GENESIS
    checked = 0
    for event in _iterate(batch_size):
        if event.prev_hash != expected_prev:
            return checked, ChainBreak(event.pk, "prev_hash does not match the previous entry")
        if compute_hash(event) != event.hash:
            return checked, ChainBreak(event.pk, "hash does not match the entry's contents")
        expected_prev = event.hash
        checked += 1
    return checked, None


def _iterate(batch_size: int) -> Iterator[AuditEvent]:
    last_id = 0
    while True:
        with transaction.atomic():
            batch = list(AuditEvent.objects.filter(id__gt=last_id).order_by("id")[:batch_size])
        if not batch:
            return
        yield from batch
        last_id = batch[-1].pk
