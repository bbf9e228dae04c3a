"""`manage.py verify_audit`: walk the audit hash chain and name the first broken entry.

Exit status 0 when every event verifies, 1 at the first break, so cron or a CI job can
alert on it. The chain exposes tampering the database triggers cannot stop (a
superuser who drops the trigger, a restored backup edited offline).
"""

from __future__ import annotations

from typing import Any

from django.core.management.base import BaseCommand, CommandParser

from agents.audit import verify_chain


class Command(BaseCommand):
    help = "Verify the audit log's hash chain; print the first broken entry, exit 1 if any."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("--batch-size", type=int, default=5000,
                            help="events read per query (memory stays flat on long chains)")

    def handle(self, *args: Any, **options: Any) -> None:
        checked, broken = verify_chain(batch_size=max(1, options["batch_size"]))
        if broken is None:
            self.stdout.write(self.style.SUCCESS(f"OK: {checked} events verified"))
            return
        self.stderr.write(
            f"BROKEN at event #{broken.event_id}: {broken.problem} "
            f"({checked} events before it verified)"
        )
        # SystemExit rather than CommandError: the message above is the whole report.
        raise SystemExit(1)
