"""A scaled-down bench/faults.py: SIGKILL, broker restart, killed DB sessions, and still
exactly one side effect per approved action and nothing stranded.

It runs the real script (own database, own redis-server on a spare port, two real
workers), so what is tested here is exactly what produces docs/RELIABILITY.md's figures.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

pytestmark = pytest.mark.integration

BASE_DIR = Path(__file__).resolve().parent.parent.parent


def _spare_redis_port() -> int:
    """A free port in the range helpers may use for throwaway redis-servers."""
    for port in range(6392, 6400):
        with socket.socket() as sock:
            if sock.connect_ex(("127.0.0.1", port)) != 0:
                return port
    pytest.skip("no spare port in 6392-6399 for a private redis-server")


def test_faults_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    out = tmp_path / "faults.json"
    database = f"{settings.DATABASES['default']['NAME']}_faults"[:60]
    done = subprocess.run(
        [sys.executable, "bench/faults.py", "--actions", "150", "--fault-every", "40",
         "--tool-delay", "0.5", "--database", database, "--redis-port", str(_spare_redis_port()),
         "--drain-timeout", "120", "--out", str(out)],
        cwd=BASE_DIR, capture_output=True, text=True, timeout=240, check=False,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads(out.read_text())

    assert [f["kind"] for f in report["faults"]] == [
        "sigkill_worker", "pg_terminate", "redis_restart"]
    assert report["actions_approved"] == 155  # 150 + 5 committed while redis was down
    assert report["side_effects"] == 155
    assert report["keys_with_multiple_effects"] == 0
    assert report["proposals_with_multiple_effects"] == 0
    assert report["overlapping_same_key_requests"] == 0
    assert report["stranded_after_drain"] == 0
    assert report["executions_by_status"]["succeeded"] == 155
    assert report["violations"] == []
    # The faults bit: sessions were killed mid-task and the finish survived it.
    pg = report["faults"][1]
    assert pg["terminated"] >= 1
