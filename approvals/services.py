"""Every state change of runs, proposals and the break-glass switch.

One function per transition, one transaction each, a row lock or a guarded update
whose row count is checked, and an audit event in the same transaction. Work for the
worker is enqueued with transaction.on_commit, never inside the transaction.
"""

from __future__ import annotations

import functools
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from decimal import Decimal
from typing import Any

import jsonschema
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import F, Q, Subquery
from django.utils import timezone

from agents.audit import SYSTEM, Actor, audit_record
from agents.models import Agent, AutonomyLevel, Policy, Tool, Workflow
from agents.policy import DEFAULT_POLICY_YAML, PolicySpec, parse_policy
from agents.services import workflow_agent_version_seen
from approvals import dispatch, gateway, pii, spikes
from approvals.models import (
    BreakGlass,
    Decision,
    Execution,
    FailureCategory,
    Proposal,
    ProposalStatus,
    Run,
    RunStatus,
    Violation,
    WebhookDelivery,
)
from approvals.selectors import user_can_review


class ConflictError(Exception):
    """The object is not in the state the caller expected (HTTP 409)."""


class IdempotencyConflict(Exception):
    """The Idempotency-Key was used before with a different request body (HTTP 422)."""


def canonical_hash(value: Any) -> str:
    return hashlib.sha256(
        json.dumps(value, sort_keys=True, separators=(",", ":"), default=str).encode()
    ).hexdigest()


def break_glass_get() -> BreakGlass:
    switch, _ = BreakGlass.objects.get_or_create(pk=1)
    return switch


# A policy version is never edited and the same text always parses to the same
# (frozen) spec, so parsing is memoised by document text: YAML parsing was the largest
# CPU cost of proposal ingest (bench/bench_ingest.py).
_parse_policy_cached = functools.lru_cache(maxsize=256)(parse_policy)


def active_policy(workflow: Workflow) -> tuple[Policy | None, PolicySpec]:
    policy = workflow.policies.filter(is_active=True).first()
    if policy is None:
        return None, _parse_policy_cached(DEFAULT_POLICY_YAML)
    return policy, _parse_policy_cached(policy.document)


def validate_arguments(tool: Tool, arguments: Any, *, field: str = "arguments") -> None:
    """Validate against the tool's JSON Schema; the error names the offending field."""
    if not isinstance(arguments, dict):
        raise ValidationError({field: ["must be a JSON object"]})
    if not tool.input_schema:
        return
    validator = jsonschema.Draft202012Validator(tool.input_schema)
    errors = sorted(validator.iter_errors(arguments), key=lambda e: list(e.absolute_path))
    if not errors:
        return
    detail: dict[str, list[str]] = {}
    for error in errors:
        path = list(error.absolute_path)
        if error.validator == "required":
            missing = error.message.split("'")[1] if "'" in error.message else ""
            path = [*path, missing]
        key = ".".join([field, *[str(p) for p in path if p != ""]])
        detail.setdefault(key, []).append(error.message)
    raise ValidationError(detail)


# ---------------------------------------------------------------------------- runs


@transaction.atomic
def run_open(*, actor: Agent, workflow: Workflow, case_ref: str, agent_version: str = "") -> Run:
    if not actor.workflows.filter(pk=workflow.pk).exists():
        raise PermissionDenied(f"agent {actor.name} is not registered for workflow {workflow.slug}")
    run = Run.objects.create(
        workflow=workflow, agent=actor, case_ref=case_ref, agent_version=agent_version
    )
    audit_record(actor=actor, action="run.open", obj=run, to_state=RunStatus.OPEN,
                 data={"workflow": workflow.slug, "case_ref": case_ref})
    # A new agent version freezes promotion until requalified (the first one is current).
    workflow_agent_version_seen(actor=actor, workflow=workflow, agent_version=agent_version)
    return run


@transaction.atomic
def run_close(*, actor: Agent | AbstractBaseUser, run: Run, outcome: str = "") -> Run:
    updated = Run.objects.filter(pk=run.pk, status=RunStatus.OPEN).update(
        status=RunStatus.CLOSED, closed_at=timezone.now(), outcome=outcome
    )
    if updated != 1:
        raise ConflictError("run is already closed")
    audit_record(actor=actor, action="run.close", obj=run, from_state=RunStatus.OPEN,
                 to_state=RunStatus.CLOSED, reason=outcome)
    run.refresh_from_db()
    return run


def _claim_budget(run: Run, spec: PolicySpec, tokens: int, cost: Decimal) -> str | None:
    """Atomically add one tool call and its tokens/cost to the run, within budget.

    A single guarded UPDATE: under concurrency PostgreSQL re-evaluates the WHERE after
    taking the row lock, so 50 parallel proposals against a budget of 10 see exactly
    10 successes. Returns None on success, else what was exceeded.
    """
    guard = Q(pk=run.pk, status=RunStatus.OPEN)
    if spec.max_tool_calls is not None:
        guard &= Q(tool_calls__lt=spec.max_tool_calls)
    if spec.max_total_tokens is not None:
        guard &= Q(tokens__lte=spec.max_total_tokens - tokens)
    if spec.max_cost_usd is not None:
        guard &= Q(cost__lte=spec.max_cost_usd - cost)
    updated = Run.objects.filter(guard).update(
        tool_calls=F("tool_calls") + 1, tokens=F("tokens") + tokens, cost=F("cost") + cost
    )
    if updated == 1:
        return None
    current = Run.objects.get(pk=run.pk)
    if current.status != RunStatus.OPEN:
        raise ConflictError("run is closed")
    if spec.max_tool_calls is not None and current.tool_calls >= spec.max_tool_calls:
        return f"max_tool_calls {spec.max_tool_calls} reached"
    if spec.max_total_tokens is not None and current.tokens + tokens > spec.max_total_tokens:
        return f"max_total_tokens {spec.max_total_tokens} would be exceeded"
    return f"max_cost_usd {spec.max_cost_usd} would be exceeded"


# ----------------------------------------------------------------------- proposals


@dataclass
class SubmitResult:
    proposal: Proposal
    replayed: bool


@dataclass
class _SubmitContext:
    workflow: Workflow
    policy: Policy | None
    spec: PolicySpec
    read_only: bool
    disabled_categories: list[str]
    existing: tuple[int, str] | None  # (pk, request_hash) of the key's first proposal


def _submit_context(run: Run, actor: Agent, idempotency_key: str) -> _SubmitContext:
    """Everything ingest reads before deciding, in one query when the workflow has an
    active policy (round trips dominate ingest, bench/bench_ingest.py): the run's
    workflow, re-read (a caller's copy may predate a level change), its active policy,
    the break-glass switch and a proposal already made with this key. None of these
    reads needs a lock: the unique constraint settles racing keys (proposal_submit)."""
    same_key = Proposal.objects.filter(agent=actor, idempotency_key=idempotency_key)
    switch = BreakGlass.objects.filter(pk=1)
    policy = (
        Policy.objects.select_related("workflow")
        .filter(workflow_id=run.workflow_id, is_active=True)
        .annotate(
            existing_id=Subquery(same_key.values("pk")[:1]),
            existing_hash=Subquery(same_key.values("request_hash")[:1]),
            bg_read_only=Subquery(switch.values("read_only")[:1]),
            bg_disabled=Subquery(switch.values("disabled_categories")[:1]),
        )
        .first()
    )
    if policy is None or policy.bg_read_only is None:  # type: ignore[attr-defined]
        # No active policy (or a brand-new database without the switch row): the plain reads.
        workflow = Workflow.objects.get(pk=run.workflow_id)
        policy, spec = active_policy(workflow)
        bg = break_glass_get()
        first = same_key.values_list("pk", "request_hash").first()
        return _SubmitContext(workflow, policy, spec, bg.read_only,
                              list(bg.disabled_categories), first)
    existing_id = policy.existing_id  # type: ignore[attr-defined]
    return _SubmitContext(
        policy.workflow, policy, _parse_policy_cached(policy.document),
        bool(policy.bg_read_only), list(policy.bg_disabled or []),  # type: ignore[attr-defined]
        (existing_id, policy.existing_hash) if existing_id is not None else None,  # type: ignore[attr-defined]
    )


def _replay(existing: tuple[int, str], request_hash: str) -> SubmitResult:
    if existing[1] != request_hash:
        raise IdempotencyConflict("Idempotency-Key was already used with a different request body")
    return SubmitResult(Proposal.objects.get(pk=existing[0]), replayed=True)


def proposal_submit(
    *,
    actor: Agent,
    run: Run,
    tool_name: str,
    arguments: dict[str, Any],
    idempotency_key: str,
    draft_text: str = "",
    rationale: str = "",
    model_name: str = "",
    agent_version: str = "",
    tokens: int = 0,
    cost: Decimal = Decimal("0"),
) -> SubmitResult:
    """Ingest a proposal and let the gateway decide. Replays on a repeated key.

    Exactly one proposal per (agent, key) comes from the unique constraint, not a lock:
    two identical requests racing both pass the lookup, the second's INSERT waits for
    the first to commit and then fails, its whole transaction (budget claim included)
    rolls back, and it replays the first (or gets the 422 for a different body). The
    common case pays no lock round trip.
    """
    request = ProposalRequest(run=run, tool_name=tool_name, arguments=arguments,
                              draft_text=draft_text, rationale=rationale,
                              model_name=model_name, agent_version=agent_version,
                              tokens=tokens, cost=cost)
    try:
        return _proposal_submit(actor=actor, idempotency_key=idempotency_key, request=request)
    except IntegrityError as exc:
        if "proposal_unique_idempotency_key" not in str(exc):
            raise
    existing = (Proposal.objects.filter(agent=actor, idempotency_key=idempotency_key)
                .values_list("pk", "request_hash").first())
    if existing is None:  # pragma: no cover - the conflicting row committed before we failed
        raise ConflictError("concurrent request with the same Idempotency-Key; retry")
    return _replay(existing, request.request_hash)


@dataclass(frozen=True)
class ProposalRequest:
    """What the agent sent; its hash tells a replay from a reused key (422)."""

    run: Run
    tool_name: str
    arguments: dict[str, Any]
    draft_text: str
    rationale: str
    model_name: str
    agent_version: str
    tokens: int
    cost: Decimal

    @property
    def request_hash(self) -> str:
        return canonical_hash({
            "run": self.run.pk, "tool": self.tool_name, "arguments": self.arguments,
            "draft_text": self.draft_text, "rationale": self.rationale,
            "model": self.model_name, "agent_version": self.agent_version,
            "tokens": self.tokens, "cost": str(self.cost),
        })


@transaction.atomic
def _proposal_submit(
    *, actor: Agent, idempotency_key: str, request: ProposalRequest
) -> SubmitResult:
    request_hash = request.request_hash
    run, tool_name, arguments = request.run, request.tool_name, request.arguments
    draft_text, rationale, model_name = request.draft_text, request.rationale, request.model_name
    agent_version, tokens, cost = request.agent_version, request.tokens, request.cost
    ctx = _submit_context(run, actor, idempotency_key)
    if ctx.existing is not None:
        return _replay(ctx.existing, request_hash)

    if run.agent_id != actor.pk:
        raise PermissionDenied("run belongs to another agent")
    workflow, policy, spec = ctx.workflow, ctx.policy, ctx.spec
    tool = Tool.objects.filter(name=tool_name).first()

    inp = gateway.GatewayInput(
        workflow=workflow, level=workflow.autonomy_level, tool_name=tool_name, tool=tool,
        spec=spec, arguments=arguments, read_only=ctx.read_only,
        disabled_categories=ctx.disabled_categories, budget_problem=None,
        has_draft=bool(draft_text.strip()),
    )
    # The gateway's order: break-glass and the allow-list first (a disallowed tool is a
    # recorded violation whatever its arguments), then the schema (400, nothing
    # written), then the budget claim.
    if not gateway.check_break_glass(inp) and tool is not None and tool_name in spec.allowed_tools:
        validate_arguments(tool, arguments)
        inp.budget_problem = _claim_budget(run, spec, tokens, cost)
    elif Run.objects.filter(pk=run.pk, status=RunStatus.OPEN).count() != 1:
        raise ConflictError("run is closed")
    result = gateway.decide(inp)

    now = timezone.now()
    sla_deadline = None
    if result.status == ProposalStatus.PENDING:
        minutes = spec.review_sla_minutes or settings.GATEHOUSE_DEFAULT_SLA_MINUTES
        sla_deadline = now + timedelta(minutes=minutes)
    proposal = Proposal.objects.create(
        run=run, workflow=workflow, agent=actor, tool=tool, tool_name=tool_name,
        arguments=arguments, args_hash=canonical_hash(arguments), draft_text=draft_text,
        rationale=rationale, model_name=model_name,
        agent_version=agent_version or run.agent_version, tokens=tokens, cost=cost,
        decision=result.decision, decision_reasons=result.reasons, policy=policy,
        level_at_decision=workflow.autonomy_level, violation=result.violation,
        fallback_applied=result.fallback, status=result.status, sla_deadline=sla_deadline,
        decided_at=now if result.status != ProposalStatus.PENDING else None,
        idempotency_key=idempotency_key, request_hash=request_hash,
    )
    audit_record(actor=actor, action="proposal.submit", obj=proposal, to_state=result.status,
                 reason="; ".join(result.reasons),
                 data={"decision": result.decision, "tool": tool_name,
                       "args_hash": proposal.args_hash, "violation": result.violation,
                       "policy_version": policy.version if policy else None})
    if result.violation == Violation.VIOLATION:
        spikes.violation_spike_check(workflow=workflow)
    if result.executes:
        _execution_create(proposal, dry_run=spec.dry_run)
    if result.status != ProposalStatus.PENDING:
        proposal_notify(proposal, "proposal.decided")
    return SubmitResult(proposal, replayed=False)


def _transition(
    *,
    actor: Actor,
    proposal: Proposal,
    to_status: ProposalStatus,
    expected_version: int | None,
    expected_args_hash: str | None = None,
    from_statuses: tuple[str, ...] = (ProposalStatus.PENDING,),
    reason: str = "",
    action: str,
    extra: dict[str, Any] | None = None,
    data: dict[str, Any] | None = None,
) -> Proposal:
    """The one guarded transition every review action goes through."""
    locked = Proposal.objects.select_for_update().filter(pk=proposal.pk).first()
    if locked is None:
        raise Proposal.DoesNotExist
    if locked.status not in from_statuses:
        raise ConflictError(f"proposal is {locked.status}, not {' or '.join(from_statuses)}")
    if expected_version is not None and locked.version != expected_version:
        raise ConflictError(
            f"proposal changed (version {locked.version}, you saw {expected_version}); reload"
        )
    if expected_args_hash is not None and expected_args_hash != locked.args_hash:
        raise ConflictError("the arguments you reviewed were superseded; reload")
    fields: dict[str, Any] = {
        "status": to_status, "version": locked.version + 1, **(extra or {}),
    }
    updated = Proposal.objects.filter(
        pk=locked.pk, status=locked.status, version=locked.version
    ).update(**fields)
    if updated != 1:  # pragma: no cover - the row lock makes this unreachable
        raise ConflictError("proposal changed; reload")
    audit_record(actor=actor, action=action, obj=locked, from_state=locked.status,
                 to_state=to_status, reason=reason,
                 data={"version": locked.version + 1, **(data or {})})
    locked.refresh_from_db()
    return locked


def _reviewer_may_decide(user: AbstractBaseUser, proposal: Proposal) -> None:
    if not user_can_review(user, proposal.workflow):
        raise PermissionDenied("you are not a reviewer of this workflow")


@transaction.atomic
def proposal_approve(
    *,
    actor: AbstractBaseUser,
    proposal: Proposal,
    expected_version: int | None,
    expected_args_hash: str | None = None,
    edited_arguments: dict[str, Any] | None = None,
    edited_text: str | None = None,
    note: str = "",
    failure_category: str = "",
) -> Proposal:
    """Approve, optionally after editing; edited arguments are re-validated."""
    _reviewer_may_decide(actor, proposal)
    switch = break_glass_get()
    if switch.read_only:
        raise ConflictError("break-glass read-only mode is on; nothing can be approved")
    # Escalated refusals wait in the queue too; two of them must never execute.
    if proposal.tool_id is None:
        raise ConflictError("the tool is not registered, so it cannot be executed; "
                            "hand off or reject")
    if proposal.level_at_decision == AutonomyLevel.SHADOW:
        raise ConflictError("decided at level 0 shadow: never executed; hand off or reject")
    extra: dict[str, Any] = {
        "decided_by_id": actor.pk, "decided_at": timezone.now(), "review_note": note,
    }
    data: dict[str, Any] = {}
    edited = False
    # The reviewer edited what they were shown: masks stand for the original values,
    # but only when masks were shown (the same test as the review page's).
    redacted = bool(proposal.policy and proposal.policy.parsed.get("pii_redaction"))
    if edited_arguments is not None and redacted:
        edited_arguments = pii.restore(edited_arguments, proposal.arguments)
    if edited_arguments is not None:
        if edited_arguments != proposal.arguments:
            if proposal.tool is None:
                raise ValidationError({"arguments": ["the tool is not registered"]})
            validate_arguments(proposal.tool, edited_arguments)
            extra["final_arguments"] = edited_arguments
            data["final_args_hash"] = canonical_hash(edited_arguments)
            edited = True
    if edited_text is not None and redacted:
        edited_text = pii.restore(edited_text, proposal.draft_text)
    if edited_text is not None and edited_text != proposal.draft_text:
        extra["final_text"] = edited_text
        edited = True
    if edited:
        if failure_category and failure_category not in FailureCategory.values:
            raise ValidationError({"failure_category": ["unknown failure category"]})
        extra["edited"] = True
        extra["reject_reason"] = failure_category
    approved = _transition(
        actor=actor, proposal=proposal, to_status=ProposalStatus.APPROVED,
        expected_version=expected_version, expected_args_hash=expected_args_hash,
        reason=note, action="proposal.edit_approve" if edited else "proposal.approve",
        extra=extra, data=data,
    )
    policy_spec = _parse_policy_cached(approved.policy.document) if approved.policy else None
    _execution_create(approved, dry_run=bool(policy_spec and policy_spec.dry_run))
    proposal_notify(approved, "proposal.decided")
    return approved


@transaction.atomic
def proposal_reject(
    *,
    actor: AbstractBaseUser,
    proposal: Proposal,
    expected_version: int | None,
    reason_code: str,
    note: str = "",
) -> Proposal:
    _reviewer_may_decide(actor, proposal)
    if reason_code not in FailureCategory.values:
        raise ValidationError({"reason_code": [
            f"must be one of {', '.join(FailureCategory.values)}"]})
    rejected = _transition(
        actor=actor, proposal=proposal, to_status=ProposalStatus.REJECTED,
        expected_version=expected_version, reason=note or reason_code,
        action="proposal.reject",
        extra={"decided_by_id": actor.pk, "decided_at": timezone.now(),
               "review_note": note, "reject_reason": reason_code},
        data={"reason_code": reason_code},
    )
    proposal_notify(rejected, "proposal.decided")
    return rejected


@transaction.atomic
def proposal_hand_off(
    *, actor: AbstractBaseUser, proposal: Proposal, expected_version: int | None, note: str = ""
) -> Proposal:
    """A human takes the case over; the agent's action is not executed."""
    _reviewer_may_decide(actor, proposal)
    handed = _transition(
        actor=actor, proposal=proposal, to_status=ProposalStatus.HANDED_OFF,
        expected_version=expected_version, reason=note, action="proposal.hand_off",
        extra={"decided_by_id": actor.pk, "decided_at": timezone.now(), "review_note": note,
               "fallback_applied": "human_handoff"},
    )
    proposal_notify(handed, "proposal.decided")
    return handed


@transaction.atomic
def proposal_expire(*, proposal: Proposal) -> Proposal | None:
    """SLA passed: apply the policy's on_timeout fallback. None if already decided."""
    try:
        spec = parse_policy(proposal.policy.document) if proposal.policy else active_policy(
            proposal.workflow)[1]
        fallback = spec.fallback.get("on_timeout", "human_handoff")
        to_status = {
            "human_handoff": ProposalStatus.HANDED_OFF,
            "reject": ProposalStatus.EXPIRED,
            "escalate": ProposalStatus.PENDING,
        }[fallback]
        extra: dict[str, Any] = {"fallback_applied": f"on_timeout:{fallback}",
                                 "decided_at": timezone.now()}
        if to_status == ProposalStatus.PENDING:
            # Escalation keeps it in the queue with a fresh deadline, flagged.
            extra = {"fallback_applied": "on_timeout:escalate", "sla_deadline": timezone.now()
                     + timedelta(minutes=spec.review_sla_minutes
                                 or settings.GATEHOUSE_DEFAULT_SLA_MINUTES)}
        expired = _transition(
            actor=SYSTEM, proposal=proposal, to_status=to_status, expected_version=None,
            reason=f"review SLA passed; fallback {fallback}", action="proposal.expire",
            extra=extra,
        )
    except ConflictError:
        return None
    if expired.status != ProposalStatus.PENDING:
        proposal_notify(expired, "proposal.decided")
    return expired


def proposals_expire_overdue(*, limit: int = 500) -> int:
    """Beat task body: expire each overdue pending item in its own transaction."""
    now = timezone.now()
    overdue = list(
        Proposal.objects.filter(status=ProposalStatus.PENDING, sla_deadline__lt=now)
        .exclude(fallback_applied="on_timeout:escalate")
        .order_by("sla_deadline")
        .values_list("pk", flat=True)[:limit]
    )
    done = 0
    for pk in overdue:
        proposal = Proposal.objects.select_related("policy", "workflow").get(pk=pk)
        if proposal_expire(proposal=proposal) is not None:
            done += 1
    return done


# ------------------------------------------------------------------ break-glass


@transaction.atomic
def break_glass_update(
    *,
    actor: AbstractBaseUser,
    read_only: bool | None = None,
    disabled_categories: list[str] | None = None,
    reason: str,
) -> BreakGlass:
    """Flip the switch. Workers re-read it under the execution row lock, so once this
    commits no execution starts."""
    if not reason.strip():
        raise ValidationError({"reason": ["a reason is required"]})
    break_glass_get()
    switch = BreakGlass.objects.select_for_update().get(pk=1)
    before = {"read_only": switch.read_only,
              "disabled_categories": list(switch.disabled_categories)}
    if read_only is not None:
        switch.read_only = read_only
    if disabled_categories is not None:
        switch.disabled_categories = sorted({c.strip() for c in disabled_categories if c.strip()})
    switch.updated_by = actor
    switch.reason = reason
    switch.save()
    after = {"read_only": switch.read_only, "disabled_categories": switch.disabled_categories}
    audit_record(actor=actor, action="break_glass.update", obj=switch,
                 from_state=json.dumps(before)[:30], to_state=json.dumps(after)[:30],
                 reason=reason, data={"before": before, "after": after})
    return switch


# ---------------------------------------------------------------- execution, notify


def _execution_create(proposal: Proposal, *, dry_run: bool) -> Execution:
    """The outbox row, written in the approval's transaction; published after commit."""
    execution = Execution.objects.create(proposal=proposal, dry_run=dry_run)
    transaction.on_commit(lambda: dispatch.publish_execution(execution.pk))
    return execution


def proposal_notify(proposal: Proposal, event: str, extra: dict[str, Any] | None = None) -> None:
    agent = proposal.agent
    if not agent.webhook_url:
        return
    payload = {
        "event": event, "proposal_id": proposal.pk, "run_id": proposal.run_id,
        "status": proposal.status, "decision": proposal.decision,
        "reasons": proposal.decision_reasons, **(extra or {}),
    }
    delivery = WebhookDelivery.objects.create(
        agent=agent, proposal=proposal, event=event, payload=payload
    )
    transaction.on_commit(lambda: dispatch.publish_webhook(delivery.pk))


__all__ = [
    "ConflictError",
    "Decision",
    "IdempotencyConflict",
    "break_glass_update",
    "proposal_approve",
    "proposal_expire",
    "proposal_hand_off",
    "proposal_reject",
    "proposal_submit",
    "proposals_expire_overdue",
    "run_close",
    "run_open",
]
