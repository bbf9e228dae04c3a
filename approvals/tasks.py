"""Thin Celery wrappers: take a pk, call a service."""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from approvals import execution, services, webhooks


# acks_late + reject_on_worker_lost: a killed worker's message goes back to the queue.
# A dropped database connection before or during the claim is retried soon rather than
# left for the outbox sweeper's grace period; a retry is always safe (the row claim).
@shared_task(name="approvals.tasks.execute", acks_late=True, reject_on_worker_lost=True,
             autoretry_for=(OperationalError, InterfaceError), retry_backoff=1,
             retry_backoff_max=30, max_retries=5)
def execute(execution_id: int) -> str:
    return execution.execute_one(execution_id)


@shared_task(name="approvals.tasks.deliver_webhook", acks_late=True)
def deliver_webhook(delivery_id: int) -> str:
    return webhooks.webhook_deliver(delivery_id=delivery_id)


@shared_task(name="approvals.tasks.expire_overdue")
def expire_overdue() -> int:
    return services.proposals_expire_overdue()


@shared_task(name="approvals.tasks.sweep_executions")
def sweep_executions() -> int:
    return execution.executions_sweep()


@shared_task(name="approvals.tasks.sweep_webhooks")
def sweep_webhooks() -> int:
    return webhooks.webhooks_sweep()
