"""factory_boy factories and helpers shared by every test folder."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import factory
from django.contrib.auth import get_user_model
from django.contrib.auth.models import Group

from agents import services as agent_services
from agents.audit import SYSTEM
from agents.models import Agent, AutonomyLevel, Tool, ToolRisk, Workflow
from agents.policy import DEFAULT_POLICY_YAML
from approvals import services
from approvals.models import Proposal, Run

JIRA_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["project", "summary"],
    "properties": {"project": {"type": "string", "minLength": 1},
                   "summary": {"type": "string", "minLength": 1, "maxLength": 255},
                   "priority": {"enum": ["low", "medium", "high"]}},
}
SLACK_SCHEMA = {
    "type": "object", "required": ["channel", "text"],
    "properties": {"channel": {"type": "string", "pattern": "^#[a-z0-9_-]+$"},
                   "text": {"type": "string", "minLength": 1}},
}


class UserFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = get_user_model()
        django_get_or_create = ("username",)
        skip_postgeneration_save = True

    username = factory.Sequence(lambda n: f"user{n}")
    password = factory.PostGenerationMethodCall("set_password", "pw-for-tests-123")

    @factory.post_generation
    def _save(obj, create: bool, extracted: object, **kwargs: object) -> None:
        if create:
            obj.save()


class WorkflowFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Workflow
        django_get_or_create = ("slug",)

    name = factory.Sequence(lambda n: f"Workflow {n}")
    slug = factory.Sequence(lambda n: f"workflow-{n}")
    autonomy_level = AutonomyLevel.SUGGEST
    reviewer_group = factory.LazyFunction(
        lambda: Group.objects.get_or_create(name="support-reviewers")[0])


class ToolFactory(factory.django.DjangoModelFactory):
    class Meta:
        model = Tool
        django_get_or_create = ("name",)

    name = "jira.create_ticket"
    category = factory.LazyAttribute(lambda o: o.name.split(".")[0])
    risk = ToolRisk.LOW
    input_schema = factory.LazyAttribute(
        lambda o: SLACK_SCHEMA if o.name == "slack.send_message" else
        JIRA_SCHEMA if o.name == "jira.create_ticket" else {"type": "object"})
    executor_kind = "python"
    executor_target = "demo.record"


def make_tools() -> dict[str, Tool]:
    return {
        "jira.create_ticket": ToolFactory(name="jira.create_ticket"),
        "confluence.search": ToolFactory(name="confluence.search"),
        "slack.send_message": ToolFactory(name="slack.send_message"),
        "jira.close_ticket": ToolFactory(name="jira.close_ticket", risk=ToolRisk.HIGH),
    }


def publish(workflow: Workflow, document: str = DEFAULT_POLICY_YAML) -> None:
    agent_services.policy_publish(actor=SYSTEM, workflow=workflow, document=document)


def make_agent(workflow: Workflow, name: str = "support-bot") -> tuple[Agent, str]:
    issued = agent_services.agent_create(actor=SYSTEM, name=name, workflows=[workflow])
    return issued.agent, issued.token


def open_run(agent: Agent, workflow: Workflow, case_ref: str = "T-4711") -> Run:
    return services.run_open(actor=agent, workflow=workflow, case_ref=case_ref,
                             agent_version="v1")


_keys = iter(range(10**9))


def submit(run: Run, tool: str = "jira.create_ticket", arguments: dict[str, Any] | None = None,
           **kwargs: Any) -> Proposal:
    args = arguments if arguments is not None else {"project": "SUP", "summary": "Printer on fire"}
    kwargs.setdefault("idempotency_key", f"key-{next(_keys)}")
    kwargs.setdefault("cost", Decimal("0.01"))
    kwargs.setdefault("tokens", 100)
    return services.proposal_submit(actor=run.agent, run=run, tool_name=tool, arguments=args,
                                    **kwargs).proposal
