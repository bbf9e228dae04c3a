"""The policy document: validation with field errors, the manager's policy page
(versions, publish, replay) and `manage.py replay_policy`."""

from __future__ import annotations

from io import StringIO
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.core.management import CommandError, call_command
from django.test import Client

from agents.models import AuditEvent, Policy, ReleaseNote, Workflow
from agents.policy import DEFAULT_POLICY_YAML, parse_policy
from approvals import gateway
from approvals.models import Proposal, ProposalStatus
from tests.factories import open_run, submit

URL = "/workflows/support-triage/policy/"


def _errors(document: str) -> dict[str, list[str]]:
    with pytest.raises(ValidationError) as exc:
        parse_policy(document)
    return exc.value.message_dict


def test_the_seed_shaped_default_parses() -> None:
    spec = parse_policy(DEFAULT_POLICY_YAML)
    assert spec.max_tool_calls == 8 and spec.max_total_tokens == 18000
    assert spec.allowed_tools == ("jira.create_ticket", "confluence.search", "slack.send_message")
    assert [r.describe() for r in spec.approval_rules] == [
        "jira.close_ticket",
        "slack.send_message when channels in ['#announcements', '#customers']"]
    assert spec.pii_redaction is True and spec.fallback["on_timeout"] == "human_handoff"


def test_an_empty_document_is_the_strictest_policy() -> None:
    spec = parse_policy("")
    assert spec.allowed_tools == () and spec.max_tool_calls is None


def test_bad_yaml_names_line_and_column() -> None:
    errors = _errors("max_tool_calls: 8\nallowed_tools: [a, b\nfallback: {}\n")
    assert list(errors) == ["document"]
    assert "not valid YAML (line 3, column" in errors["document"][0]


@pytest.mark.parametrize(("document", "field", "message"), [
    ("- a\n- b", "document", "must be a YAML mapping"),
    ("max_tool_call: 8", "max_tool_call", "unknown policy field"),
    ("1: x\nfoo: 2", "1", "unknown policy field"),  # mixed key types do not 500
    ("max_tool_calls: -1", "max_tool_calls", ">= 0"),
    ("max_tool_calls: 2.5", "max_tool_calls", "whole number"),
    ("max_tool_calls: true", "max_tool_calls", "whole number"),
    ("max_tool_calls: 99999999999", "max_tool_calls", "at most"),
    ("max_total_tokens: -5", "max_total_tokens", ">= 0"),
    ("max_total_tokens: lots", "max_total_tokens", "whole number"),
    ("max_cost_usd: -0.01", "max_cost_usd", "between 0 and"),
    ("max_cost_usd: .nan", "max_cost_usd", "between 0 and"),
    ("max_cost_usd: .inf", "max_cost_usd", "between 0 and"),
    ("max_cost_usd: cheap", "max_cost_usd", "between 0 and"),
    ("review_sla_minutes: 0", "review_sla_minutes", "at least 1 minute"),
    ("review_sla_minutes: 99999999", "review_sla_minutes", "at most"),
    ("allowed_tools: jira.create_ticket", "allowed_tools", "list of tool names"),
    ("allowed_tools: [jira, 3]", "allowed_tools", "list of tool names"),
    ("approval_required_tools: jira", "approval_required_tools", "must be a list"),
    ("approval_required_tools: [3]", "approval_required_tools[0]", "tool name or"),
    ("approval_required_tools: [{a: 1, b: 2}]", "approval_required_tools[0]", "tool name or"),
    ("approval_required_tools: [{slack.send_message: '#customers'}]",
     "approval_required_tools[0]", "conditions must be a mapping"),
    ("approval_required_tools: [{slack.send_message: {channels: '#customers'}}]",
     "approval_required_tools[0].channels", "non-empty list"),
    ("approval_required_tools: [{slack.send_message: {channels: []}}]",
     "approval_required_tools[0].channels", "non-empty list"),
    ("approval_required_tools: [{slack.send_message: {channels: [[a]]}}]",
     "approval_required_tools[0].channels", "plain values"),
    ("pii_redaction: yes please", "pii_redaction", "true or false"),
    ("dry_run: 1", "dry_run", "true or false"),
    ("fallback: human_handoff", "fallback", "must be a mapping"),
    ("fallback: {on_timeout: retry}", "fallback.on_timeout", "human_handoff, reject, escalate"),
    ("fallback: {on_error: reject}", "fallback.on_error", "unknown; expected one of"),
])
def test_each_bad_field_gets_its_own_error(document: str, field: str, message: str) -> None:
    errors = _errors(document)
    assert field in errors, errors
    assert message in " ".join(errors[field])


def test_all_errors_are_reported_at_once() -> None:
    errors = _errors("max_tool_calls: -1\npii_redaction: 3\nfallback: {on_timeout: x}\nfoo: 1")
    assert set(errors) == {"max_tool_calls", "pii_redaction", "fallback.on_timeout", "foo"}


def test_a_huge_document_is_refused_before_parsing() -> None:
    assert "at most" in _errors("# " + "x" * 70_000)["document"][0]


def test_yaml_alias_bombs_cannot_reach_the_stored_json() -> None:
    bomb = "a: &a [x, x]\nb: &b [*a, *a]\n"
    doc = bomb + "approval_required_tools: [{slack.send_message: {channels: [*b, *b]}}]"
    assert "approval_required_tools[0].channels" in _errors(doc)


def test_python_objects_in_yaml_are_refused() -> None:
    assert "document" in _errors("max_tool_calls: !!python/object/apply:os.system ['true']")


# ------------------------------------------------------------------ the policy page


@pytest.fixture
def manager_client(manager) -> Client:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(manager)
    return client


def test_the_page_shows_the_active_yaml_and_the_versions(manager_client: Client,
                                                          workflow: Workflow) -> None:
    r = manager_client.get(URL)
    assert r.status_code == 200
    body = r.content.decode()
    assert "active version v1" in body and "max_tool_calls: 8" in body


def test_publishing_a_valid_document_makes_a_new_active_version(
        manager_client: Client, workflow: Workflow, manager) -> None:  # type: ignore[no-untyped-def]
    doc = DEFAULT_POLICY_YAML.replace("max_tool_calls: 8", "max_tool_calls: 3")
    r = manager_client.post(URL, {"document": doc, "note": "tighter", "action": "publish"})
    assert r.status_code == 302 and r["Location"] == URL
    active = workflow.policies.get(is_active=True)
    assert (active.version, active.parsed["max_tool_calls"], active.created_by) == (2, 3, manager)
    assert workflow.policies.count() == 2
    assert ReleaseNote.objects.filter(workflow=workflow, kind="policy", reason="tighter").exists()
    assert AuditEvent.objects.filter(action="policy.publish", to_state="v2").exists()
    assert "v2" in manager_client.get(URL).content.decode()


@pytest.mark.parametrize(("document", "field"), [
    ("allowed_tools: [a\n", "document"),
    ("max_tool_calls: -3", "max_tool_calls"),
    ("fallback: {on_timeout: shrug}", "fallback.on_timeout"),
    ("<script>alert(1)</script>: 1", "&lt;script&gt;alert(1)&lt;/script&gt;"),
])
def test_a_bad_document_is_a_400_with_the_field_and_nothing_is_written(
        manager_client: Client, workflow: Workflow, document: str, field: str) -> None:
    events = AuditEvent.objects.count()
    r = manager_client.post(URL, {"document": document, "action": "publish"})
    assert r.status_code == 400
    body = r.content.decode()
    assert "Nothing was saved" in body and field in body and "<script>alert" not in body
    assert workflow.policies.count() == 1 and AuditEvent.objects.count() == events


def test_a_too_long_note_is_a_400(manager_client: Client, workflow: Workflow) -> None:
    r = manager_client.post(URL, {"document": DEFAULT_POLICY_YAML, "note": "n" * 301})
    assert r.status_code == 400 and workflow.policies.count() == 1


def test_an_unknown_action_is_a_400(manager_client: Client, workflow: Workflow) -> None:
    assert manager_client.post(URL, {"document": "", "action": "delete"}).status_code == 400


def test_reviewers_get_403(workflow: Workflow, reviewer) -> None:  # type: ignore[no-untyped-def]
    client = Client()
    client.force_login(reviewer)
    assert client.get(URL).status_code == 403
    assert client.post(URL, {"document": DEFAULT_POLICY_YAML}).status_code == 403
    assert client.get("/workflows/no-such-flow/policy/").status_code == 403
    assert workflow.policies.count() == 1


def test_anonymous_users_are_sent_to_login(workflow: Workflow) -> None:
    r = Client().get(URL)
    assert r.status_code == 302 and "/accounts/login/" in r["Location"]


def test_an_unknown_workflow_is_404_for_managers(manager_client: Client,
                                                 workflow: Workflow) -> None:
    assert manager_client.get("/workflows/no-such-flow/policy/").status_code == 404


@pytest.mark.parametrize("method", ["put", "patch", "delete"])
def test_other_methods_are_405(manager_client: Client, workflow: Workflow, method: str) -> None:
    assert getattr(manager_client, method)(URL).status_code == 405


def test_a_post_without_csrf_token_is_refused(manager, workflow: Workflow) -> None:  # type: ignore[no-untyped-def]
    client = Client(enforce_csrf_checks=True)
    client.force_login(manager)
    assert client.post(URL, {"document": DEFAULT_POLICY_YAML}).status_code == 403
    assert workflow.policies.count() == 1


# ----------------------------------------------------------------------- replay


TIGHT = DEFAULT_POLICY_YAML.replace("max_tool_calls: 8", "max_tool_calls: 2").replace(
    "  - confluence.search\n", "")


@pytest.fixture
def history(workflow: Workflow, agent) -> list[Proposal]:  # type: ignore[no-untyped-def]
    run = open_run(agent, workflow)
    made = [submit(run) for _ in range(3)]
    made.append(submit(run, "confluence.search", {"q": "printer"}))
    return made


def test_replay_shows_what_a_draft_would_change_without_writing(
        workflow: Workflow, history: list[Proposal]) -> None:
    before = (Proposal.objects.count(), AuditEvent.objects.count(),
              list(Proposal.objects.values_list("status", flat=True)))
    rows = gateway.replay(workflow, parse_policy(TIGHT), last=10)
    assert [r.proposal_id for r in rows] == [p.pk for p in reversed(history)]
    assert all(r.was_status == ProposalStatus.PENDING for r in rows)
    by_id = {r.proposal_id: r for r in rows}
    assert not by_id[history[0].pk].changed and not by_id[history[1].pk].changed
    third = by_id[history[2].pk]
    assert third.changed and third.would.reasons[0] == "budget exceeded: max_tool_calls 2 reached"
    search = by_id[history[3].pk]
    assert search.changed and "not in allowed_tools" in search.would.reasons[0]
    assert (Proposal.objects.count(), AuditEvent.objects.count(),
            list(Proposal.objects.values_list("status", flat=True))) == before


def test_replay_last_n_limits_to_the_most_recent(workflow: Workflow,
                                                 history: list[Proposal]) -> None:
    rows = gateway.replay(workflow, parse_policy(TIGHT), last=2)
    assert [r.proposal_id for r in rows] == [history[3].pk, history[2].pk]
    # The budget is still re-counted from the start of each run.
    assert rows[1].would.reasons[0].startswith("budget exceeded")


def test_replay_on_the_page(manager_client: Client, workflow: Workflow,
                            history: list[Proposal]) -> None:
    r = manager_client.post(URL, {"document": TIGHT, "action": "replay", "last": "10"})
    body = r.content.decode()
    assert r.status_code == 200 and "2 of 4 decisions would change" in body
    assert "budget exceeded: max_tool_calls 2 reached" in body
    assert workflow.policies.count() == 1  # replay never publishes


@pytest.mark.parametrize(("data", "field"), [
    ({"document": "max_tool_calls: -1", "last": "5"}, "max_tool_calls"),
    ({"document": TIGHT, "last": "0"}, "last"),
    ({"document": TIGHT, "last": "many"}, "last"),
    ({"document": TIGHT, "last": "100000"}, "last"),
])
def test_replay_bad_input_is_a_400_naming_the_field(manager_client: Client, workflow: Workflow,
                                                    data: dict, field: str) -> None:
    r = manager_client.post(URL, {**data, "action": "replay"})
    assert r.status_code == 400 and f"<code>{field}</code>" in r.content.decode()


def test_replay_command_prints_the_differences(workflow: Workflow, history: list[Proposal],
                                               tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(TIGHT)
    out = StringIO()
    call_command("replay_policy", "support-triage", str(draft), "--last", "10", stdout=out)
    text = out.getvalue()
    assert "2 of 4 decisions would change" in text
    assert "max_tool_calls 2 reached" in text and "not in allowed_tools" in text
    assert Policy.objects.filter(workflow=workflow).count() == 1


def test_replay_command_changed_only(workflow: Workflow, history: list[Proposal],
                                     tmp_path: Path) -> None:
    draft = tmp_path / "draft.yaml"
    draft.write_text(TIGHT)
    out = StringIO()
    call_command("replay_policy", "support-triage", str(draft), "--changed-only", stdout=out)
    assert out.getvalue().count("*") == 2


@pytest.mark.parametrize(("args", "message"), [
    (["no-such-flow", "FILE"], "unknown workflow"),
    (["support-triage", "/nonexistent.yaml"], "cannot read"),
    (["support-triage", "BAD"], "max_tool_calls: must be a whole number"),
    (["support-triage", "FILE", "--last", "0"], "--last must be at least 1"),
])
def test_replay_command_errors(workflow: Workflow, tmp_path: Path, args: list[str],
                               message: str) -> None:
    (tmp_path / "ok.yaml").write_text(TIGHT)
    (tmp_path / "bad.yaml").write_text("max_tool_calls: -1")
    args = [str(tmp_path / "ok.yaml") if a == "FILE" else str(tmp_path / "bad.yaml")
            if a == "BAD" else a for a in args]
    with pytest.raises(CommandError, match=message):
        call_command("replay_policy", *args, stdout=StringIO())


@pytest.mark.parametrize("document", ["max_tool_calls: 8\x00", "allowed_tools: [\x07]"])
def test_control_characters_are_a_400_not_a_500(manager_client: Client, workflow: Workflow,
                                                document: str) -> None:
    r = manager_client.post(URL, {"document": document, "action": "publish"})
    assert r.status_code == 400 and workflow.policies.count() == 1
