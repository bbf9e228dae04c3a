"""Every state change of the registry: one function each, one transaction, audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.utils import timezone

from agents import ladder, permissions
from agents.audit import Actor, audit_record
from agents.models import (
    Agent,
    AutonomyLevel,
    Policy,
    ReleaseNote,
    ReleaseNoteKind,
    Workflow,
    hash_token,
)
from agents.policy import parse_policy


@dataclass
class IssuedToken:
    agent: Agent
    token: str


@transaction.atomic
def agent_create(
    *, actor: Actor, name: str, workflows: list[Workflow] | None = None, webhook_url: str = ""
) -> IssuedToken:
    """Register an agent. The raw token is returned once and never stored."""
    token = Agent.generate_token()
    agent = Agent.objects.create(
        name=name,
        token_hash=hash_token(token),
        token_prefix=token[:10],
        webhook_url=webhook_url,
        webhook_secret=secrets.token_hex(32),
    )
    if workflows:
        agent.workflows.set(workflows)
    audit_record(actor=actor, action="agent.create", obj=agent, to_state="active",
                 data={"workflows": [w.slug for w in workflows or []]})
    return IssuedToken(agent=agent, token=token)


@transaction.atomic
def agent_rotate_token(*, actor: Actor, agent: Agent) -> IssuedToken:
    token = Agent.generate_token()
    updated = Agent.objects.filter(pk=agent.pk).update(
        token_hash=hash_token(token), token_prefix=token[:10]
    )
    if updated != 1:
        raise Agent.DoesNotExist
    agent.refresh_from_db()
    audit_record(actor=actor, action="agent.rotate_token", obj=agent)
    return IssuedToken(agent=agent, token=token)


@transaction.atomic
def policy_publish(
    *, actor: AbstractBaseUser | Actor, workflow: Workflow, document: str, note: str = ""
) -> Policy:
    """Validate a policy document and make it the workflow's active version.

    Raises ValidationError keyed by field; nothing is written then. Earlier versions
    stay: every proposal keeps the version that decided it.
    """
    spec = parse_policy(document)
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    current = locked.policies.order_by("-version").first()
    Policy.objects.filter(workflow=locked, is_active=True).update(is_active=False)
    policy = Policy.objects.create(
        workflow=locked,
        version=(current.version + 1) if current else 1,
        document=document,
        parsed=spec.to_json(),
        is_active=True,
        created_by=actor if isinstance(actor, AbstractBaseUser) else None,
        note=note,
    )
    ReleaseNote.objects.create(
        workflow=locked,
        kind=ReleaseNoteKind.POLICY,
        actor=actor if isinstance(actor, AbstractBaseUser) else None,
        reason=note or f"policy v{policy.version} published",
        evidence={"version": policy.version},
    )
    audit_record(actor=actor, action="policy.publish", obj=policy,
                 from_state=f"v{current.version}" if current else "", to_state=f"v{policy.version}",
                 reason=note, data={"workflow": locked.slug})
    return policy


@transaction.atomic
def workflow_set_paused(*, actor: Actor, workflow: Workflow, paused: bool, reason: str) -> Workflow:
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if locked.paused == paused:
        return locked
    Workflow.objects.filter(pk=locked.pk).update(paused=paused)
    audit_record(actor=actor, action="workflow.pause" if paused else "workflow.resume",
                 obj=locked, from_state="running" if paused else "paused",
                 to_state="paused" if paused else "running", reason=reason)
    locked.paused = paused
    return locked


@transaction.atomic
def workflow_demote(
    *,
    actor: Actor,
    workflow: Workflow,
    to_level: int,
    reason: str,
    automatic: bool = False,
    evidence: dict | None = None,
) -> Workflow:
    """Lower the autonomy level (never raises it). A no-op when already at or below."""
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if locked.autonomy_level <= to_level:
        return locked
    old = locked.autonomy_level
    Workflow.objects.filter(pk=locked.pk, autonomy_level=old).update(
        autonomy_level=to_level, level_changed_at=timezone.now()
    )
    ReleaseNote.objects.create(
        workflow=locked,
        kind=ReleaseNoteKind.AUTO_DEMOTE if automatic else ReleaseNoteKind.DEMOTE,
        old_level=old, new_level=to_level,
        actor=actor if isinstance(actor, AbstractBaseUser) else None,
        reason=reason, evidence=evidence or {},
    )
    audit_record(actor=actor, action="workflow.demote", obj=locked, from_state=str(old),
                 to_state=str(to_level), reason=reason,
                 data={"automatic": automatic, "evidence": evidence or {}})
    locked.refresh_from_db()
    return locked


# ------------------------------------------------------------------ autonomy ladder
#
# Promotion, requalification and the agent-version freeze. The view measures (shadow
# metrics) and evaluates the gates (agents.ladder); each service re-checks the gate
# results with the same pure function under the workflow's row lock, so a promotion
# without passing evidence (or an override with a written justification) cannot happen.


def _require_manager(actor: Actor) -> None:
    if not permissions.is_manager(actor):
        raise PermissionDenied("only managers change a workflow's autonomy")


def _user_or_none(actor: Actor) -> AbstractBaseUser | None:
    return actor if isinstance(actor, AbstractBaseUser) else None


@transaction.atomic
def workflow_promote(
    *,
    actor: Actor,
    workflow: Workflow,
    reason: str,
    evidence: dict[str, Any],
    gate_results: list[ladder.GateResult],
    override_justification: str = "",
) -> Workflow:
    """One level up, with a reason, only when the next level's gates pass.

    A manager may override failing gates with a written justification; that is
    recorded as its own release-note kind. Frozen workflows (a new agent version not
    yet requalified) cannot be promoted at all.
    """
    _require_manager(actor)
    reason, override_justification = reason.strip(), override_justification.strip()
    if not reason:
        raise ValidationError({"reason": ["a reason is required to promote"]})
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if locked.promotion_frozen:
        raise ValidationError({"promotion_frozen": [
            f"promotion is frozen: {locked.frozen_reason or 'requalify the agent version first'}"]})
    if locked.autonomy_level >= AutonomyLevel.ACT_WITH_APPROVAL:
        raise ValidationError({"level": ["already at the top of the ladder"]})
    target = locked.autonomy_level + 1
    if any(r.target_level != target for r in gate_results):
        raise ValidationError({"level": ["the workflow's level changed since you looked; reload"]})
    # Time at level is re-measured here, under the lock, rather than trusted.
    now = timezone.now()
    checked = [
        ladder.GateResult(r.name, r.required, round(ladder.days_at_level(locked, now), 2),
                          False, target) if r.name == "min_days_at_level" else r
        for r in gate_results
    ]
    checked = [ladder.GateResult(r.name, r.required, r.actual,
                                 ladder.gate_passes(r.name, r.required, r.actual), target)
               for r in checked]
    passed = ladder.gates_pass(checked, locked, target)
    if not passed and not override_justification:
        failing = [r.label for r in checked if not r.passed] or ["the gate results are incomplete"]
        raise ValidationError({"override_justification": [
            "gates do not pass (" + ", ".join(failing) + "); promoting anyway needs a "
            "written override justification"]})
    overridden = not passed
    old = locked.autonomy_level
    updated = Workflow.objects.filter(pk=locked.pk, autonomy_level=old).update(
        autonomy_level=target, level_changed_at=now)
    if updated != 1:  # pragma: no cover - the row lock makes this unreachable
        raise ValidationError({"level": ["the workflow's level changed; reload"]})
    full_evidence = {**evidence, "gates": [r.to_json() for r in checked],
                     "gates_passed": passed}
    if overridden:
        full_evidence["override_justification"] = override_justification
    ReleaseNote.objects.create(
        workflow=locked, kind=ReleaseNoteKind.OVERRIDE if overridden else ReleaseNoteKind.PROMOTE,
        old_level=old, new_level=target, actor=_user_or_none(actor),
        reason=reason + (f" (override: {override_justification})" if overridden else ""),
        evidence=full_evidence,
    )
    audit_record(actor=actor, action="workflow.override_promote" if overridden
                 else "workflow.promote", obj=locked, from_state=str(old), to_state=str(target),
                 reason=reason, data={"evidence": full_evidence})
    locked.refresh_from_db()
    return locked



@transaction.atomic
def workflow_demote_manual(*, actor: Actor, workflow: Workflow, reason: str) -> Workflow:
    """A manager takes the workflow one level down, with a reason."""
    _require_manager(actor)
    if not reason.strip():
        raise ValidationError({"reason": ["a reason is required to demote"]})
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if locked.autonomy_level <= AutonomyLevel.SHADOW:
        raise ValidationError({"level": ["already at level 0 shadow"]})
    return workflow_demote(actor=actor, workflow=locked, to_level=locked.autonomy_level - 1,
                           reason=reason.strip())


@transaction.atomic
def workflow_agent_version_seen(*, actor: Actor, workflow: Workflow, agent_version: str) -> None:
    """Called when a run opens: the first version becomes current; any other one
    freezes promotion until a manager requalifies it on its own evidence."""
    if not agent_version:
        return
    seen = Workflow.objects.filter(pk=workflow.pk).values_list(
        "current_agent_version", "pending_agent_version").first()
    if seen is None or agent_version in seen:
        return  # the common case: no lock taken
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if agent_version in (locked.current_agent_version, locked.pending_agent_version):
        return  # a concurrent run got here first
    if not locked.current_agent_version:
        Workflow.objects.filter(pk=locked.pk).update(current_agent_version=agent_version)
        ReleaseNote.objects.create(
            workflow=locked, kind=ReleaseNoteKind.AGENT_VERSION, actor=_user_or_none(actor),
            reason=f"first agent version {agent_version}",
            evidence={"agent_version": agent_version})
        audit_record(actor=actor, action="workflow.agent_version", obj=locked,
                     to_state=agent_version[:30], data={"agent_version": agent_version})
        return
    workflow_freeze(actor=actor, workflow=locked, agent_version=agent_version)


@transaction.atomic
def workflow_freeze(*, actor: Actor, workflow: Workflow, agent_version: str) -> Workflow:
    """A new agent version: its evidence starts from zero, so promotion is frozen."""
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if agent_version in (locked.current_agent_version, locked.pending_agent_version):
        return locked
    reason = (f"new agent version {agent_version} (current {locked.current_agent_version}): "
              "promotion frozen until it requalifies")[:300]
    Workflow.objects.filter(pk=locked.pk).update(
        pending_agent_version=agent_version, promotion_frozen=True, frozen_reason=reason)
    evidence = {"agent_version": agent_version, "previous": locked.current_agent_version,
                "replaces_pending": locked.pending_agent_version}
    ReleaseNote.objects.create(
        workflow=locked, kind=ReleaseNoteKind.AGENT_VERSION, actor=_user_or_none(actor),
        reason=f"new agent version {agent_version}", evidence=evidence)
    if not locked.promotion_frozen:
        ReleaseNote.objects.create(
            workflow=locked, kind=ReleaseNoteKind.FREEZE, actor=_user_or_none(actor),
            reason=reason, evidence=evidence)
    audit_record(actor=actor, action="workflow.freeze", obj=locked,
                 from_state="frozen" if locked.promotion_frozen else "open", to_state="frozen",
                 reason=reason, data=evidence)
    locked.refresh_from_db()
    return locked


@transaction.atomic
def workflow_requalify(
    *, actor: Actor, workflow: Workflow, reason: str, evidence: dict[str, Any],
    gate_results: list[ladder.GateResult],
) -> Workflow:
    """Unfreeze: the new version's own metrics pass the gates of the current level
    (time at level aside); it becomes the current version."""
    _require_manager(actor)
    if not reason.strip():
        raise ValidationError({"reason": ["a reason is required to requalify"]})
    locked = Workflow.objects.select_for_update().get(pk=workflow.pk)
    if not locked.promotion_frozen:
        raise ValidationError({"promotion_frozen": ["promotion is not frozen"]})
    level = locked.autonomy_level
    if level > AutonomyLevel.SHADOW and not ladder.gates_pass(
            gate_results, locked, level, include_days=False):
        failing = [r.label for r in gate_results if not r.passed] or ["incomplete gate results"]
        raise ValidationError({"gates": [
            f"agent version {locked.pending_agent_version} does not pass the level {level} "
            "gates yet: " + ", ".join(failing)]})
    version = locked.pending_agent_version or locked.current_agent_version
    Workflow.objects.filter(pk=locked.pk).update(
        current_agent_version=version, pending_agent_version="", promotion_frozen=False,
        frozen_reason="")
    full_evidence = {**evidence, "agent_version": version,
                     "previous": locked.current_agent_version,
                     "gates": [r.to_json() for r in gate_results]}
    ReleaseNote.objects.create(
        workflow=locked, kind=ReleaseNoteKind.UNFREEZE, actor=_user_or_none(actor),
        reason=f"agent version {version} requalified: {reason.strip()}", evidence=full_evidence)
    audit_record(actor=actor, action="workflow.requalify", obj=locked, from_state="frozen",
                 to_state="open", reason=reason.strip(), data=full_evidence)
    locked.refresh_from_db()
    return locked
