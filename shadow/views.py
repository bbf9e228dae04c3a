"""Shadow comparisons, datasets and exports (pages)."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.views.decorators.http import require_GET

from approvals.selectors import workflows_for_user
from shadow.models import Dataset


@login_required
@require_GET
def datasets(request: HttpRequest) -> HttpResponse:
    return render(request, "shadow/datasets.html", {
        "datasets": Dataset.objects.filter(workflow__in=workflows_for_user(request.user))
        .select_related("workflow"),
    })
