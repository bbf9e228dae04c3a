"""Reads: who may see what, and the review queue."""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import QuerySet

from agents.models import Workflow
from approvals.models import Proposal, ProposalStatus

MANAGERS_GROUP = "managers"


def is_manager(user: AbstractBaseUser) -> bool:
    return bool(
        user.is_authenticated
        and (user.is_superuser or user.groups.filter(name=MANAGERS_GROUP).exists())
    )


def workflows_for_user(user: AbstractBaseUser) -> QuerySet[Workflow]:
    """Managers see every workflow; a reviewer sees those of their reviewer groups."""
    if not user.is_authenticated:
        return Workflow.objects.none()
    if is_manager(user):
        return Workflow.objects.all()
    return Workflow.objects.filter(reviewer_group__in=user.groups.all())


def user_can_review(user: AbstractBaseUser, workflow: Workflow) -> bool:
    return workflows_for_user(user).filter(pk=workflow.pk).exists()


def proposals_for_user(user: AbstractBaseUser) -> QuerySet[Proposal]:
    return Proposal.objects.filter(workflow__in=workflows_for_user(user))


def review_queue(
    user: AbstractBaseUser, *, status: str = ProposalStatus.PENDING, workflow_slug: str = ""
) -> QuerySet[Proposal]:
    qs = proposals_for_user(user).filter(status=status)
    if workflow_slug:
        qs = qs.filter(workflow__slug=workflow_slug)
    order = ["sla_deadline", "id"] if status == ProposalStatus.PENDING else ["-created_at", "-id"]
    return qs.select_related("workflow", "agent", "tool", "run").order_by(*order)
