from __future__ import annotations

from typing import Any

import pytest
from rest_framework.test import APIClient

from agents.models import Agent, AutonomyLevel, Workflow
from approvals.models import Proposal
from tests.factories import open_run, submit


@pytest.fixture
def shadow_workflow(workflow: Workflow) -> Workflow:
    """support-triage at level 0: every proposal is recorded only."""
    Workflow.objects.filter(pk=workflow.pk).update(autonomy_level=AutonomyLevel.SHADOW)
    workflow.refresh_from_db()
    return workflow


def shadow_proposal(agent: Agent, workflow: Workflow, case_ref: str = "T-1",
                    tool: str = "jira.create_ticket", arguments: dict[str, Any] | None = None,
                    **kwargs: Any) -> Proposal:
    return submit(open_run(agent, workflow, case_ref=case_ref), tool=tool,
                  arguments=arguments, **kwargs)


@pytest.fixture
def reviewer_api(reviewer) -> APIClient:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.force_login(reviewer)
    return client
