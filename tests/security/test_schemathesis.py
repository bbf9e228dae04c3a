"""Property-based fuzzing of the agent API from its own OpenAPI schema (schemathesis).

Every operation in /api/schema/ is called in-process (WSGI) with generated valid and
invalid input, authenticated as a real agent that has an open run, a decided proposal and
a pending one; the only check is that nothing is ever a 5xx. A second test aims the
proposal body generator at the agent's real open run, so the gateway, the budgets and
the database are reached instead of a 400 for an unknown run id.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest
import schemathesis
from django.core.wsgi import get_wsgi_application
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from rest_framework.test import APIClient
from schemathesis.checks import not_a_server_error

from agents.audit import SYSTEM
from approvals import services
from approvals.models import Run
from tests.factories import make_agent, open_run, submit

# Real commits (transactional_db): the WSGI handler closes the connection after each
# request, which would end a test-wrapping transaction.
pytestmark = pytest.mark.django_db(transaction=True)

FUZZ = settings(max_examples=30, deadline=None, database=None,
                suppress_health_check=list(HealthCheck))


@dataclass
class FuzzAgent:
    token: str
    run: Run

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


@pytest.fixture
def api_schema(transactional_db: None):  # type: ignore[no-untyped-def]
    return schemathesis.openapi.from_wsgi("/api/schema/", get_wsgi_application())


@pytest.fixture
def fuzz_agent(transactional_db: None, workflow, reviewer) -> FuzzAgent:  # type: ignore[no-untyped-def]
    agent, token = make_agent(workflow, name="fuzz-bot")
    run = open_run(agent, workflow, case_ref="FUZZ-1")
    decided = submit(run)
    services.proposal_reject(actor=reviewer, proposal=decided, expected_version=decided.version,
                             reason_code="other", note="")
    submit(run, tool="confluence.search", arguments={"q": "pending"})
    assert SYSTEM is not None
    return FuzzAgent(token=token, run=run)


def _bounded(case) -> None:  # type: ignore[no-untyped-def]
    # GET /proposals/{id}/?wait=N long-polls up to 30 s by design; keep valid waits short
    # so the suite stays fast (invalid values are still sent as generated).
    if case.query and isinstance(case.query.get("wait"), int) and 0 < case.query["wait"]:
        case.query["wait"] = 1


schema = schemathesis.pytest.from_fixture("api_schema")


@schema.parametrize()
@FUZZ
def test_no_api_operation_returns_a_server_error(case, fuzz_agent: FuzzAgent) -> None:  # type: ignore[no-untyped-def]
    _bounded(case)
    case.call_and_validate(headers=fuzz_agent.headers, checks=[not_a_server_error])


# The schema's `arguments` is "any JSON", so schemathesis mostly produces lists and strings
# and stops at the first 400. This generator aims at the gateway instead: objects shaped
# like the registered tools' arguments, unknown tools, reused idempotency keys, a shared
# run that runs out of budget, and text from the whole Unicode range (NUL, surrogates).
ANY_CHAR = st.characters(exclude_categories=())
json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(ANY_CHAR, max_size=40),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(ANY_CHAR, max_size=15), inner, max_size=4),
    max_leaves=25)
arguments = st.one_of(
    st.dictionaries(st.text(ANY_CHAR, max_size=30), json_values, max_size=6),
    st.fixed_dictionaries({"project": st.text(ANY_CHAR, max_size=10),
                           "summary": st.text(ANY_CHAR, max_size=300)},
                          optional={"priority": st.sampled_from(["low", "high", "urgent"])}),
    st.fixed_dictionaries({"channel": st.sampled_from(["#customers", "#general", "general"])
                           | st.text(ANY_CHAR, max_size=20),
                           "text": st.text(ANY_CHAR, max_size=100)}),
    json_values)
proposal_bodies = st.fixed_dictionaries(
    {"tool": st.sampled_from(["jira.create_ticket", "confluence.search", "slack.send_message",
                              "jira.close_ticket"]) | st.text(ANY_CHAR, max_size=120),
     "arguments": arguments},
    optional={"draft_text": st.text(ANY_CHAR, max_size=200),
              "rationale": st.text(ANY_CHAR, max_size=200),
              "model": st.text(ANY_CHAR, max_size=120),
              "agent_version": st.text(ANY_CHAR, max_size=120),
              "tokens": st.integers(-5, 2**40) | st.text(max_size=5),
              "cost": st.decimals(allow_nan=False, allow_infinity=False, places=8).map(str)
              | st.floats(allow_nan=False, allow_infinity=False) | st.text(max_size=8)})


def test_proposal_bodies_against_a_real_open_run_never_return_a_server_error(
    fuzz_agent: FuzzAgent, workflow
) -> None:  # type: ignore[no-untyped-def]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=fuzz_agent.headers["Authorization"])
    seen: dict[int, int] = {}

    @given(body=proposal_bodies, fresh_run=st.booleans(),
           key=st.uuids().map(str), reuse_key=st.integers(0, 9))
    # derandomize: the same 150 bodies every run, so the reach check below cannot flake.
    @settings(max_examples=150, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def run(body: dict, fresh_run: bool, key: str, reuse_key: int) -> None:
        key = "reused-key" if reuse_key == 0 else key  # now and then: replay or 422
        target = open_run(fuzz_agent.run.agent, workflow) if fresh_run else fuzz_agent.run
        raw = json.dumps({**body, "run": target.pk})  # ensure_ascii: surrogates as \udxxx
        response = client.generic("POST", "/api/v1/proposals/", raw,
                                  content_type="application/json", HTTP_IDEMPOTENCY_KEY=key)
        seen[response.status_code] = seen.get(response.status_code, 0) + 1
        assert response.status_code < 500, (body, response.content[:500])

    run()
    # The generator reached the gateway (created and replayed proposals), not just 400s.
    assert seen.get(201, 0) >= 5, seen
    assert set(seen) <= {200, 201, 400, 403, 409, 422}, seen
