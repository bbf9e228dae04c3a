from __future__ import annotations

from django.contrib import admin
from django.http import HttpRequest

from approvals.models import Execution, Proposal, Run, WebhookDelivery


class ReadOnlyAdmin(admin.ModelAdmin):
    """State changes go through services (audited); the admin only shows them."""

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: object = None) -> bool:
        return False


@admin.register(Run)
class RunAdmin(ReadOnlyAdmin):
    list_display = ["id", "workflow", "agent", "case_ref", "status", "tool_calls", "tokens", "cost"]
    list_filter = ["status", "workflow"]


@admin.register(Proposal)
class ProposalAdmin(ReadOnlyAdmin):
    list_display = ["id", "workflow", "tool_name", "decision", "status", "violation", "created_at"]
    list_filter = ["status", "decision", "violation", "workflow"]


@admin.register(Execution)
class ExecutionAdmin(ReadOnlyAdmin):
    list_display = ["id", "proposal", "status", "attempts", "dry_run", "finished_at"]
    list_filter = ["status"]


@admin.register(WebhookDelivery)
class WebhookDeliveryAdmin(ReadOnlyAdmin):
    list_display = ["id", "agent", "event", "attempts", "delivered_at"]
