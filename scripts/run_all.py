"""`make run`: web + Celery worker + beat in one terminal; Ctrl-C stops all three."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", default="8000")
    args = parser.parse_args()

    env = dict(os.environ)
    env.setdefault("DJANGO_DEBUG", "1")
    var = Path(env.get("GATEHOUSE_VAR_DIR", ROOT / "var"))
    for sub in ("broker", "broker-processed"):
        (var / sub).mkdir(parents=True, exist_ok=True)
    python = sys.executable
    embedded = not env.get("CELERY_BROKER_URL")
    worker = [python, "-m", "celery", "-A", "config", "worker", "--loglevel=INFO",
              "-Q", env.get("CELERY_QUEUE", "gatehouse")]
    if embedded:
        # One SQLite file is shared by web, worker and beat: one worker process keeps
        # its writers few. The solo pool acks as soon as a task ends; with prefork the
        # filesystem transport's consumer sits out a 2 s drain timeout per message.
        worker += ["--pool=solo"]
    commands = {
        "web": [python, "manage.py", "runserver", f"{args.host}:{args.port}", "--noreload"],
        "worker": worker,
        "beat": [python, "-m", "celery", "-A", "config", "beat", "--loglevel=INFO",
                 "--schedule", str(var / "celerybeat-schedule")],
    }
    procs = {name: subprocess.Popen(cmd, cwd=ROOT, env=env) for name, cmd in commands.items()}
    time.sleep(2)
    print("\n" + "=" * 70)
    print(f"Gatehouse is running at http://{args.host}:{args.port}/")
    print("  database:", env.get("DATABASE_URL") or f"SQLite ({var / 'gatehouse.sqlite3'})")
    print("  broker:  ", env.get("CELERY_BROKER_URL") or f"filesystem ({var / 'broker'})")
    print("  logins:   reviewer / reviewer-demo-2026   manager / manager-demo-2026   "
          "admin / admin-demo-2026")
    print(f"  API docs: http://{args.host}:{args.port}/api/docs/")
    token_file = ROOT / "var" / "demo-agent-token.txt"
    if token_file.exists():
        print(f"  agent token (support-bot): {token_file.read_text().strip()}")
    print("Ctrl-C stops web, worker and beat.")
    print("=" * 70 + "\n", flush=True)

    def stop(*_: object) -> None:
        for proc in procs.values():
            if proc.poll() is None:
                proc.terminate()

    signal.signal(signal.SIGTERM, stop)
    try:
        while all(p.poll() is None for p in procs.values()):
            time.sleep(0.5)
        for name, proc in procs.items():
            if proc.poll() is not None:
                print(f"{name} exited with {proc.returncode}; stopping the others.",
                      file=sys.stderr)
    except KeyboardInterrupt:
        pass
    finally:
        stop()
        for proc in procs.values():
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
