"""Replay a draft policy over a workflow's recent proposals: what would it change?

    manage.py replay_policy support-triage draft.yaml --last 200

Read-only (approvals.gateway.replay): nothing is written, claimed or enqueued. Exits
with an error naming the field when the draft does not validate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.core.exceptions import ValidationError
from django.core.management.base import BaseCommand, CommandError, CommandParser

from agents.models import Workflow
from agents.policy import parse_policy
from approvals import gateway


class Command(BaseCommand):
    help = "Show what a draft policy would have decided for a workflow's last N proposals."

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument("workflow", help="workflow slug")
        parser.add_argument("file", help="the draft policy YAML file")
        parser.add_argument("--last", type=int, default=100,
                            help="how many recent proposals to replay (default 100)")
        parser.add_argument("--changed-only", action="store_true",
                            help="list only the proposals whose decision would change")

    def handle(self, *args: Any, **options: Any) -> None:
        if options["last"] < 1:
            raise CommandError("--last must be at least 1")
        workflow = Workflow.objects.filter(slug=options["workflow"]).first()
        if workflow is None:
            raise CommandError(f"unknown workflow {options['workflow']!r}")
        try:
            document = Path(options["file"]).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise CommandError(f"cannot read {options['file']}: {exc}") from exc
        try:
            spec = parse_policy(document)
        except ValidationError as exc:
            lines = [f"  {field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()]
            raise CommandError("the draft policy is not valid:\n" + "\n".join(lines)) from exc

        rows = gateway.replay(workflow, spec, last=options["last"])
        changed = [r for r in rows if r.changed]
        out = self.stdout
        out.write(f"{'proposal':>9}  {'tool':<24} lvl  {'was':<22} {'would be':<22} why")
        for r in changed if options["changed_only"] else rows:
            mark = "*" if r.changed else " "
            out.write(f"{r.proposal_id:>8}{mark}  {r.tool_name[:24]:<24} {r.level:>3}  "
                      f"{r.was_status + '/' + r.was_decision:<22} "
                      f"{r.would.status + '/' + r.would.decision:<22} "
                      f"{'; '.join(r.would.reasons)}")
        out.write(f"{len(changed)} of {len(rows)} decisions would change "
                  f"(workflow {workflow.slug}, last {options['last']}).")
