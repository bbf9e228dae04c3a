from __future__ import annotations

from django import forms
from django.contrib import admin, messages
from django.core.exceptions import ValidationError
from django.http import HttpRequest

from agents import services
from agents.models import Agent, AuditEvent, Policy, ReleaseNote, Tool, Workflow
from agents.policy import parse_policy


@admin.register(Agent)
class AgentAdmin(admin.ModelAdmin):
    list_display = ["name", "token_prefix", "is_active", "created_at"]
    filter_horizontal = ["workflows"]
    readonly_fields = ["token_prefix", "created_at"]
    actions = ["rotate_token"]

    def save_model(self, request: HttpRequest, obj: Agent, form: forms.ModelForm,
                   change: bool) -> None:
        if change:
            super().save_model(request, obj, form, change)
            return
        issued = services.agent_create(actor=request.user, name=obj.name,
                                       webhook_url=obj.webhook_url)
        obj.pk = issued.agent.pk
        obj.token_hash = issued.agent.token_hash
        obj.token_prefix = issued.agent.token_prefix
        obj.webhook_secret = issued.agent.webhook_secret
        obj.created_at = issued.agent.created_at
        messages.warning(request, f"Token for {obj.name} (shown once, copy it now): {issued.token}")

    @admin.action(description="Rotate token (the new token is shown once)")
    def rotate_token(self, request: HttpRequest, queryset) -> None:  # type: ignore[no-untyped-def]
        for agent in queryset:
            issued = services.agent_rotate_token(actor=request.user, agent=agent)
            messages.warning(request, f"New token for {agent.name} (shown once): {issued.token}")


class PolicyInline(admin.TabularInline):
    model = Policy
    extra = 0
    fields = ["version", "is_active", "note", "created_by", "created_at"]
    readonly_fields = fields
    can_delete = False
    show_change_link = True

    def has_add_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Workflow)
class WorkflowAdmin(admin.ModelAdmin):
    list_display = ["name", "slug", "autonomy_level", "paused", "reviewer_group"]
    prepopulated_fields = {"slug": ["name"]}
    # Level and pause change through the ladder and break-glass pages (audited).
    readonly_fields = ["autonomy_level", "level_changed_at", "paused", "promotion_frozen",
                       "frozen_reason"]
    inlines = [PolicyInline]


@admin.register(Tool)
class ToolAdmin(admin.ModelAdmin):
    list_display = ["name", "category", "risk", "executor_kind", "breaker_state"]
    list_filter = ["risk", "category", "breaker_state"]
    readonly_fields = ["breaker_state", "consecutive_failures", "breaker_opened_at"]


class PolicyForm(forms.ModelForm):
    class Meta:
        model = Policy
        fields = ["workflow", "document", "note"]
        widgets = {"document": forms.Textarea(attrs={"rows": 24, "cols": 90})}

    def clean_document(self) -> str:
        document = self.cleaned_data["document"]
        try:
            parse_policy(document)
        except ValidationError as exc:
            raise ValidationError(
                [f"{field}: {' '.join(msgs)}" for field, msgs in exc.message_dict.items()]
            ) from exc
        return document


@admin.register(Policy)
class PolicyAdmin(admin.ModelAdmin):
    """Adding a policy publishes a new version; versions are never edited."""

    form = PolicyForm
    list_display = ["workflow", "version", "is_active", "created_by", "created_at"]
    list_filter = ["workflow", "is_active"]

    def get_readonly_fields(self, request: HttpRequest, obj: Policy | None = None) -> list[str]:
        return ["workflow", "document", "note", "version", "is_active"] if obj else []

    def save_model(self, request: HttpRequest, obj: Policy, form: forms.ModelForm,
                   change: bool) -> None:
        if change:
            return
        published = services.policy_publish(actor=request.user, workflow=obj.workflow,
                                            document=obj.document, note=obj.note)
        obj.pk = published.pk
        obj.version = published.version

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(ReleaseNote)
class ReleaseNoteAdmin(admin.ModelAdmin):
    list_display = ["workflow", "kind", "old_level", "new_level", "actor", "created_at"]
    list_filter = ["workflow", "kind"]

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(AuditEvent)
class AuditEventAdmin(ReleaseNoteAdmin):
    list_display = ["id", "created_at", "actor_name", "action", "object_type", "object_id",
                    "from_state", "to_state"]
    list_filter = ["action", "actor_type"]
    search_fields = ["object_id", "actor_name", "action"]
