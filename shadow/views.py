"""Shadow comparisons, human outcomes, datasets and exports (pages).

Function views: an access helper returning the object or 404, one service call,
render. Bad input re-renders the form with the errors and status 400.
"""

from __future__ import annotations

import json
from pathlib import Path

from django.conf import settings
from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.paginator import Paginator
from django.http import FileResponse, Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from agents.models import Tool, Workflow
from approvals.models import FailureCategory
from approvals.selectors import is_manager, workflows_for_user
from shadow import selectors, services
from shadow.models import (
    Dataset,
    DatasetVersion,
    ExampleSource,
    ExportFormat,
    ExportJob,
    ExportStatus,
    OutcomeSource,
    Verdict,
)


def _workflow_for(request: HttpRequest, slug: str) -> Workflow:
    return get_object_or_404(workflows_for_user(request.user), slug=slug)


def _dataset_for(request: HttpRequest, pk: int) -> Dataset:
    return get_object_or_404(selectors.datasets_for_user(request.user), pk=pk)


def _export_for(request: HttpRequest, pk: int) -> ExportJob:
    return get_object_or_404(selectors.exports_for_user(request.user), pk=pk)


def _errors(exc: ValidationError) -> dict[str, list[str]]:
    if hasattr(exc, "error_dict"):
        return exc.message_dict
    return {"__all__": exc.messages}


@login_required
@require_GET
def index(request: HttpRequest) -> HttpResponse:
    return render(request, "shadow/index.html", {"workflows": workflows_for_user(request.user)})


@login_required
@require_GET
def comparisons(request: HttpRequest, slug: str) -> HttpResponse:
    workflow = _workflow_for(request, slug)
    verdict = request.GET.get("verdict", "")
    if verdict not in Verdict.values:
        verdict = ""
    page = Paginator(selectors.comparisons_for_workflow(workflow.pk, verdict=verdict),
                     25).get_page(request.GET.get("page"))
    rows = [{"c": c, "diff": selectors.shown_diff(c)} for c in page.object_list]
    counts = selectors.verdict_counts(workflow.pk)
    return render(request, "shadow/comparisons.html", {
        "workflow": workflow, "page": page, "rows": rows, "verdict": verdict,
        "verdicts": [(v, label, counts.get(v, 0)) for v, label in Verdict.choices],
    })


def _outcome_form(request: HttpRequest, workflow: Workflow, *, values: dict | None = None,
                  errors: dict | None = None, status: int = 200) -> HttpResponse:
    return render(request, "shadow/outcome_form.html", {
        "workflow": workflow, "values": values or {}, "errors": errors or {},
        "tools": Tool.objects.values_list("name", flat=True),
    }, status=status)


@login_required
@require_http_methods(["GET", "POST"])
def outcome_new(request: HttpRequest, slug: str) -> HttpResponse:
    workflow = _workflow_for(request, slug)
    if request.method == "GET":
        return _outcome_form(request, workflow, values={"case_ref": request.GET.get("case", "")})
    values = {k: request.POST.get(k, "") for k in
              ("case_ref", "tool", "arguments", "text", "external_id")}
    try:
        raw = values["arguments"].strip()
        try:
            arguments = json.loads(raw) if raw else {}
        except json.JSONDecodeError as exc:
            raise ValidationError({"arguments": [f"not valid JSON: {exc.msg} "
                                                 f"(line {exc.lineno})"]}) from exc
        result = services.outcome_ingest(
            actor=request.user, workflow=workflow, case_ref=values["case_ref"],
            tool_name=values["tool"], arguments=arguments, text=values["text"],
            source=OutcomeSource.MANUAL, external_id=values["external_id"])
    except ValidationError as exc:
        return _outcome_form(request, workflow, values=values, errors=_errors(exc), status=400)
    except services.OutcomeConflict as exc:
        return _outcome_form(request, workflow, values=values,
                             errors={"external_id": [str(exc)]}, status=409)
    n = len(result.comparisons)
    messages.success(request, f"Outcome for case {result.outcome.case_ref} recorded"
                              f"{' (already known)' if result.replayed else ''}; "
                              f"{n} comparison{'s' if n != 1 else ''}.")
    return redirect("shadow:comparisons", slug=workflow.slug)


@login_required
@require_http_methods(["GET", "POST"])
def outcome_upload(request: HttpRequest, slug: str) -> HttpResponse:
    workflow = _workflow_for(request, slug)
    context = {"workflow": workflow, "columns": services.CSV_COLUMNS}
    if request.method == "GET":
        return render(request, "shadow/outcome_upload.html", context)
    upload = request.FILES.get("file")
    if upload is None:
        return render(request, "shadow/outcome_upload.html",
                      {**context, "errors": {"file": ["choose a CSV file"]}}, status=400)
    try:
        results = services.outcomes_import_csv(actor=request.user, workflow=workflow,
                                               file=upload)
    except ValidationError as exc:
        return render(request, "shadow/outcome_upload.html",
                      {**context, "errors": _errors(exc)}, status=400)
    created = sum(not r.replayed for r in results)
    messages.success(request, f"Imported {len(results)} rows: {created} new outcomes, "
                              f"{sum(len(r.comparisons) for r in results)} comparisons.")
    return redirect("shadow:comparisons", slug=workflow.slug)


def _datasets_page(request: HttpRequest, *, errors: dict | None = None,
                   values: dict | None = None, status: int = 200) -> HttpResponse:
    return render(request, "shadow/datasets.html", {
        "datasets": selectors.datasets_for_user(request.user),
        "workflows": workflows_for_user(request.user),
        "errors": errors or {}, "values": values or {},
        "is_manager": is_manager(request.user),
    }, status=status)


@login_required
@require_GET
def datasets(request: HttpRequest) -> HttpResponse:
    return _datasets_page(request)


@login_required
@require_POST
def dataset_new(request: HttpRequest) -> HttpResponse:
    values = {k: request.POST.get(k, "") for k in ("workflow", "name", "description")}
    workflow = workflows_for_user(request.user).filter(slug=values["workflow"]).first()
    if workflow is None:
        return _datasets_page(request, errors={"workflow": ["choose one of your workflows"]},
                              values=values, status=400)
    try:
        dataset = services.dataset_create(actor=request.user, workflow=workflow,
                                          name=values["name"],
                                          description=values["description"])
    except ValidationError as exc:
        return _datasets_page(request, errors=_errors(exc), values=values, status=400)
    messages.success(request, f"Dataset {dataset.name} created.")
    return redirect("shadow:dataset", pk=dataset.pk)


FILTER_FIELDS = ("source", "is_good", "failure_category", "agent_version", "tool",
                 "date_from", "date_to")


def _dataset_page(request: HttpRequest, dataset: Dataset, *, errors: dict | None = None,
                  values: dict | None = None, status: int = 200) -> HttpResponse:
    versions = dataset.versions.prefetch_related("exports").order_by("-number")
    return render(request, "shadow/dataset_detail.html", {
        "dataset": dataset, "versions": versions, "errors": errors or {},
        "values": values or {}, "sources": ExampleSource.choices,
        "categories": FailureCategory.choices, "formats": ExportFormat.choices,
        "is_manager": is_manager(request.user),
    }, status=status)


@login_required
@require_GET
def dataset_detail(request: HttpRequest, pk: int) -> HttpResponse:
    return _dataset_page(request, _dataset_for(request, pk))


@login_required
@require_POST
def version_new(request: HttpRequest, pk: int) -> HttpResponse:
    dataset = _dataset_for(request, pk)
    values = {k: request.POST.get(k, "") for k in FILTER_FIELDS}
    try:
        version = services.dataset_version_create(actor=request.user, dataset=dataset,
                                                  filters=values)
    except ValidationError as exc:
        return _dataset_page(request, dataset, errors=_errors(exc), values=values, status=400)
    messages.success(request, f"Version {version.number} cut: "
                              f"{version.example_count} examples, frozen.")
    return redirect("shadow:dataset", pk=dataset.pk)


@login_required
@require_POST
def export_new(request: HttpRequest, pk: int) -> HttpResponse:
    version = get_object_or_404(DatasetVersion.objects.filter(
        dataset__in=selectors.datasets_for_user(request.user)).select_related(
        "dataset__workflow"), pk=pk)
    try:
        job = services.export_start(actor=request.user, version=version,
                                    format=request.POST.get("format", ""))
    except ValidationError as exc:
        return _dataset_page(request, version.dataset, errors=_errors(exc), status=400)
    except PermissionDenied as exc:  # pragma: no cover - the access helper 404s first
        raise Http404 from exc
    if request.htmx:
        return render(request, "shadow/_export_progress.html", {"job": job})
    messages.success(request, f"Export #{job.pk} started.")
    return redirect("shadow:dataset", pk=version.dataset_id)


@login_required
@require_GET
def export_progress(request: HttpRequest, pk: int) -> HttpResponse:
    return render(request, "shadow/_export_progress.html", {"job": _export_for(request, pk)})


@login_required
@require_GET
def export_download(request: HttpRequest, pk: int) -> FileResponse:
    job = _export_for(request, pk)
    if job.status != ExportStatus.DONE or not job.file_path:
        raise Http404("export is not finished")
    path = Path(job.file_path).resolve()
    # Only files the exporter wrote under the export directory are ever served.
    if not path.is_relative_to(Path(settings.GATEHOUSE_EXPORT_DIR).resolve()) or \
            not path.is_file():
        raise Http404("export file is gone")
    content_type = "text/csv" if job.format == ExportFormat.CSV else "application/x-ndjson"
    return FileResponse(path.open("rb"), as_attachment=True, filename=path.name,
                        content_type=content_type)
