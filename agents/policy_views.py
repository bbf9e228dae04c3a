"""The workflow policy page (managers only): the active YAML, its versions, publishing
a new version, and a replay of what a draft would have decided. Thin views: access
helper, one service (or the read-only replay), render."""

from __future__ import annotations

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.http import HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_http_methods

from agents.models import Workflow
from agents.permissions import is_manager
from agents.policy import DEFAULT_POLICY_YAML, parse_policy
from agents.services import policy_publish
from approvals import gateway

DEFAULT_REPLAY = 50
MAX_REPLAY = 1000


def _workflow_for_manager(request: HttpRequest, slug: str) -> Workflow:
    """403 before 404: a non-manager learns nothing about which workflows exist."""
    if not is_manager(request.user):
        raise PermissionDenied("managers only")
    return get_object_or_404(Workflow, slug=slug)


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return {field: list(msgs) for field, msgs in exc.message_dict.items()}
    return {"document": list(exc.messages)}


def _context(workflow: Workflow, document: str | None = None) -> dict:
    active = workflow.policies.filter(is_active=True).first()
    return {
        "workflow": workflow,
        "active": active,
        "versions": workflow.policies.select_related("created_by").order_by("-version")[:100],
        "document": document if document is not None else (
            active.document if active else DEFAULT_POLICY_YAML),
        "last": DEFAULT_REPLAY,
        "max_replay": MAX_REPLAY,
    }


@login_required
@require_http_methods(["GET", "POST"])
def policy(request: HttpRequest, slug: str) -> HttpResponse:
    workflow = _workflow_for_manager(request, slug)
    if request.method == "GET":
        return render(request, "agents/policy_detail.html", _context(workflow))

    document = request.POST.get("document", "")
    action = request.POST.get("action", "publish")
    context = _context(workflow, document)
    try:
        if action == "replay":
            raw_last = request.POST.get("last", str(DEFAULT_REPLAY)).strip()
            if not raw_last.isdigit() or not 1 <= int(raw_last) <= MAX_REPLAY:
                raise ValidationError({"last": [f"a whole number from 1 to {MAX_REPLAY}"]})
            spec = parse_policy(document)
            rows = gateway.replay(workflow, spec, last=int(raw_last))
            context.update(rows=rows, replayed=True, last=int(raw_last),
                           changed=sum(r.changed for r in rows))
            return render(request, "agents/policy_detail.html", context)
        if action != "publish":
            raise ValidationError({"action": ["must be publish or replay"]})
        note = request.POST.get("note", "").strip()
        if len(note) > 300:
            raise ValidationError({"note": ["at most 300 characters"]})
        published = policy_publish(actor=request.user, workflow=workflow, document=document,
                                   note=note)
    except ValidationError as exc:
        context["errors"] = _errors(exc)
        return render(request, "agents/policy_detail.html", context, status=400)
    messages.success(request, f"Policy v{published.version} is now active.")
    return redirect("agents:policy", slug=workflow.slug)
