"""Shared machinery for the benchmarks: a throw-away database, a gunicorn server, a
private redis-server, a Celery worker, the fixtures, timing helpers, machine info.

Everything listens on 127.0.0.1 only, and every process started here is stopped by
the same object that started it.
"""

from __future__ import annotations

import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

BIN = BASE_DIR / ".venv" / "bin"
PYTHON = str(BIN / "python") if (BIN / "python").exists() else sys.executable
RESULTS_DIR = BASE_DIR / "bench" / "results"
LOG_DIR = Path(os.environ.get("BENCH_LOG_DIR", "/tmp/gatehouse-bench"))
PG_SERVER = os.environ.get("BENCH_PG_SERVER", "postgres://postgres@127.0.0.1:5432")
SETTINGS = "bench.bench_settings"


def free_port(preferred: range) -> int:
    for port in preferred:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError(f"no free port in {preferred}")


def wait_until(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.1,
               what: str = "condition") -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


def percentile(values: list[float], pct: float) -> float:
    """Nearest-rank percentile (no interpolation: a reported P95 is a real sample)."""
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))
    return ordered[int(rank) - 1]


def summary_ms(values: list[float]) -> dict[str, float]:
    return {"n": len(values), "median_ms": round(statistics.median(values) * 1000, 2),
            "p95_ms": round(percentile(values, 95) * 1000, 2),
            "min_ms": round(min(values) * 1000, 2), "max_ms": round(max(values) * 1000, 2)}


def machine_info() -> dict[str, Any]:
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                mem_gb = round(int(line.split()[1]) / 1024 / 1024, 1)
    except OSError:
        pass
    pg = ""
    try:
        pg = subprocess.run(["psql", f"{PG_SERVER}/postgres", "-tAc", "SHOW server_version"],
                            check=False, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return {"date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
            "cpus": os.cpu_count(), "cpu_model": model, "mem_gb": mem_gb,
            "python": platform.python_version(), "postgresql": pg,
            "platform": platform.platform()}


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"{name}.json"
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return path


# ----------------------------------------------------------------------- database


def _psql(sql: str) -> None:
    subprocess.run(["psql", f"{PG_SERVER}/postgres", "-v", "ON_ERROR_STOP=1", "-qc", sql],
                   check=True, capture_output=True, text=True, timeout=120)


def create_database(name: str) -> str:
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    _psql(f'CREATE DATABASE "{name}"')
    return f"{PG_SERVER}/{name}"


def drop_database(name: str) -> None:
    _psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# ---------------------------------------------------------------------- processes


class Proc:
    """A child process in its own process group, logging to a file."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        LOG_DIR.mkdir(parents=True, exist_ok=True)
        self.name = name
        self.log_path = LOG_DIR / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(argv, cwd=BASE_DIR, env=env, stdout=self._log,
                                     stderr=subprocess.STDOUT, start_new_session=True)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 15) -> None:
        if self.alive():
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
        self._log.close()


class RedisServer(Proc):
    """A private, persistence-free redis-server: never the shared one on 6379."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port(range(6393, 6400))
        super().__init__("redis", ["redis-server", "--port", str(self.port), "--bind",
                                   "127.0.0.1", "--save", "", "--appendonly", "no"], env)
        wait_until(self._ping, timeout=10, what="redis-server")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                s.sendall(b"PING\r\n")
                return s.recv(16).startswith(b"+PONG")
        except OSError:
            return False


class GunicornServer(Proc):
    def __init__(self, env: dict[str, str], workers: int = 2) -> None:
        self.port = free_port(range(8790, 8800))
        super().__init__("gunicorn", [
            str(BIN / "gunicorn"), "config.wsgi:application", "--bind",
            f"127.0.0.1:{self.port}", "--workers", str(workers), "--worker-class", "sync",
            "--backlog", "256", "--log-level", "warning", "--timeout", "60"], env)
        wait_until(self._ready, timeout=30, what="gunicorn")

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _ready(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"gunicorn exited:\n{self.log_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                return True
        except OSError:
            return False


class CeleryWorker(Proc):
    def __init__(self, env: dict[str, str], queue: str, concurrency: int = 2) -> None:
        super().__init__("celery-worker", [
            PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", queue, "-c",
            str(concurrency), "--pool", "prefork", "--include", "bench.bench_tasks",
            "-n", f"bench-{os.getpid()}@%h", "--without-gossip", "--without-mingle",
            "--without-heartbeat", "-l", "INFO"], env)
        wait_until(lambda: "ready." in self.log_text() or self._dead(), timeout=60,
                   what="celery worker")
        self._dead()

    def _dead(self) -> bool:
        if not self.alive():
            raise RuntimeError(f"celery worker exited:\n{self.log_text()[-2000:]}")
        return False


# ----------------------------------------------------------------------- fixtures


@dataclass
class Fixture:
    workflow_ids: list[int]   # [reviewer's workflow, two others]
    agent_id: int
    token: str
    tool_id: int
    policy_ids: list[int]
    reviewer_id: int
    session_key: str
    manager_session_key: str


def make_fixture() -> Fixture:
    """Users, three workflows at level 2 (suggest: everything queues), a tool running
    the demo Python executor, an agent registered for all three, a reviewer session."""
    from django.conf import settings
    from django.contrib.auth import (
        BACKEND_SESSION_KEY,
        HASH_SESSION_KEY,
        SESSION_KEY,
        get_user_model,
    )
    from django.contrib.auth.models import Group
    from django.contrib.sessions.backends.db import SessionStore

    from agents import services as agent_services
    from agents.audit import SYSTEM
    from agents.models import AutonomyLevel, Tool, Workflow
    from agents.policy import DEFAULT_POLICY_YAML
    from approvals.services import break_glass_get

    tool = Tool.objects.create(
        name="jira.create_ticket", category="jira", executor_kind="python",
        executor_target="demo.record",
        input_schema={"type": "object", "additionalProperties": False,
                      "required": ["project", "summary"],
                      "properties": {"project": {"type": "string", "minLength": 1},
                                     "summary": {"type": "string", "minLength": 1}}})
    workflows, policies = [], []
    for slug in ("support-triage", "billing", "onboarding"):
        group = Group.objects.create(name=f"{slug}-reviewers")
        wf = Workflow.objects.create(name=slug.title(), slug=slug, reviewer_group=group,
                                     autonomy_level=AutonomyLevel.SUGGEST)
        policies.append(agent_services.policy_publish(actor=SYSTEM, workflow=wf,
                                                      document=DEFAULT_POLICY_YAML))
        workflows.append(wf)
    issued = agent_services.agent_create(actor=SYSTEM, name="bench-bot", workflows=workflows)
    user = get_user_model().objects.create_user("bench-reviewer", password="x" * 20)
    user.groups.add(workflows[0].reviewer_group)
    manager = get_user_model().objects.create_user("bench-manager", password="x" * 20)
    manager.groups.add(Group.objects.get_or_create(name="managers")[0])
    break_glass_get()

    def session_for(who: Any) -> str:
        session = SessionStore()
        session[SESSION_KEY] = str(who.pk)
        session[BACKEND_SESSION_KEY] = settings.AUTHENTICATION_BACKENDS[0]
        session[HASH_SESSION_KEY] = who.get_session_auth_hash()
        session.create()
        return session.session_key or ""

    return Fixture(workflow_ids=[w.pk for w in workflows], agent_id=issued.agent.pk,
                   token=issued.token, tool_id=tool.pk, policy_ids=[p.pk for p in policies],
                   reviewer_id=user.pk, session_key=session_for(user),
                   manager_session_key=session_for(manager))
