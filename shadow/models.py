"""Human outcomes, comparisons, labeled examples and versioned datasets."""

from __future__ import annotations

from django.conf import settings
from django.db import models

from agents.models import Workflow
from approvals.models import FailureCategory, Proposal


class OutcomeSource(models.TextChoices):
    API = "api", "API"
    CSV = "csv", "CSV upload"
    MANUAL = "manual", "entered by hand"


class HumanOutcome(models.Model):
    """What a human actually did for a case, matched to shadow proposals by case_ref."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="outcomes")
    case_ref = models.CharField(max_length=200)
    tool_name = models.CharField(max_length=100)
    arguments = models.JSONField(default=dict, blank=True)
    text = models.TextField(blank=True)
    source = models.CharField(max_length=10, choices=OutcomeSource.choices)
    external_id = models.CharField(max_length=200, blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workflow", "case_ref"])]
        constraints = [
            models.UniqueConstraint(
                fields=["workflow", "external_id"],
                condition=~models.Q(external_id=""),
                name="outcome_unique_external_id",
            )
        ]

    def __str__(self) -> str:
        return f"outcome {self.pk} ({self.case_ref})"


class Verdict(models.TextChoices):
    AGREE = "agree", "agree"
    PARTIAL = "partial", "partial"
    DISAGREE = "disagree", "disagree"


class Comparison(models.Model):
    proposal = models.ForeignKey(Proposal, on_delete=models.CASCADE, related_name="comparisons")
    outcome = models.ForeignKey(HumanOutcome, on_delete=models.CASCADE, related_name="comparisons")
    comparator = models.CharField(max_length=50)
    verdict = models.CharField(max_length=10, choices=Verdict.choices)
    score = models.FloatField()
    field_diff = models.JSONField(default=dict)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [
            models.UniqueConstraint(fields=["proposal", "outcome"], name="comparison_unique_pair")
        ]

    def __str__(self) -> str:
        return f"comparison {self.pk} {self.verdict}"


class ExampleSource(models.TextChoices):
    EDIT = "edit", "edited in review"
    REJECTION = "rejection", "rejected in review"
    APPROVAL = "approval", "approved unchanged"
    SHADOW = "shadow", "shadow comparison"


class LabeledExample(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="examples")
    proposal = models.ForeignKey(Proposal, on_delete=models.CASCADE, related_name="examples")
    comparison = models.OneToOneField(
        Comparison, null=True, blank=True, on_delete=models.CASCADE, related_name="example"
    )
    source = models.CharField(max_length=10, choices=ExampleSource.choices)
    agent_version = models.CharField(max_length=100, blank=True)
    tool_name = models.CharField(max_length=100)
    context = models.JSONField(default=dict, blank=True)
    agent_output = models.JSONField(default=dict)
    human_output = models.JSONField(null=True, blank=True)
    is_good = models.BooleanField()
    failure_category = models.CharField(max_length=20, choices=FailureCategory.choices, blank=True)
    note = models.TextField(blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["workflow", "source", "created_at"])]

    def __str__(self) -> str:
        return f"example {self.pk} ({self.source})"


class Dataset(models.Model):
    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="datasets")
    name = models.CharField(max_length=100)
    description = models.TextField(blank=True)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "name"], name="dataset_unique_name")
        ]

    def __str__(self) -> str:
        return self.name


class DatasetVersion(models.Model):
    """A frozen selection of examples; versions are never edited."""

    dataset = models.ForeignKey(Dataset, on_delete=models.CASCADE, related_name="versions")
    number = models.PositiveIntegerField()
    filters = models.JSONField(default=dict, blank=True)
    examples = models.ManyToManyField(LabeledExample, related_name="dataset_versions")
    example_count = models.PositiveIntegerField(default=0)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["dataset", "-number"]
        constraints = [
            models.UniqueConstraint(fields=["dataset", "number"], name="dataset_version_unique")
        ]

    def __str__(self) -> str:
        return f"{self.dataset} v{self.number}"


class ExportStatus(models.TextChoices):
    QUEUED = "queued", "queued"
    RUNNING = "running", "running"
    DONE = "done", "done"
    FAILED = "failed", "failed"


class ExportFormat(models.TextChoices):
    JSONL = "jsonl", "JSONL"
    CSV = "csv", "CSV"
    OPENAI = "openai", "OpenAI chat fine-tune"


class ExportJob(models.Model):
    version = models.ForeignKey(DatasetVersion, on_delete=models.CASCADE, related_name="exports")
    format = models.CharField(max_length=10, choices=ExportFormat.choices)
    status = models.CharField(
        max_length=10, choices=ExportStatus.choices, default=ExportStatus.QUEUED
    )
    rows_done = models.PositiveIntegerField(default=0)
    rows_total = models.PositiveIntegerField(default=0)
    file_path = models.CharField(max_length=500, blank=True)
    error = models.TextField(blank=True)
    # Each claim bumps attempt; a worker whose attempt is no longer current stops.
    attempt = models.PositiveIntegerField(default=0)
    # Touched on every progress batch: a RUNNING job that stops beating has lost its
    # worker and is requeued by shadow.services.exports_recover.
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"export {self.pk} {self.format} {self.status}"
