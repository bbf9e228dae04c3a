"""Reads: who may see what, and the review queue."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from agents import permissions
from agents.models import Workflow
from approvals.models import Proposal, ProposalStatus

MANAGERS_GROUP = permissions.MANAGERS_GROUP


def is_manager(user: AbstractBaseUser) -> bool:
    # One definition for every app: agents' services check it too.
    return permissions.is_manager(user)


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
    # The workflow ids as a literal list, not a subquery: with a join the planner reads
    # every matching row and sorts them; with constants it walks the (status, workflow,
    # ...) index in order and stops after one page.
    workflow_ids = list(workflows_for_user(user).values_list("pk", flat=True))
    qs = Proposal.objects.filter(workflow_id__in=workflow_ids, status=status)
    if workflow_slug:
        qs = qs.filter(workflow__slug=workflow_slug)
    # Decided tabs: newest first by id (ids are issued in creation order), so the
    # primary key index serves every workflow mix; sorting by created_at needed an index
    # per combination and sorted every matching row for a manager (2 s at 1M rows).
    order = ["sla_deadline", "id"] if status == ProposalStatus.PENDING else ["-id"]
    return qs.select_related("workflow", "agent", "tool", "run").order_by(*order)


QUEUE_PAGE_SIZE = 25


class BadCursor(ValueError):
    """The ?after= cursor is not one this page produced."""


@dataclass
class QueuePage:
    items: list[Proposal]
    next_cursor: str
    is_first: bool


def _encode_cursor(value: datetime | None, pk: int) -> str:
    return f"{value.isoformat() if value else ''}_{pk}"


def _decode_cursor(raw: str) -> tuple[datetime | None, int]:
    stamp, sep, pk = raw.rpartition("_")
    try:
        if not sep:
            raise ValueError(raw)
        value = datetime.fromisoformat(stamp) if stamp else None
        return value, int(pk)
    except ValueError as exc:
        raise BadCursor("not a queue cursor; start again from the first page") from exc


def review_queue_page(
    user: AbstractBaseUser, *, status: str = ProposalStatus.PENDING, workflow_slug: str = "",
    after: str = "", size: int = QUEUE_PAGE_SIZE,
) -> QueuePage:
    """One page of the queue by keyset ("seek") pagination.

    OFFSET pagination and its COUNT(*) cost grow with the table: at a million decided
    proposals a deep page read and discarded every row before it. Seeking past the last
    row shown (sort key + id as tie-break) reads only the page itself, off the
    (status, sla_deadline) index for pending and the primary key for decided tabs.
    """
    qs = review_queue(user, status=status, workflow_slug=workflow_slug)
    value, pk = _decode_cursor(after) if after else (None, 0)
    # Each seek is written as an index range (key >= v) narrowed by the tie-break, not as
    # an OR of alternatives: an OR (or an "IS NULL" branch) cannot use the index range
    # and made a deep page read every row before it (0.8 s at 1M rows).
    if status == ProposalStatus.PENDING:
        # Two phases, matching ORDER BY sla_deadline (NULLs last), id: rows with a
        # deadline in deadline order, then any without one by id.
        rows: list[Proposal] = []
        if not after or value is not None:
            dated = qs.filter(sla_deadline__isnull=False)
            if after:
                dated = dated.filter(Q(sla_deadline__gte=value)
                                     & (Q(sla_deadline__gt=value) | Q(id__gt=pk)))
            rows = list(dated[: size + 1])
        if len(rows) <= size:
            # Ordered by (sla_deadline, id), all NULL, rather than by id alone: that keeps
            # the planner on the (status, sla_deadline) index instead of walking the
            # whole primary key looking for rows that usually do not exist.
            undated = qs.filter(sla_deadline__isnull=True).order_by("sla_deadline", "id")
            if after and value is None:
                undated = undated.filter(id__gt=pk)
            rows += list(undated[: size + 1 - len(rows)])
    else:
        if after:
            qs = qs.filter(id__lt=pk)
        rows = list(qs[: size + 1])
    items = rows[:size]
    next_cursor = ""
    if len(rows) > size:
        last = items[-1]
        key = last.sla_deadline if status == ProposalStatus.PENDING else None
        next_cursor = _encode_cursor(key, last.pk)
    return QueuePage(items=items, next_cursor=next_cursor, is_first=not after)
