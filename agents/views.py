"""Workflow pages (managers and reviewers)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from approvals.selectors import workflows_for_user


@login_required
@require_GET
def workflows(request: HttpRequest) -> HttpResponse:
    return render(request, "agents/workflows.html", {
        "workflows": workflows_for_user(request.user).select_related("reviewer_group"),
    })
