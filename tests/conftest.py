from __future__ import annotations

from collections.abc import Iterator

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from rest_framework.test import APIClient

from agents.models import Agent, Tool, Workflow
from tests.factories import UserFactory, WorkflowFactory, make_agent, make_tools, publish


@pytest.fixture
def _audit_truncate_guard(transactional_db: None) -> Iterator[None]:
    # Depends on transactional_db, so this teardown runs before its flush.
    with connection.cursor() as cur:
        cur.execute("ALTER TABLE agents_auditevent ENABLE TRIGGER audit_no_truncate")
    yield
    with connection.cursor() as cur:
        cur.execute("ALTER TABLE agents_auditevent DISABLE TRIGGER audit_no_truncate")


@pytest.fixture(autouse=True)
def _audit_truncate_allowed(request: pytest.FixtureRequest) -> None:
    """Transactional tests end with a TRUNCATE of every table, which the audit log's
    trigger refuses by design; let the test-database flush through, and only that."""
    if set(request.fixturenames) & {"transactional_db", "live_server", "celery_worker_proc"}:
        request.getfixturevalue("_audit_truncate_guard")


@pytest.fixture
def reviewers_group(db: None) -> Group:
    return Group.objects.get_or_create(name="support-reviewers")[0]


@pytest.fixture
def reviewer(reviewers_group: Group):  # type: ignore[no-untyped-def]
    user = UserFactory(username="reviewer")
    user.groups.add(reviewers_group)
    return user


@pytest.fixture
def other_reviewer(db: None):  # type: ignore[no-untyped-def]
    """A reviewer of some other workflow: sees nothing of support-triage."""
    user = UserFactory(username="outsider")
    user.groups.add(Group.objects.get_or_create(name="billing-reviewers")[0])
    return user


@pytest.fixture
def manager(reviewers_group: Group):  # type: ignore[no-untyped-def]
    user = UserFactory(username="manager")
    user.groups.add(reviewers_group, Group.objects.get_or_create(name="managers")[0])
    return user


@pytest.fixture
def tools(db: None) -> dict[str, Tool]:
    return make_tools()


@pytest.fixture
def workflow(tools: dict[str, Tool], reviewers_group: Group) -> Workflow:
    wf = WorkflowFactory(slug="support-triage", name="Support triage",
                         reviewer_group=reviewers_group)
    publish(wf)
    return wf


@pytest.fixture
def agent_and_token(workflow: Workflow) -> tuple[Agent, str]:
    return make_agent(workflow)


@pytest.fixture
def agent(agent_and_token: tuple[Agent, str]) -> Agent:
    return agent_and_token[0]


@pytest.fixture
def agent_client(agent_and_token: tuple[Agent, str]) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {agent_and_token[1]}")
    return client
