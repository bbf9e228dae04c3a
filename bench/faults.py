"""Fault campaign: approve many actions while killing the machinery under them.

    .venv/bin/python bench/faults.py --actions 2000

It creates its own PostgreSQL database (dropped at the end unless --keep-db), starts
its own redis-server on a spare port (never the shared one), the fake tool server and
two real Celery workers, then approves --actions proposals through the review
service. Every --fault-every approvals it injects the next fault, in turn:

* sigkill_worker  SIGKILL a whole worker (main process and its pool), then restart it;
* pg_terminate    pg_terminate_backend on the workers' database connections (it
                  waits up to 5 s for one to exist: workers hold one only mid-task);
* redis_restart   SIGKILL its redis-server (no persistence: every queued and unacked
                  message is lost), approve a few actions while the broker is down
                  (their publish fails: the outbox case), then start redis again;
* sigkill_child   SIGKILL one prefork pool child (the task returns to the queue).

The outbox sweeper runs every --sweep-every seconds, as beat would. Afterwards it
drains (sweeps until nothing is queued, running or held, bounded by --drain-timeout)
and reports, as JSON in bench/results/faults.json:

* actions approved; requests the tool received and side effects it applied;
* keys with two or more requests (redelivery: allowed) and keys or proposals with two
  or more applied effects (a duplicated action: must be 0);
* executions stranded after the drain (must be 0), failed executions (must be 0:
  the tool never refuses here), succeeded executions whose key the tool never
  applied (must be 0);
* elapsed times.

It exits non-zero on any violation. The WorkerProcess and RedisServer helpers are
also used by tests/integration/.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

BASE_DIR = Path(__file__).resolve().parent.parent
if str(BASE_DIR) not in sys.path:
    sys.path.insert(0, str(BASE_DIR))

from bench.fake_tool_server import FakeToolServer  # noqa: E402
from bench.harness import wait_until  # noqa: E402

PYTHON = str(BASE_DIR / ".venv" / "bin" / "python") if (
    BASE_DIR / ".venv" / "bin" / "python").exists() else sys.executable
RESULTS = BASE_DIR / "bench" / "results" / "faults.json"
ACTIVE = ("queued", "running", "held")


# --------------------------------------------------------------------------- processes


class WorkerProcess:
    """One real `celery worker` in its own process group, logging to a file."""

    def __init__(self, *, env: dict[str, str], queue: str, name: str, log_path: Path,
                 concurrency: int = 2) -> None:
        self.env = env
        self.queue = queue
        self.name = name
        self.log_path = log_path
        self.concurrency = concurrency
        self.proc: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    def start(self) -> WorkerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self._log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            [PYTHON, "-m", "celery", "-A", "config", "worker", "-Q", self.queue,
             "-c", str(self.concurrency), "--pool", "prefork", "-n", f"{self.name}@%h",
             "--without-gossip", "--without-mingle", "--without-heartbeat", "-l", "INFO"],
            cwd=BASE_DIR, env=self.env, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: we kill the pool with it
        )
        log.close()
        return self

    def log_text(self) -> str:
        try:
            with open(self.log_path, "rb") as fh:
                fh.seek(self._log_offset)
                return fh.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    def log_text_all(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout: float = 60) -> None:
        def ready() -> bool:
            if self.proc is None or self.proc.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited early:\n{self.log_text()[-3000:]}")
            return " ready." in self.log_text()

        wait_until(ready, timeout=timeout, what=f"worker {self.name} to be ready")

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def children(self) -> list[int]:
        try:
            text = Path(f"/proc/{self.pid}/task/{self.pid}/children").read_text()
        except OSError:
            return []
        return [int(p) for p in text.split()]

    def kill(self) -> None:
        """SIGKILL the whole worker: no warm shutdown, no chance to ack or requeue."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=10)

    def kill_child(self) -> int | None:
        children = self.children()
        if not children:
            return None
        os.kill(children[0], signal.SIGKILL)
        return children[0]

    def stop(self, timeout: float = 15) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.kill()
        except ProcessLookupError:
            pass
        # The pool children share the group; make sure none outlives the main process.
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


class RedisServer:
    """A private, throwaway redis-server: no persistence, so a restart loses everything."""

    def __init__(self, port: int, log_path: Path) -> None:
        self.port = port
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _ping(self) -> bool:
        done = subprocess.run(["redis-cli", "-p", str(self.port), "ping"],
                              capture_output=True, text=True, check=False)
        return done.stdout.strip() == "PONG"

    def start(self) -> RedisServer:
        if self._ping():
            raise RuntimeError(f"something already listens on port {self.port}")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(
            ["redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--daemonize", "no"],
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        log.close()
        wait_until(self._ping, timeout=10, what=f"redis on {self.port}")
        return self

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(timeout=10)

    def restart(self) -> None:
        self.kill()
        self.start()


def worker_env(*, database_url: str, broker_url: str, queue: str, var_dir: str,
               app_name: str, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("CELERY_", "GATEHOUSE_"))}
    env.update({
        "DJANGO_SETTINGS_MODULE": "config.settings.test",
        "DATABASE_URL": database_url,
        "CELERY_BROKER_URL": broker_url,
        "CELERY_QUEUE": queue,
        "GATEHOUSE_VAR_DIR": var_dir,
        # libpq reads PGAPPNAME: lets a test find (and terminate) the workers' sessions.
        "PGAPPNAME": app_name,
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra or {})
    return env


def terminate_backends(dsn: str, dbname: str, app_name: str) -> int:
    import psycopg

    with psycopg.connect(dsn, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name = %s AND pid <> pg_backend_pid()",
            [dbname, app_name],
        ).fetchall()
    return len(rows)


# --------------------------------------------------------------------------- campaign


def _admin_dsn(server_url: str) -> str:
    return f"{server_url.rstrip('/')}/postgres"


def _create_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_admin_dsn(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _drop_database(server_url: str, name: str) -> None:
    import psycopg

    with psycopg.connect(_admin_dsn(server_url), autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


class Campaign:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.run_id = uuid.uuid4().hex[:8]
        self.queue = f"gatehouse-faults-{self.run_id}"
        self.app_name = f"gh-faults-worker-{self.run_id}"
        self.var_dir = Path(f"/tmp/gatehouse-faults-{self.run_id}")
        self.database_url = f"{args.pg.rstrip('/')}/{args.database}"
        self.redis = RedisServer(args.redis_port, self.var_dir / "redis.log")
        self.tool = FakeToolServer(delay=args.tool_delay)
        self.workers: list[WorkerProcess] = []
        self.faults: list[dict[str, Any]] = []
        self._last_sweep = 0.0
        self.sweeps = 0
        self.republished = 0

    # The bench process and the workers share these settings.
    def common_env(self) -> dict[str, str]:
        return {
            "CELERY_TASK_TIME_LIMIT": str(self.args.time_limit),
            "CELERY_VISIBILITY_TIMEOUT": "60",
            "GATEHOUSE_WEBHOOK_TIMEOUT": "1",
            "GATEHOUSE_OUTBOX_GRACE_SECONDS": str(self.args.grace),
            "GATEHOUSE_EXECUTION_MAX_RETRIES": "8",
            "GATEHOUSE_BREAKER_THRESHOLD": "1000000",
            "DJANGO_SECRET_KEY": "faults-bench-secret-key-not-for-production-0123456789",
        }

    def setup(self) -> None:
        self.var_dir.mkdir(parents=True, exist_ok=True)
        _create_database(self.args.pg, self.args.database)
        env = {**os.environ, **self.common_env(), "DATABASE_URL": self.database_url,
               "DJANGO_SETTINGS_MODULE": "config.settings.test",
               "GATEHOUSE_VAR_DIR": str(self.var_dir)}
        subprocess.run([PYTHON, "manage.py", "migrate", "-v", "0"], cwd=BASE_DIR, env=env,
                       check=True)
        self.redis.start()
        os.environ.update(self.common_env())
        os.environ.update({"DATABASE_URL": self.database_url,
                           "CELERY_BROKER_URL": self.redis.url, "CELERY_QUEUE": self.queue,
                           "DJANGO_SETTINGS_MODULE": "config.settings.test",
                           "GATEHOUSE_VAR_DIR": str(self.var_dir)})
        import django

        django.setup()
        self.tool.start()
        for i in range(self.args.workers):
            worker = WorkerProcess(
                env=worker_env(database_url=self.database_url, broker_url=self.redis.url,
                               queue=self.queue, var_dir=str(self.var_dir),
                               app_name=self.app_name, extra=self.common_env()),
                queue=self.queue, name=f"faults{i}-{self.run_id}",
                log_path=self.var_dir / f"worker{i}.log", concurrency=self.args.concurrency,
            )
            self.workers.append(worker.start())
        for worker in self.workers:
            worker.wait_ready()

    def seed(self) -> None:
        from django.contrib.auth import get_user_model
        from django.contrib.auth.models import Group

        from agents import services as agent_services
        from agents.audit import SYSTEM
        from agents.models import AutonomyLevel, Tool, Workflow
        from agents.policy import DEFAULT_POLICY_YAML

        group = Group.objects.create(name="fault-reviewers")
        self.reviewer = get_user_model().objects.create_user("fault-reviewer", password="x" * 12)
        self.reviewer.groups.add(group)
        Tool.objects.create(
            name="jira.create_ticket", category="jira", executor_kind="webhook",
            executor_target=self.tool.url("/tool"),
            input_schema={"type": "object", "required": ["project", "summary"]},
        )
        self.workflow = Workflow.objects.create(
            name="Fault campaign", slug="fault-campaign",
            autonomy_level=AutonomyLevel.SUGGEST, reviewer_group=group,
        )
        agent_services.policy_publish(actor=SYSTEM, workflow=self.workflow,
                                      document=DEFAULT_POLICY_YAML)
        self.agent = agent_services.agent_create(actor=SYSTEM, name="fault-bot",
                                                 workflows=[self.workflow]).agent

    def approve_one(self, i: int) -> None:
        from approvals import services
        from shadow.services import review_approve

        run = services.run_open(actor=self.agent, workflow=self.workflow, case_ref=f"F-{i}",
                                agent_version="v1")
        proposal = services.proposal_submit(
            actor=self.agent, run=run, tool_name="jira.create_ticket",
            arguments={"project": "SUP", "summary": f"fault action {i}"},
            idempotency_key=f"fault-{i}", tokens=10,
        ).proposal
        review_approve(actor=self.reviewer, proposal=proposal,
                       expected_version=proposal.version)

    def maybe_sweep(self, *, force: bool = False) -> None:
        from approvals.execution import executions_sweep

        now = time.monotonic()
        if force or now - self._last_sweep >= self.args.sweep_every:
            self._last_sweep = now
            self.republished += executions_sweep()
            self.sweeps += 1

    # ---------------------------------------------------------------- faults

    def fault(self, kind: str, index: int) -> None:
        from approvals.models import Execution, ExecutionStatus

        started = time.monotonic()
        # How many executions were mid-flight when the fault hit: evidence it bit.
        detail: dict[str, Any] = {
            "kind": kind, "at_action": index,
            "running_at_fault": Execution.objects.filter(status=ExecutionStatus.RUNNING).count(),
            "queued_at_fault": Execution.objects.filter(status=ExecutionStatus.QUEUED).count(),
        }
        if kind == "sigkill_worker":
            worker = self.workers[len(self.faults) % len(self.workers)]
            detail["pid"] = worker.pid
            worker.kill()
            worker.start()
            worker.wait_ready()
        elif kind == "sigkill_child":
            worker = self.workers[len(self.faults) % len(self.workers)]
            detail["pid"] = worker.kill_child()
        elif kind == "redis_restart":
            self.redis.kill()
            # Approvals keep committing while the broker is down: their publish fails
            # and only the outbox sweeper can save them.
            for j in range(self.args.outage_actions):
                self.approve_one(10_000_000 + index * 100 + j)
            detail["approved_during_outage"] = self.args.outage_actions
            self.redis.start()
        elif kind == "pg_terminate":
            # Workers hold a connection only while a task runs: catch them at it.
            deadline = time.monotonic() + 5
            terminated = 0
            while not terminated and time.monotonic() < deadline:
                terminated = terminate_backends(
                    _admin_dsn(self.args.pg), self.args.database, self.app_name)
                if not terminated:
                    time.sleep(0.05)
            detail["terminated"] = terminated
        detail["seconds"] = round(time.monotonic() - started, 2)
        self.faults.append(detail)
        print(f"  fault {detail}", flush=True)

    # ---------------------------------------------------------------- run

    def active_count(self) -> int:
        from approvals.models import Execution

        return Execution.objects.filter(status__in=ACTIVE).count()

    def run(self) -> dict[str, Any]:
        from django.db import close_old_connections

        from approvals.models import Execution, ExecutionStatus

        kinds = ["sigkill_worker", "pg_terminate", "redis_restart", "sigkill_child"]
        every = self.args.fault_every or max(self.args.actions // 12, 25)
        t0 = time.monotonic()
        for i in range(1, self.args.actions + 1):
            self.approve_one(i)
            if i % every == 0 and i < self.args.actions:
                self.fault(kinds[len(self.faults) % len(kinds)], i)
            self.maybe_sweep()
            if i % 250 == 0:
                print(f"  approved {i}", flush=True)
        approve_seconds = time.monotonic() - t0
        t1 = time.monotonic()
        deadline = t1 + self.args.drain_timeout
        while time.monotonic() < deadline:
            close_old_connections()
            if self.active_count() == 0:
                break
            self.maybe_sweep()
            time.sleep(0.5)
        drain_seconds = time.monotonic() - t1

        approved = Execution.objects.count()
        by_status = {s: Execution.objects.filter(status=s).count() for s in ExecutionStatus}
        succeeded_keys = {str(k) for k in Execution.objects.filter(
            status=ExecutionStatus.SUCCEEDED).values_list("idempotency_key", flat=True)}
        stats = self.tool.stats()
        applied_keys = {k for k, n in self.tool.effects.items() if n > 0}
        report = {
            "actions_requested": self.args.actions,
            "actions_approved": approved,
            "approved_during_broker_outage": sum(
                f.get("approved_during_outage", 0) for f in self.faults),
            "tool_requests": stats["requests"],
            "side_effects": stats["effects"],
            "keys_with_repeated_requests": stats["keys_with_repeated_requests"],
            "keys_with_multiple_effects": stats["keys_with_multiple_effects"],
            "proposals_with_multiple_effects": stats["proposals_with_multiple_effects"],
            "overlapping_same_key_requests": stats["overlapping_same_key_requests"],
            "executions_by_status": by_status,
            "stranded_after_drain": sum(by_status[s] for s in ACTIVE),
            "succeeded_without_effect": len(succeeded_keys - applied_keys),
            "effects_without_success": len(applied_keys - succeeded_keys),
            "faults": self.faults,
            "sweeps": self.sweeps,
            "sweep_republished": self.republished,
            "workers": self.args.workers,
            "concurrency_per_worker": self.args.concurrency,
            "approve_seconds": round(approve_seconds, 1),
            "drain_seconds": round(drain_seconds, 1),
            "elapsed_seconds": round(time.monotonic() - t0, 1),
            "settings": {"time_limit": self.args.time_limit, "grace": self.args.grace,
                         "sweep_every": self.args.sweep_every,
                         "tool_delay": self.args.tool_delay},
        }
        report["worker_log_evidence"] = self.log_evidence()
        report["violations"] = violations(report)
        return report

    def log_evidence(self) -> dict[str, int]:
        """How often the recovery paths actually ran, from the workers' logs."""
        text = "".join(w.log_text_all() for w in self.workers)
        return {
            "finish_retried_after_db_loss": text.count("database connection lost recording"),
            "duplicate_messages_skipped": text.count("'skipped'"),
            "worker_lost_errors": text.count("WorkerLostError"),
            "broker_reconnects": text.count("Connection to broker lost"),
            "tasks_failed_with_exception": text.count("] raised unexpected"),
        }

    def teardown(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.redis.kill()
        self.tool.stop()
        try:
            from django.db import connections

            connections.close_all()
        except Exception:  # noqa: BLE001 - django may not be set up yet
            pass
        if not self.args.keep_db:
            _drop_database(self.args.pg, self.args.database)


def violations(report: dict[str, Any]) -> list[str]:
    found = []
    for field in ("keys_with_multiple_effects", "proposals_with_multiple_effects",
                  "overlapping_same_key_requests", "stranded_after_drain",
                  "succeeded_without_effect", "effects_without_success"):
        if report[field]:
            found.append(f"{field} = {report[field]}")
    if report["executions_by_status"].get("failed"):
        found.append(f"failed executions = {report['executions_by_status']['failed']}")
    if report["side_effects"] != report["actions_approved"]:
        found.append(f"side_effects {report['side_effects']} != approved "
                     f"{report['actions_approved']}")
    return found


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description="Gatehouse exactly-once fault campaign")
    p.add_argument("--actions", type=int, default=2000)
    p.add_argument("--fault-every", type=int, default=0,
                   help="inject a fault every N approvals (default actions/12, min 25)")
    p.add_argument("--outage-actions", type=int, default=5,
                   help="approvals committed while the broker is down, per redis restart")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--concurrency", type=int, default=2)
    p.add_argument("--pg", default="postgres://postgres@127.0.0.1:5432",
                   help="PostgreSQL server URL (no database name)")
    p.add_argument("--database", default="gh_faults")
    p.add_argument("--redis-port", type=int, default=6391)
    p.add_argument("--tool-delay", type=float, default=0.25,
                   help="seconds the fake tool takes per request (widens the kill window)")
    p.add_argument("--time-limit", type=int, default=12,
                   help="CELERY_TASK_TIME_LIMIT; a RUNNING row is stale after this + 30 s")
    p.add_argument("--grace", type=int, default=10, help="GATEHOUSE_OUTBOX_GRACE_SECONDS")
    p.add_argument("--sweep-every", type=float, default=5.0)
    p.add_argument("--drain-timeout", type=float, default=240.0)
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--keep-db", action="store_true")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    campaign = Campaign(args)
    print(f"fault campaign: {args.actions} actions, db {args.database}, "
          f"redis :{args.redis_port}, logs in {campaign.var_dir}", flush=True)
    try:
        campaign.setup()
        campaign.seed()
        report = campaign.run()
    finally:
        campaign.teardown()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "faults"}, indent=2))
    if report["violations"]:
        print("VIOLATIONS: " + "; ".join(report["violations"]), file=sys.stderr)
        return 1
    print(f"ok: {report['actions_approved']} approved, {report['side_effects']} side effects, "
          f"0 duplicated, 0 stranded, {report['elapsed_seconds']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
