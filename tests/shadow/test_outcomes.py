"""Human outcomes: matching in both orders, idempotency, CSV import, level-0 safety."""

from __future__ import annotations

import io

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.test import Client

from agents.audit import SYSTEM
from agents.models import AuditEvent, Tool
from approvals.models import Execution, Proposal, ProposalStatus
from shadow import services
from shadow.models import Comparison, ExampleSource, HumanOutcome, LabeledExample
from tests.shadow.conftest import shadow_proposal

pytestmark = pytest.mark.django_db

ARGS = {"project": "SUP", "summary": "Printer on fire"}


def test_level_zero_proposals_are_recorded_never_queued_or_executed(
    client: Client, reviewer, agent, shadow_workflow
) -> None:
    p = shadow_proposal(agent, shadow_workflow)
    assert p.status == ProposalStatus.SHADOW
    assert not Execution.objects.filter(proposal=p).exists()
    client.force_login(reviewer)
    pending = client.get("/queue/").content.decode()
    assert f"#{p.pk}<" not in pending
    page = client.get("/queue/?status=shadow").content.decode()
    assert f"#{p.pk}<" in page and "shadow · not executed" in page
    detail = client.get(f"/queue/{p.pk}/").content.decode()
    assert "recorded only, never executed" in detail and "Shadow comparison" in detail
    assert 'data-action="approve"' not in detail


def test_outcome_first_compares_each_shadow_proposal_of_the_case(
    reviewer, agent, shadow_workflow
) -> None:
    same = shadow_proposal(agent, shadow_workflow, case_ref="T-9", arguments=ARGS)
    other_tool = shadow_proposal(agent, shadow_workflow, case_ref="T-9",
                                 tool="confluence.search", arguments={"q": "printer"})
    shadow_proposal(agent, shadow_workflow, case_ref="T-10")
    result = services.outcome_ingest(
        actor=reviewer, workflow=shadow_workflow, case_ref="T-9",
        tool_name="jira.create_ticket", arguments={"project": "sup", "summary": "printer on fire"})
    verdicts = {c.proposal_id: c.verdict for c in result.comparisons}
    assert verdicts == {same.pk: "agree", other_tool.pk: "disagree"}
    good = LabeledExample.objects.get(comparison__proposal=same)
    bad = LabeledExample.objects.get(comparison__proposal=other_tool)
    assert good.source == ExampleSource.SHADOW and good.is_good and good.failure_category == ""
    assert not bad.is_good and bad.failure_category == "wrong_tool"
    assert bad.human_output["tool"] == "jira.create_ticket"
    assert bad.agent_output["tool"] == "confluence.search"
    assert AuditEvent.objects.filter(action="shadow.compare").count() == 2
    assert AuditEvent.objects.filter(action="outcome.record").count() == 1


def test_proposal_after_its_outcome_is_matched_by_the_pending_matcher(
    reviewer, agent, shadow_workflow
) -> None:
    services.outcome_record(actor=reviewer, workflow=shadow_workflow, case_ref="T-5",
                            tool_name="jira.create_ticket",
                            arguments={**ARGS, "priority": "high"})
    p = shadow_proposal(agent, shadow_workflow, case_ref="T-5", arguments=ARGS)
    assert not Comparison.objects.exists()
    assert services.shadow_match_pending() == 1
    comparison = Comparison.objects.get()
    assert comparison.proposal_id == p.pk and comparison.verdict == "partial"
    assert comparison.field_diff["priority"] == {"agent": None, "human": "high", "match": False}
    example = LabeledExample.objects.get()
    assert example.failure_category == "wrong_params" and not example.is_good
    # A second run finds nothing left to do.
    assert services.shadow_match_pending() == 0
    assert Comparison.objects.count() == 1


def test_non_shadow_proposals_are_not_compared(reviewer, agent, workflow) -> None:
    p = shadow_proposal(agent, workflow, case_ref="T-7")  # level 2: pending review
    assert p.status == ProposalStatus.PENDING
    result = services.outcome_ingest(actor=reviewer, workflow=workflow, case_ref="T-7",
                                     tool_name="jira.create_ticket", arguments=ARGS)
    assert result.comparisons == [] and services.shadow_match_pending() == 0


def test_text_comparator_is_used_for_text_tools(reviewer, agent, shadow_workflow) -> None:
    Tool.objects.filter(name="slack.send_message").update(comparator="text")
    shadow_proposal(agent, shadow_workflow, case_ref="T-2", tool="slack.send_message",
                    arguments={"channel": "#support", "text": "Your refund is on its way."})
    result = services.outcome_ingest(actor=reviewer, workflow=shadow_workflow, case_ref="T-2",
                                     tool_name="slack.send_message",
                                     text="Duplicate of #88; closing.")
    (comparison,) = result.comparisons
    assert comparison.comparator == "text" and comparison.verdict == "disagree"
    assert LabeledExample.objects.get().failure_category == "factual"


def test_same_external_id_returns_the_same_outcome(reviewer, agent, shadow_workflow) -> None:
    shadow_proposal(agent, shadow_workflow, case_ref="T-3")
    kwargs = {"actor": reviewer, "workflow": shadow_workflow, "case_ref": "T-3",
              "tool_name": "jira.create_ticket", "arguments": ARGS, "external_id": "zd-1"}
    first = services.outcome_ingest(**kwargs)
    again = services.outcome_ingest(**kwargs)
    assert again.replayed and again.outcome.pk == first.outcome.pk
    assert HumanOutcome.objects.count() == 1 and Comparison.objects.count() == 1
    with pytest.raises(services.OutcomeConflict):
        services.outcome_ingest(**{**kwargs, "arguments": {"project": "OPS"}})


def test_outcome_fields_are_validated_by_name(reviewer, shadow_workflow) -> None:
    with pytest.raises(ValidationError) as exc:
        services.outcome_record(actor=reviewer, workflow=shadow_workflow, case_ref=" ",
                                tool_name="", arguments=[1])  # type: ignore[arg-type]
    assert set(exc.value.message_dict) == {"case_ref", "tool", "arguments"}
    assert not HumanOutcome.objects.exists()


def test_agents_and_outsiders_cannot_record_outcomes(agent, other_reviewer,
                                                     shadow_workflow) -> None:
    for actor in (agent, other_reviewer):
        with pytest.raises(PermissionDenied):
            services.outcome_record(actor=actor, workflow=shadow_workflow, case_ref="T-1",
                                    tool_name="jira.create_ticket")
    services.outcome_record(actor=SYSTEM, workflow=shadow_workflow, case_ref="T-1",
                            tool_name="jira.create_ticket")


GOOD_CSV = (
    "case_ref,tool,arguments,text,external_id\n"
    'T-1,jira.create_ticket,"{""project"": ""SUP"", ""summary"": ""Printer on fire""}",,r1\n'
    "T-2,slack.send_message,,\"Hello, world\",r2\n"
)


def test_csv_import_records_every_row_and_compares(reviewer, agent, shadow_workflow) -> None:
    shadow_proposal(agent, shadow_workflow, case_ref="T-1", arguments=ARGS)
    results = services.outcomes_import_csv(actor=reviewer, workflow=shadow_workflow,
                                           file=io.BytesIO(GOOD_CSV.encode()))
    assert len(results) == 2
    assert HumanOutcome.objects.filter(source="csv").count() == 2
    assert HumanOutcome.objects.get(external_id="r2").text == "Hello, world"
    assert Comparison.objects.get().verdict == "agree"
    # Uploading the same file again records nothing new.
    services.outcomes_import_csv(actor=reviewer, workflow=shadow_workflow,
                                 file=io.BytesIO(GOOD_CSV.encode()))
    assert HumanOutcome.objects.count() == 2 and Comparison.objects.count() == 1


def test_csv_with_one_bad_row_writes_nothing_and_names_row_and_column(
    reviewer, agent, shadow_workflow
) -> None:
    shadow_proposal(agent, shadow_workflow, case_ref="T-1", arguments=ARGS)
    bad = GOOD_CSV + 'T-3,jira.create_ticket,"{not json}",,r3\n,jira.create_ticket,,,r4\n'
    with pytest.raises(ValidationError) as exc:
        services.outcomes_import_csv(actor=reviewer, workflow=shadow_workflow,
                                     file=io.BytesIO(bad.encode()))
    errors = exc.value.message_dict
    assert "row 4, arguments" in errors and "row 5, case_ref" in errors
    assert not HumanOutcome.objects.exists() and not Comparison.objects.exists()
    assert not LabeledExample.objects.exists()


def test_csv_conflicting_external_id_rolls_back_earlier_rows(reviewer, shadow_workflow) -> None:
    bad = GOOD_CSV + "T-9,jira.create_ticket,,,r1\n"
    with pytest.raises(ValidationError) as exc:
        services.outcomes_import_csv(actor=reviewer, workflow=shadow_workflow,
                                     file=io.BytesIO(bad.encode()))
    assert "row 4, external_id" in exc.value.message_dict
    assert not HumanOutcome.objects.exists()


@pytest.mark.parametrize("content, key", [
    ("case,tool\nT-1,x\n", "file"),
    ("case_ref,tool,colour\nT-1,x,red\n", "file"),
    ("case_ref,tool\n", "file"),
    ("case_ref,tool\nT-1,x,surplus\n", "row 2, (extra cells)"),
])
def test_csv_header_and_shape_errors(reviewer, shadow_workflow, content: str, key: str) -> None:
    with pytest.raises(ValidationError) as exc:
        services.outcomes_import_csv(actor=reviewer, workflow=shadow_workflow,
                                     file=io.BytesIO(content.encode()))
    assert key in exc.value.message_dict


def test_non_utf8_csv_is_a_file_error(reviewer, shadow_workflow) -> None:
    with pytest.raises(ValidationError) as exc:
        services.outcomes_import_csv(actor=reviewer, workflow=shadow_workflow,
                                     file=io.BytesIO(b"case_ref,tool\n\xff\xfe,x\n"))
    assert "file" in exc.value.message_dict


def test_review_wrappers_still_label_edits_and_rejections(reviewer, agent, workflow) -> None:
    from shadow.services import review_approve, review_reject
    from tests.factories import open_run, submit

    edited = submit(open_run(agent, workflow))
    review_approve(actor=reviewer, proposal=edited, expected_version=edited.version,
                   edited_arguments={"project": "SUP", "summary": "Printer is on fire"},
                   failure_category="factual")
    rejected = submit(open_run(agent, workflow, case_ref="T-2"))
    review_reject(actor=reviewer, proposal=rejected, expected_version=rejected.version,
                  reason_code="unsafe")
    edit = LabeledExample.objects.get(proposal=edited)
    assert edit.source == "edit" and edit.failure_category == "factual"
    assert edit.agent_output["arguments"]["summary"] == "Printer on fire"
    assert edit.human_output["arguments"]["summary"] == "Printer is on fire"
    rej = LabeledExample.objects.get(proposal=rejected)
    assert rej.source == "rejection" and rej.failure_category == "unsafe"
    assert Proposal.objects.get(pk=rejected.pk).status == "rejected"


def test_match_pending_beat_task_is_thin(reviewer, agent, shadow_workflow) -> None:
    from django.conf import settings

    from shadow.tasks import match_pending

    services.outcome_record(actor=reviewer, workflow=shadow_workflow, case_ref="T-6",
                            tool_name="jira.create_ticket", arguments=ARGS)
    shadow_proposal(agent, shadow_workflow, case_ref="T-6", arguments=ARGS)
    assert match_pending.run() == 1
    schedule = settings.CELERY_BEAT_SCHEDULE["shadow-match-pending"]
    assert schedule["task"] == "shadow.tasks.match_pending"
    assert schedule["schedule"].total_seconds() == 60


def test_old_unmatched_proposals_are_left_to_outcome_ingest(reviewer, agent,
                                                            shadow_workflow) -> None:
    from datetime import timedelta

    from django.utils import timezone

    services.outcome_record(actor=reviewer, workflow=shadow_workflow, case_ref="T-6",
                            tool_name="jira.create_ticket", arguments=ARGS)
    p = shadow_proposal(agent, shadow_workflow, case_ref="T-6", arguments=ARGS)
    Proposal.objects.filter(pk=p.pk).update(created_at=timezone.now() - timedelta(days=30))
    assert services.shadow_match_pending() == 0
    # A new outcome for the case still reaches it.
    services.outcome_record(actor=reviewer, workflow=shadow_workflow, case_ref="T-6",
                            tool_name="jira.create_ticket", arguments=ARGS, external_id="x")
    assert Comparison.objects.filter(proposal=p).count() == 1
