"""Review queue and break-glass pages. Function views: access helper, one service, render."""

from __future__ import annotations

import json

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET, require_http_methods, require_POST
from django_htmx.http import HttpResponseClientRedirect

from agents.models import AuditEvent, Tool
from agents.services import workflow_set_paused
from approvals import pii, selectors, services
from approvals.models import Execution, FailureCategory, Proposal, ProposalStatus
from config.parsers import json_problem
from shadow import services as review

QUEUE_TABS = [
    (ProposalStatus.PENDING, "Pending"),
    (ProposalStatus.HANDED_OFF, "Handed off"),
    (ProposalStatus.APPROVED, "Approved"),
    (ProposalStatus.REJECTED, "Rejected"),
    (ProposalStatus.SHADOW, "Shadow"),
    (ProposalStatus.REFUSED, "Refused"),
    (ProposalStatus.EXPIRED, "Expired"),
]


def _proposal_for(request: HttpRequest, pk: int) -> Proposal:
    """The access helper: the proposal if this user reviews its workflow, else 404."""
    return get_object_or_404(
        selectors.proposals_for_user(request.user).select_related(
            "workflow", "agent", "tool", "run", "policy", "decided_by"),
        pk=pk,
    )


def _shown(proposal: Proposal, value: object) -> object:
    if proposal.policy and proposal.policy.parsed.get("pii_redaction"):
        return pii.redact(value)
    return value


def _int_or_none(raw: str | None) -> int | None:
    try:
        return int(raw) if raw not in (None, "") else None
    except ValueError:
        return None


@login_required
@require_GET
def queue(request: HttpRequest) -> HttpResponse:
    status = request.GET.get("status", ProposalStatus.PENDING)
    if status not in ProposalStatus.values:
        status = ProposalStatus.PENDING
    workflow_slug = request.GET.get("workflow", "")
    after = request.GET.get("after", "")
    error = ""
    try:
        page = selectors.review_queue_page(request.user, status=status,
                                           workflow_slug=workflow_slug, after=after)
    except selectors.BadCursor as exc:
        error = f"after: {exc}"
        page = selectors.QueuePage(items=[], next_cursor="", is_first=False)
    context = {
        "page": page,
        "error": error,
        "status": status,
        "tabs": QUEUE_TABS,
        "workflow_slug": workflow_slug,
        "workflows": selectors.workflows_for_user(request.user),
        "is_manager": selectors.is_manager(request.user),
        "now": timezone.now(),
    }
    code = 400 if error else 200
    if request.htmx and request.htmx.target == "queue-list":
        return render(request, "approvals/_queue_list.html", context, status=code)
    return render(request, "approvals/queue.html", context, status=code)


def _detail_context(request: HttpRequest, proposal: Proposal) -> dict:
    history = (proposal.run.proposals.exclude(pk=proposal.pk)
               .select_related("tool").order_by("created_at")[:50])
    execution = Execution.objects.filter(proposal=proposal).first()
    shown_args = _shown(proposal, proposal.arguments)
    events = AuditEvent.objects.filter(
        object_type="approvals.proposal", object_id=str(proposal.pk)).order_by("id")
    return {
        "p": proposal,
        "shown_arguments": json.dumps(shown_args, indent=2, ensure_ascii=False),
        "shown_final_arguments": (
            json.dumps(_shown(proposal, proposal.final_arguments), indent=2, ensure_ascii=False)
            if proposal.final_arguments is not None else ""),
        "shown_draft": _shown(proposal, proposal.draft_text),
        "shown_rationale": _shown(proposal, proposal.rationale),
        "history": history,
        "execution": execution,
        # A tool's error text can echo the arguments back: redacted like them.
        "shown_execution_error": _shown(proposal, execution.error) if execution else "",
        "events": events,
        "failure_categories": FailureCategory.choices,
        "can_decide": proposal.status == ProposalStatus.PENDING,
    }


@login_required
@require_GET
def detail(request: HttpRequest, pk: int) -> HttpResponse:
    proposal = _proposal_for(request, pk)
    context = _detail_context(request, proposal)
    if request.htmx:
        return render(request, "approvals/_detail.html", context)
    return render(request, "approvals/detail.html", context)


def _after_decision(request: HttpRequest, proposal: Proposal, message: str) -> HttpResponse:
    messages.success(request, message)
    url = reverse("approvals:queue")
    if request.htmx:
        return HttpResponseClientRedirect(url)
    return redirect(url)


def _decision_error(request: HttpRequest, proposal: Proposal, error: str,
                    status: int) -> HttpResponse:
    context = _detail_context(request, proposal)
    context["error"] = error
    # Give the reviewer back what they typed: a bad edit is corrected, not retyped.
    context["kept"] = {k: request.POST.get(k) for k in (
        "arguments", "draft_text", "note", "failure_category", "reason_code")}
    context["kept"]["action"] = request.resolver_match.kwargs.get("action", "")
    template = "approvals/_detail.html" if request.htmx else "approvals/detail.html"
    return render(request, template, context, status=status)


@login_required
@require_POST
def decide(request: HttpRequest, pk: int, action: str) -> HttpResponse:
    proposal = _proposal_for(request, pk)
    version = _int_or_none(request.POST.get("version"))
    if version is None:
        return _decision_error(request, proposal, "version: missing; reload the page", 400)
    note = request.POST.get("note", "").strip()
    try:
        if action == "approve":
            proposal = review.review_approve(
                actor=request.user, proposal=proposal, expected_version=version,
                expected_args_hash=request.POST.get("args_hash") or None, note=note)
            return _after_decision(request, proposal, f"Approved #{proposal.pk}.")
        if action == "edit":
            raw = request.POST.get("arguments", "")
            try:
                edited = json.loads(raw) if raw.strip() else proposal.arguments
            except json.JSONDecodeError as exc:
                raise ValidationError({"arguments": [f"not valid JSON: {exc.msg} "
                                                     f"(line {exc.lineno})"]}) from exc
            if not isinstance(edited, dict):
                raise ValidationError({"arguments": ["must be a JSON object"]})
            if problem := json_problem(edited):  # \u0000, lone surrogates, 1e400: 500s in jsonb
                raise ValidationError({"arguments": [problem]})
            text = request.POST.get("draft_text")
            proposal = review.review_approve(
                actor=request.user, proposal=proposal, expected_version=version,
                expected_args_hash=request.POST.get("args_hash") or None,
                edited_arguments=edited, edited_text=text, note=note,
                failure_category=request.POST.get("failure_category", ""))
            return _after_decision(request, proposal, f"Edited and approved #{proposal.pk}.")
        if action == "reject":
            proposal = review.review_reject(
                actor=request.user, proposal=proposal, expected_version=version,
                reason_code=request.POST.get("reason_code", ""), note=note)
            return _after_decision(request, proposal, f"Rejected #{proposal.pk}.")
        if action == "handoff":
            proposal = services.proposal_hand_off(
                actor=request.user, proposal=proposal, expected_version=version, note=note)
            return _after_decision(request, proposal, f"Handed off #{proposal.pk}.")
    except services.ConflictError as exc:
        return _decision_error(request, proposal, str(exc), 409)
    except ValidationError as exc:
        detail = "; ".join(f"{field}: {' '.join(msgs)}"
                           for field, msgs in exc.message_dict.items()) \
            if hasattr(exc, "error_dict") else "; ".join(exc.messages)
        return _decision_error(request, proposal, detail, 400)
    except PermissionDenied as exc:
        return _decision_error(request, proposal, str(exc), 403)
    return HttpResponse("unknown action", status=404)


def _manager_only(request: HttpRequest) -> None:
    if not selectors.is_manager(request.user):
        raise PermissionDenied("managers only")


@login_required
@require_http_methods(["GET", "POST"])
def break_glass(request: HttpRequest) -> HttpResponse:
    _manager_only(request)
    switch = services.break_glass_get()
    categories = sorted(set(Tool.objects.values_list("category", flat=True)))
    if request.method == "POST":
        try:
            what = request.POST.get("what", "")
            reason = request.POST.get("reason", "")
            if what == "read_only":
                services.break_glass_update(
                    actor=request.user, read_only=request.POST.get("value") == "on", reason=reason)
            elif what == "categories":
                services.break_glass_update(
                    actor=request.user, disabled_categories=request.POST.getlist("category"),
                    reason=reason)
            elif what == "workflow":
                workflow = get_object_or_404(selectors.workflows_for_user(request.user),
                                             slug=request.POST.get("workflow", ""))
                if not reason.strip():  # same rule as the switch itself: every pull says why
                    raise ValidationError({"reason": ["a reason is required"]})
                workflow_set_paused(actor=request.user, workflow=workflow,
                                    paused=request.POST.get("value") == "on", reason=reason)
            else:
                raise ValidationError({"what": ["unknown switch"]})
            messages.success(request, "Break-glass switch updated.")
            return redirect("approvals:break_glass")
        except ValidationError as exc:
            return render(request, "approvals/break_glass.html", {
                "switch": switch, "categories": categories,
                "workflows": selectors.workflows_for_user(request.user),
                "errors": exc.message_dict if hasattr(exc, "error_dict") else
                {"__all__": exc.messages}}, status=400)
    return render(request, "approvals/break_glass.html", {
        "switch": switch, "categories": categories,
        "workflows": selectors.workflows_for_user(request.user),
    })
