"""Shadow and evidence services: every state change here is one function, one
transaction, audited.

Review decisions made in the web queue go through the review_* wrappers below, so
the decision (approvals) and the labeled example it produces (shadow) commit
together or not at all.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction

from agents.audit import audit_record
from approvals import services as approvals
from approvals.models import Proposal
from shadow.models import ExampleSource, LabeledExample


def _agent_output(proposal: Proposal) -> dict[str, Any]:
    return {"tool": proposal.tool_name, "arguments": proposal.arguments,
            "text": proposal.draft_text}


def _context(proposal: Proposal) -> dict[str, Any]:
    return {"case_ref": proposal.run.case_ref, "rationale": proposal.rationale,
            "model": proposal.model_name, "policy_version":
            proposal.policy.version if proposal.policy else None}


def labeled_example_from_review(*, actor: AbstractBaseUser, proposal: Proposal) -> LabeledExample:
    """Turn a decided review into a labeled example. Runs inside the decision's
    transaction (called only from the review_* wrappers)."""
    if proposal.status == "rejected":
        source, good, human = ExampleSource.REJECTION, False, None
    elif proposal.edited:
        source, good = ExampleSource.EDIT, False
        human = {"tool": proposal.tool_name, "arguments": proposal.effective_arguments,
                 "text": proposal.final_text or proposal.draft_text}
    else:
        source, good = ExampleSource.APPROVAL, True
        human = _agent_output(proposal)
    example = LabeledExample.objects.create(
        workflow_id=proposal.workflow_id, proposal=proposal, source=source,
        agent_version=proposal.agent_version, tool_name=proposal.tool_name,
        context=_context(proposal), agent_output=_agent_output(proposal), human_output=human,
        is_good=good, failure_category=proposal.reject_reason, note=proposal.review_note,
    )
    audit_record(actor=actor, action="example.create", obj=example, to_state=source,
                 data={"proposal": proposal.pk, "failure_category": proposal.reject_reason})
    return example


@transaction.atomic
def review_approve(*, actor: AbstractBaseUser, proposal: Proposal, **kwargs: Any) -> Proposal:
    approved = approvals.proposal_approve(actor=actor, proposal=proposal, **kwargs)
    labeled_example_from_review(actor=actor, proposal=approved)
    return approved


@transaction.atomic
def review_reject(*, actor: AbstractBaseUser, proposal: Proposal, **kwargs: Any) -> Proposal:
    rejected = approvals.proposal_reject(actor=actor, proposal=proposal, **kwargs)
    labeled_example_from_review(actor=actor, proposal=rejected)
    return rejected
