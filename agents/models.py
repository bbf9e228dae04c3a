"""Registry: agents, workflows, tools, policies, and the workflow's release notes."""

from __future__ import annotations

import hashlib
import secrets

from django.conf import settings
from django.contrib.auth.models import Group
from django.db import models

TOKEN_PREFIX = "gh_"


def hash_token(raw: str) -> str:
    return hashlib.sha256(raw.encode()).hexdigest()


class AutonomyLevel(models.IntegerChoices):
    SHADOW = 0, "0 shadow"
    DRAFT = 1, "1 draft"
    SUGGEST = 2, "2 suggest"
    ACT_LOW_RISK = 3, "3 act low-risk"
    ACT_WITH_APPROVAL = 4, "4 act with approval"


class Agent(models.Model):
    name = models.CharField(max_length=100, unique=True)
    # Only the SHA-256 of the token is stored; the raw token is shown once.
    token_hash = models.CharField(max_length=64, unique=True, editable=False)
    token_prefix = models.CharField(max_length=12, editable=False)
    is_active = models.BooleanField(default=True)
    webhook_url = models.URLField(blank=True)
    webhook_secret = models.CharField(max_length=64, blank=True, editable=False)
    workflows = models.ManyToManyField("Workflow", related_name="agents", blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    @staticmethod
    def generate_token() -> str:
        return TOKEN_PREFIX + secrets.token_urlsafe(32)

    # DRF's IsAuthenticated asks the authenticated principal this.
    @property
    def is_authenticated(self) -> bool:
        return True


class Workflow(models.Model):
    name = models.CharField(max_length=100)
    slug = models.SlugField(max_length=100, unique=True)
    description = models.TextField(blank=True)
    autonomy_level = models.PositiveSmallIntegerField(
        choices=AutonomyLevel.choices, default=AutonomyLevel.SHADOW
    )
    level_changed_at = models.DateTimeField(null=True, blank=True)
    paused = models.BooleanField(default=False)
    reviewer_group = models.ForeignKey(
        Group, null=True, blank=True, on_delete=models.SET_NULL, related_name="workflows"
    )
    # Per-level gate overrides; missing keys fall back to agents.ladder.DEFAULT_GATES.
    gates = models.JSONField(default=dict, blank=True)
    # The agent version whose evidence counts; a new version freezes promotion.
    current_agent_version = models.CharField(max_length=100, blank=True)
    # The version seen since that froze promotion; it becomes current when requalified.
    pending_agent_version = models.CharField(max_length=100, blank=True)
    promotion_frozen = models.BooleanField(default=False)
    frozen_reason = models.CharField(max_length=300, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name


class ToolRisk(models.TextChoices):
    LOW = "low", "low"
    HIGH = "high", "high"


class ExecutorKind(models.TextChoices):
    WEBHOOK = "webhook", "HTTP webhook"
    PYTHON = "python", "Python callable"


class BreakerState(models.TextChoices):
    CLOSED = "closed", "closed"
    OPEN = "open", "open"


class Tool(models.Model):
    name = models.CharField(max_length=100, unique=True, help_text="e.g. jira.create_ticket")
    category = models.CharField(
        max_length=50, blank=True, help_text="e.g. jira; break-glass disables by category"
    )
    description = models.TextField(blank=True)
    risk = models.CharField(max_length=10, choices=ToolRisk.choices, default=ToolRisk.LOW)
    input_schema = models.JSONField(default=dict, blank=True)
    executor_kind = models.CharField(
        max_length=10, choices=ExecutorKind.choices, default=ExecutorKind.PYTHON
    )
    executor_target = models.CharField(
        max_length=500, help_text="URL for a webhook, registered name for a Python callable"
    )
    # Key of the comparator used in shadow mode (shadow.comparators.REGISTRY).
    comparator = models.CharField(max_length=50, default="fields")
    breaker_state = models.CharField(
        max_length=10, choices=BreakerState.choices, default=BreakerState.CLOSED
    )
    consecutive_failures = models.PositiveIntegerField(default=0)
    breaker_opened_at = models.DateTimeField(null=True, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["name"]

    def __str__(self) -> str:
        return self.name

    def clean(self) -> None:
        if not self.category and "." in self.name:
            self.category = self.name.split(".", 1)[0]


class Policy(models.Model):
    """One version of a workflow's policy document. Versions are never edited."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="policies")
    version = models.PositiveIntegerField()
    document = models.TextField(help_text="YAML in the seed's shape")
    parsed = models.JSONField(default=dict, editable=False)
    is_active = models.BooleanField(default=False)
    created_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    created_at = models.DateTimeField(auto_now_add=True)
    note = models.CharField(max_length=300, blank=True)

    class Meta:
        ordering = ["workflow", "-version"]
        constraints = [
            models.UniqueConstraint(fields=["workflow", "version"], name="policy_unique_version"),
            models.UniqueConstraint(
                fields=["workflow"], condition=models.Q(is_active=True), name="policy_one_active"
            ),
        ]
        verbose_name_plural = "policies"

    def __str__(self) -> str:
        return f"{self.workflow.slug} v{self.version}"


class ReleaseNoteKind(models.TextChoices):
    PROMOTE = "promote", "promoted"
    OVERRIDE = "override", "promoted by override"
    DEMOTE = "demote", "demoted"
    AUTO_DEMOTE = "auto_demote", "demoted automatically"
    FREEZE = "freeze", "promotion frozen"
    UNFREEZE = "unfreeze", "promotion unfrozen"
    POLICY = "policy", "policy changed"
    AGENT_VERSION = "agent_version", "new agent version"


class ReleaseNote(models.Model):
    """Every change to a workflow's autonomy, policy or agent: the release notes."""

    workflow = models.ForeignKey(Workflow, on_delete=models.CASCADE, related_name="release_notes")
    kind = models.CharField(max_length=20, choices=ReleaseNoteKind.choices)
    old_level = models.PositiveSmallIntegerField(null=True, blank=True)
    new_level = models.PositiveSmallIntegerField(null=True, blank=True)
    actor = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL
    )
    reason = models.TextField()
    evidence = models.JSONField(default=dict, blank=True)
    created_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-created_at", "-id"]

    def __str__(self) -> str:
        return f"{self.workflow_id}: {self.get_kind_display()}"


class AuditEvent(models.Model):
    """Append-only, hash-chained. On PostgreSQL triggers refuse UPDATE/DELETE/TRUNCATE."""

    actor_type = models.CharField(max_length=10)  # user, agent, system
    actor_id = models.CharField(max_length=100, blank=True)
    actor_name = models.CharField(max_length=150, blank=True)
    action = models.CharField(max_length=60)
    object_type = models.CharField(max_length=40)
    object_id = models.CharField(max_length=64)
    from_state = models.CharField(max_length=30, blank=True)
    to_state = models.CharField(max_length=30, blank=True)
    reason = models.TextField(blank=True)
    data = models.JSONField(default=dict, blank=True)
    prev_hash = models.CharField(max_length=64)
    hash = models.CharField(max_length=64, unique=True)
    created_at = models.DateTimeField()

    class Meta:
        ordering = ["id"]
        indexes = [models.Index(fields=["object_type", "object_id"])]

    def __str__(self) -> str:
        return f"#{self.pk} {self.action} {self.object_type}:{self.object_id}"
