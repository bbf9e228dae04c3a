"""Dataset export: peak Python memory and throughput against row count.

    .venv/bin/python bench/export_memory.py [--sizes 10000,200000,1000000] [--format jsonl]

Uses its own PostgreSQL database (BENCH_DATABASE_URL, default
postgres://postgres@127.0.0.1:5432/gatehouse_bench_export), dropped and re-created on
every run, and fills it with INSERT ... SELECT generate_series so a million examples
take seconds. For each size it cuts a dataset version through the real service and
exports it through the real service:

- once timed, measuring rows/s and the process's peak RSS during the
  export (Linux VmHWM, reset through /proc/self/clear_refs just before): no overhead,
  so it runs at every size, 1M included;
- once under tracemalloc (peak bytes of Python allocations) for sizes up to
  --traced-max (tracemalloc slows the export about fivefold).

The claim under test is constant memory: each size's peak divided by the smallest
size's peak (same run, same machine) stays near 1.

Writes bench/results/export_memory.json.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import re
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime
from pathlib import Path
from urllib.parse import urlparse

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/gatehouse_bench_export"


def _recreate_database(url: str) -> None:
    import psycopg

    parts = urlparse(url)
    name = parts.path.lstrip("/")
    admin = parts._replace(path="/postgres").geturl()
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def _rss_kib(field: str) -> int:
    status = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", status).group(1))  # type: ignore[union-attr]


def _reset_peak_rss() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="10000,200000,1000000")
    parser.add_argument("--format", default="jsonl", choices=["jsonl", "csv", "openai"])
    parser.add_argument("--traced-max", type=int, default=200_000,
                        help="largest size also exported under tracemalloc")
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "export_memory.json"))
    args = parser.parse_args()
    sizes = sorted(int(s) for s in args.sizes.split(","))

    url = os.environ.get("BENCH_DATABASE_URL", DEFAULT_URL)
    _recreate_database(url)
    os.environ["DATABASE_URL"] = url
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings.test")
    tmp = Path(tempfile.mkdtemp(prefix="gatehouse-bench-export-"))
    os.environ["GATEHOUSE_EXPORT_DIR"] = str(tmp)

    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from django.db import connection

    settings.GATEHOUSE_EXPORT_DIR = tmp
    call_command("migrate", verbosity=0)

    from agents import services as agent_services
    from agents.audit import SYSTEM
    from agents.models import Tool, Workflow
    from agents.policy import DEFAULT_POLICY_YAML
    from approvals import services as approvals
    from shadow import services
    from shadow.models import LabeledExample

    workflow = Workflow.objects.create(name="Bench", slug="bench", autonomy_level=2)
    Tool.objects.create(name="jira.create_ticket", category="jira", executor_target="demo.record")
    agent_services.policy_publish(actor=SYSTEM, workflow=workflow, document=DEFAULT_POLICY_YAML)
    agent = agent_services.agent_create(actor=SYSTEM, name="bench-bot",
                                        workflows=[workflow]).agent
    run = approvals.run_open(actor=agent, workflow=workflow, case_ref="T-1")
    proposal = approvals.proposal_submit(
        actor=agent, run=run, tool_name="jira.create_ticket",
        arguments={"project": "SUP", "summary": "Printer on fire"},
        idempotency_key="bench").proposal

    table = LabeledExample._meta.db_table
    agent_output = json.dumps({"tool": "jira.create_ticket", "text": "",
                               "arguments": {"project": "SUP", "summary": "Printer on fire"}})
    started = time.monotonic()
    with connection.cursor() as cur:
        for n in sizes:
            cur.execute(
                f"""INSERT INTO {table} (workflow_id, proposal_id, source, agent_version,
                    tool_name, context, agent_output, human_output, is_good,
                    failure_category, note, created_at)
                SELECT %s, %s, 'edit', %s, 'jira.create_ticket',
                    jsonb_build_object('case_ref', 'T-' || g, 'rationale',
                        'Customer anna@example.com says the printer on floor 3 is on fire '
                        || 'again; ticket ' || g),
                    %s::jsonb,
                    jsonb_build_object('tool', 'jira.create_ticket', 'text', '',
                        'arguments', jsonb_build_object('project', 'SUP',
                        'summary', 'Printer on fire, floor 3 (#' || g || ')')),
                    false, 'wrong_params', '', now()
                FROM generate_series(1, %s) g""",
                [workflow.pk, proposal.pk, f"bench-{n}", agent_output, n])
    seed_seconds = time.monotonic() - started
    dataset = services.dataset_create(actor=SYSTEM, workflow=workflow, name="bench")

    results = []
    for n in sizes:
        t0 = time.monotonic()
        version = services.dataset_version_create(actor=SYSTEM, dataset=dataset,
                                                  filters={"agent_version": f"bench-{n}"})
        cut_seconds = time.monotonic() - t0
        assert version.example_count == n, (version.example_count, n)

        if not results:
            # Warm-up on the smallest size: first-use imports and caches are not rows.
            warm = services.export_start(actor=SYSTEM, version=version, format=args.format,
                                         enqueue=False)
            Path(services.export_run(job_id=warm.pk).file_path).unlink()
        job = services.export_start(actor=SYSTEM, version=version, format=args.format,
                                    enqueue=False)
        gc.collect()
        rss_before = _rss_kib("VmRSS")
        rss_reset = _reset_peak_rss()
        t0 = time.monotonic()
        job = services.export_run(job_id=job.pk)
        seconds = time.monotonic() - t0
        rss_peak = _rss_kib("VmHWM") * 1024 if rss_reset else None
        rss_growth = max(rss_peak - rss_before * 1024, 0) if rss_peak is not None else None
        size = Path(job.file_path).stat().st_size
        Path(job.file_path).unlink()
        assert job.rows_done == n

        peak = None
        if n <= args.traced_max:
            job = services.export_start(actor=SYSTEM, version=version, format=args.format,
                                        enqueue=False)
            gc.collect()
            tracemalloc.start()
            job = services.export_run(job_id=job.pk)
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
            Path(job.file_path).unlink()
        row = {"rows": n, "tracemalloc_peak_bytes": peak, "rss_peak_bytes": rss_peak,
               "rss_peak_growth_bytes": rss_growth,
               "seconds": round(seconds, 2), "rows_per_second": round(n / seconds),
               "file_bytes": size, "cut_version_seconds": round(cut_seconds, 2)}
        results.append(row)
        print(f"{n:>9} rows: tracemalloc peak "
              f"{'-' if peak is None else f'{peak / 1e6:.2f} MB'}, RSS growth "
              f"{'-' if rss_growth is None else f'{rss_growth / 1e6:.2f} MB'} "
              f"(peak {'-' if rss_peak is None else f'{rss_peak / 1e6:.1f} MB'}), "
              f"{row['rows_per_second']} rows/s, {seconds:.1f} s, file {size / 1e6:.1f} MB, "
              f"cut {cut_seconds:.1f} s", flush=True)

    for key, ratio in (("tracemalloc_peak_bytes", "tracemalloc_ratio_vs_smallest"),
                       ("rss_peak_bytes", "rss_peak_ratio_vs_smallest")):
        base = results[0][key]
        for row in results:
            row[ratio] = round(row[key] / base, 3) if base and row[key] is not None else None
    report = {
        "benchmark": "dataset export memory and throughput",
        "format": args.format,
        "batch_size": services.EXPORT_BATCH,
        "baseline_rows": results[0]["rows"],
        "results": results,
        "max_tracemalloc_ratio": max((r["tracemalloc_ratio_vs_smallest"] or 0)
                                     for r in results),
        "max_rss_peak_ratio": max((r["rss_peak_ratio_vs_smallest"] or 0) for r in results),
        "pii_redaction": True,
        "seed_seconds": round(seed_seconds, 1),
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {os.cpu_count()} cpus",
        "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "note": "tracemalloc peak = peak of Python allocations during one export; peak "
                "RSS = VmHWM of the whole process during the untraced export (reset just "
                "before it), growth = that minus VmRSS before it; rows/s "
                "from the untraced export. The policy redacts PII, so every string of "
                "every row goes through approvals.pii.redact.",
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"max ratio vs {results[0]['rows']} rows: tracemalloc "
          f"{report['max_tracemalloc_ratio']}, peak RSS {report['max_rss_peak_ratio']} "
          f"-> {out}")
    connection.close()
    _recreate_database(url)  # leave no million-row database behind
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
