"""The Celery baseline: a no-op task whose only act is to say it ran (a Redis key with
the time it finished). Loaded into the bench worker with --include."""

from __future__ import annotations

import time

import redis
from celery import shared_task

_clients: dict[str, redis.Redis] = {}


@shared_task(name="bench.noop", ignore_result=True)
def noop(token: str, signal_url: str) -> None:
    client = _clients.get(signal_url)
    if client is None:
        client = _clients[signal_url] = redis.Redis.from_url(signal_url)
    client.set(f"bench:noop:{token}", repr(time.time()), ex=600)
