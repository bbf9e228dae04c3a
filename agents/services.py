"""Every state change of the registry: one function each, one transaction, audited."""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from django.contrib.auth.models import AbstractBaseUser
from django.db import transaction
from django.utils import timezone

from agents.audit import Actor, audit_record
from agents.models import Agent, Policy, ReleaseNote, ReleaseNoteKind, Workflow, hash_token
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
