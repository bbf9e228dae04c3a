"""Signed webhooks to the agent: `X-Gatehouse-Signature: t=<unix>,v1=<hex HMAC-SHA256>`.

The signature covers "<t>.<body>" with the agent's webhook secret, so a receiver can
reject forgeries and replays (check t is recent). agents/client.py has verify_signature.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from datetime import timedelta

import requests
from django.conf import settings
from django.db import transaction
from django.db.models import F
from django.utils import timezone

from approvals import dispatch
from approvals.models import WebhookDelivery

MAX_ATTEMPTS = 8


def sign(secret: str, body: bytes, timestamp: int) -> str:
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256)
    return f"t={timestamp},v1={mac.hexdigest()}"


def webhook_deliver(*, delivery_id: int) -> str:
    with transaction.atomic():
        delivery = (WebhookDelivery.objects.select_for_update(skip_locked=True)
                    .select_related("agent").filter(pk=delivery_id).first())
        if delivery is None or delivery.delivered_at is not None:
            return "skipped"
        WebhookDelivery.objects.filter(pk=delivery.pk).update(attempts=F("attempts") + 1)
    body = json.dumps({**delivery.payload, "delivery_id": delivery.pk}, sort_keys=True).encode()
    headers = {
        "Content-Type": "application/json",
        "X-Gatehouse-Event": delivery.event,
        "X-Gatehouse-Delivery": str(delivery.pk),
        "X-Gatehouse-Signature": sign(delivery.agent.webhook_secret, body, int(time.time())),
    }
    error = ""
    try:
        # No redirects: a 3xx is a failed delivery, never a re-POST of a signed body
        # to wherever the receiver points.
        response = requests.post(delivery.agent.webhook_url, data=body, headers=headers,
                                 timeout=settings.GATEHOUSE_WEBHOOK_TIMEOUT,
                                 allow_redirects=False)
        if response.status_code >= 300:
            error = f"HTTP {response.status_code}"
    except requests.RequestException as exc:
        error = f"{type(exc).__name__}: {exc}"
    if not error:
        WebhookDelivery.objects.filter(pk=delivery.pk).update(delivered_at=timezone.now(),
                                                              last_error="")
        return "delivered"
    WebhookDelivery.objects.filter(pk=delivery.pk).update(last_error=error[:2000])
    if delivery.attempts + 1 < MAX_ATTEMPTS:
        dispatch.publish_webhook(delivery.pk, countdown=min(2 ** (delivery.attempts + 1), 600))
    return "retry"


def webhooks_sweep(*, grace_s: int = 60, limit: int = 500) -> int:
    """Republish deliveries whose first publish never reached the broker.

    proposal_notify publishes after commit; if the broker was down then, the row sits
    with attempts == 0 for ever. Delivery is at least once (receivers deduplicate on
    X-Gatehouse-Delivery), so a republish racing a slow first task is harmless.
    Beat runs it (approvals.tasks.sweep_webhooks, every GATEHOUSE_WEBHOOK_SWEEP_SECONDS).
    """
    cutoff = timezone.now() - timedelta(seconds=grace_s)
    stuck = list(WebhookDelivery.objects.filter(delivered_at__isnull=True, attempts=0,
                                                created_at__lt=cutoff)
                 .order_by("id").values_list("pk", flat=True)[:limit])
    return sum(1 for pk in stuck if dispatch.publish_webhook(pk))
