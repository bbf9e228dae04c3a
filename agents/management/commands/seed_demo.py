"""Demo data for `make run`: users, a support-triage workflow, its tools, an agent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group
from django.core.management.base import BaseCommand
from django.db import transaction

from agents import services
from agents.audit import SYSTEM
from agents.models import Agent, AutonomyLevel, Tool, ToolRisk, Workflow
from agents.policy import DEFAULT_POLICY_YAML

DEMO_USERS = [
    # username, password, groups, superuser
    ("reviewer", "reviewer-demo-2026", ["support-reviewers"], False),
    ("manager", "manager-demo-2026", ["support-reviewers", "managers"], False),
    ("admin", "admin-demo-2026", ["managers"], True),
]

TOOLS: list[dict[str, Any]] = [
    {
        "name": "jira.create_ticket", "risk": ToolRisk.LOW, "comparator": "fields",
        "description": "Create a Jira ticket.",
        "input_schema": {
            "type": "object", "additionalProperties": False,
            "required": ["project", "summary"],
            "properties": {
                "project": {"type": "string", "minLength": 1, "maxLength": 20},
                "summary": {"type": "string", "minLength": 1, "maxLength": 255},
                "priority": {"enum": ["low", "medium", "high", "urgent"]},
                "description": {"type": "string", "maxLength": 20000},
            },
        },
    },
    {
        "name": "confluence.search", "risk": ToolRisk.LOW, "comparator": "fields",
        "description": "Search the knowledge base.",
        "input_schema": {
            "type": "object", "additionalProperties": False, "required": ["query"],
            "properties": {"query": {"type": "string", "minLength": 1, "maxLength": 500},
                           "limit": {"type": "integer", "minimum": 1, "maximum": 50}},
        },
    },
    {
        "name": "slack.send_message", "risk": ToolRisk.LOW, "comparator": "text",
        "description": "Post a message to a Slack channel.",
        "input_schema": {
            "type": "object", "additionalProperties": False, "required": ["channel", "text"],
            "properties": {"channel": {"type": "string", "pattern": "^#[a-z0-9_-]+$"},
                           "text": {"type": "string", "minLength": 1, "maxLength": 4000}},
        },
    },
    {
        "name": "jira.close_ticket", "risk": ToolRisk.HIGH, "comparator": "fields",
        "description": "Close a Jira ticket with a resolution.",
        "input_schema": {
            "type": "object", "additionalProperties": False,
            "required": ["ticket", "resolution"],
            "properties": {"ticket": {"type": "string", "pattern": "^[A-Z]+-[0-9]+$"},
                           "resolution": {"enum": ["fixed", "wontfix", "duplicate", "answered"]}},
        },
    },
]


class Command(BaseCommand):
    help = "Create demo users, the support-triage workflow, its tools and a demo agent."

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--level", type=int, default=AutonomyLevel.SUGGEST,
                            choices=[lv.value for lv in AutonomyLevel],
                            help="autonomy level for a newly created workflow")
        parser.add_argument("--quiet", action="store_true")
        parser.add_argument("--token-file", default="",
                            help="also write the demo agent's fresh token to this file (0600)")

    @transaction.atomic
    def handle(self, *args: Any, **options: Any) -> None:
        User = get_user_model()
        reviewers, _ = Group.objects.get_or_create(name="support-reviewers")
        for username, password, groups, superuser in DEMO_USERS:
            user = User.objects.filter(username=username).first()
            if user is None:
                user = User.objects.create_user(username=username, password=password,
                                                is_staff=superuser, is_superuser=superuser)
            user.groups.set([Group.objects.get_or_create(name=g)[0] for g in groups])

        for spec in TOOLS:
            Tool.objects.update_or_create(
                name=spec["name"],
                defaults={**spec, "category": spec["name"].split(".")[0],
                          "executor_kind": "python", "executor_target": "demo.record"},
            )

        workflow, created = Workflow.objects.get_or_create(
            slug="support-triage",
            defaults={"name": "Support triage", "reviewer_group": reviewers,
                      "autonomy_level": options["level"],
                      "description": "Triage inbound support tickets: search the knowledge "
                                     "base, file Jira tickets, reply in Slack."},
        )
        if created or not workflow.policies.exists():
            services.policy_publish(actor=SYSTEM, workflow=workflow,
                                    document=DEFAULT_POLICY_YAML, note="seed policy")

        agent = Agent.objects.filter(name="support-bot").first()
        if agent is None:
            issued = services.agent_create(actor=SYSTEM, name="support-bot",
                                           workflows=[workflow])
        else:
            # Raw tokens are never stored, so a demo re-seed issues a fresh one.
            issued = services.agent_rotate_token(actor=SYSTEM, agent=agent)
            agent.workflows.add(workflow)

        if options["token_file"]:
            path = Path(options["token_file"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(issued.token + "\n")
            path.chmod(0o600)
        if options["quiet"]:
            return
        self.stdout.write("Demo logins:")
        for username, password, groups, _ in DEMO_USERS:
            self.stdout.write(f"  {username:9} / {password:20} ({', '.join(groups)})")
        self.stdout.write(f"Demo agent 'support-bot' token (shown once): {issued.token}")
        self.stdout.write(f"Workflow '{workflow.slug}' at level {workflow.autonomy_level}")
