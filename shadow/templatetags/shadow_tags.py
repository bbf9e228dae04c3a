"""Template helpers so pages of other apps can show shadow comparisons without their
views importing shadow internals."""

from __future__ import annotations

from typing import Any

from django import template

from approvals.models import Proposal
from shadow import selectors

register = template.Library()


@register.simple_tag
def shadow_comparisons(proposal: Proposal) -> list[dict[str, Any]]:
    """The proposal's comparisons with their diffs, redacted per its policy."""
    qs = proposal.comparisons.select_related("outcome", "proposal__policy").order_by("id")
    return [{"c": c, "diff": selectors.shown_diff(c)} for c in qs]
