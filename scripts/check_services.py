"""Before the suite: PostgreSQL and Redis must answer, or say plainly what is missing."""

from __future__ import annotations

import os
import socket
import sys
from urllib.parse import urlparse


def reachable(url: str, default_port: int) -> tuple[str, int, bool]:
    parsed = urlparse(url)
    host, port = parsed.hostname or "127.0.0.1", parsed.port or default_port
    try:
        with socket.create_connection((host, port), timeout=3):
            return host, port, True
    except OSError:
        return host, port, False


def main() -> int:
    db = os.environ.get("DATABASE_URL", "postgres://postgres@127.0.0.1:5432/gatehouse")
    broker = os.environ.get("CELERY_BROKER_URL", "redis://127.0.0.1:6379/15")
    ok = True
    for name, url, default_port in (("PostgreSQL", db, 5432), ("Redis", broker, 6379)):
        host, port, up = reachable(url, default_port)
        if not up:
            ok = False
            print(f"{name} is not reachable at {host}:{port}. The suite runs on real "
                  f"services; start it (bash .ci/run does) or set the URL.", file=sys.stderr)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
