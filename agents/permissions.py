"""Who is a manager. In the bottom app so agents' services and approvals' selectors
both ask the same question without an upward import."""

from __future__ import annotations

from typing import Any

MANAGERS_GROUP = "managers"


def is_manager(user: Any) -> bool:
    """Superusers and members of the 'managers' group. Agents and SYSTEM are not users."""
    return bool(
        getattr(user, "is_authenticated", False)
        and hasattr(user, "groups")
        and (getattr(user, "is_superuser", False)
             or user.groups.filter(name=MANAGERS_GROUP).exists())
    )
