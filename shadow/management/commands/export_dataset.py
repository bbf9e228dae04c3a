"""Export one dataset version to a file, streaming, with the same service the web uses.

    manage.py export_dataset <dataset> <version> --format jsonl --out path
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.audit import SYSTEM
from shadow import services
from shadow.models import Dataset, DatasetVersion, ExportFormat


class Command(BaseCommand):
    help = "Export a dataset version as JSONL, CSV or OpenAI chat fine-tune JSONL."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("dataset", help="dataset id, or its name")
        parser.add_argument("version", type=int, help="version number")
        parser.add_argument("--format", choices=ExportFormat.values, default="jsonl")
        parser.add_argument("--out", required=True, help="output file path")
        parser.add_argument("--workflow", default="", help="workflow slug, if the name is "
                                                          "used in several workflows")

    def handle(self, *args: Any, **opts: Any) -> None:
        datasets = Dataset.objects.all()
        if opts["workflow"]:
            datasets = datasets.filter(workflow__slug=opts["workflow"])
        key = opts["dataset"]
        found = list(datasets.filter(pk=int(key)) if key.isdigit() else
                     datasets.filter(name=key))
        if len(found) != 1:
            problem = "not found" if not found else "ambiguous; add --workflow"
            raise CommandError(f"dataset {key!r}: {problem}")
        version = DatasetVersion.objects.filter(dataset=found[0],
                                                number=opts["version"]).first()
        if version is None:
            raise CommandError(f"dataset {found[0].name!r} has no version {opts['version']}")
        job = services.export_start(actor=SYSTEM, version=version, format=opts["format"],
                                    enqueue=False)
        started = time.monotonic()
        tty = sys.stderr.isatty()

        def progress(done: int, total: int) -> None:
            pct = 100 * done / total if total else 100
            line = f"{done}/{total} rows ({pct:.0f}%)"
            self.stderr.write(f"\r{line}" if tty else line, ending="")
            if not tty:
                self.stderr.write("")

        job = services.export_run(job_id=job.pk, out_path=Path(opts["out"]),
                                  on_progress=progress)
        if tty:
            self.stderr.write("")
        seconds = time.monotonic() - started
        self.stdout.write(f"export #{job.pk} {job.status}: {job.rows_done} rows to "
                          f"{job.file_path} in {seconds:.1f}s")
