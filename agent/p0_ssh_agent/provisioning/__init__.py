"""Command handlers: validate the request, then run it (read-only), plan it (dry-run) or apply it.

    data -> core.requests.parse_request (every field checked; a hostile one is refused, naming it, before
            anything looks at the host)
         -> read-only commands: readonly.run_read_only (for real, even in dry-run)
         -> changes: users / keys / sudo / session handlers on an Engine, in a worker thread (they block on
            useradd, visudo and fsync); a dry run goes through the same code with every write turned into a plan

A dry run answers upstream's "DRY-RUN: Would execute <command> for user <user>" with the plan in `output`: the
answer a real run would give, the commands it would run and a unified diff of every file it would change.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from datetime import UTC, datetime

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.requests import (
    AuditRequest,
    CaKeyRequest,
    Command,
    KeyRequest,
    ListUsersRequest,
    ProvisioningRequest,
    SessionRequest,
    SudoRequest,
    SudoshRequest,
    UserRequest,
    parse_request,
)
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning import policy_gate
from p0_ssh_agent.provisioning.authorized_keys import provision_keys
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.provisioning.end_sessions import provision_session
from p0_ssh_agent.provisioning.engine import Engine, Plan
from p0_ssh_agent.provisioning.readonly import run_read_only
from p0_ssh_agent.provisioning.sudo_rules import provision_sudo
from p0_ssh_agent.provisioning.users import provision_user

Handler = Callable[[ExecutionContext, Mapping[str, object]], Awaitable[CommandResult]]
log = get_logger(__name__)


def apply(engine: Engine, request: ProvisioningRequest, plan: Plan) -> CommandResult:
    """Run one validated request on the host (blocking)."""
    if isinstance(request, ListUsersRequest | AuditRequest | SudoshRequest):
        return run_read_only(request)
    if isinstance(request, UserRequest):
        return provision_user(engine, request, plan)
    if isinstance(request, KeyRequest | CaKeyRequest):
        return provision_keys(engine, request, plan)
    if isinstance(request, SudoRequest):
        return provision_sudo(engine, request, plan)
    return provision_session(engine, request, plan)


def run_request(engine: Engine, request: ProvisioningRequest, plan: Plan) -> CommandResult:
    """apply(), with every expected failure turned into a failed result whose error says what went wrong."""
    try:
        return apply(engine, request, plan)
    except AgentError as exc:
        return CommandResult(success=False, error=str(exc))
    except OSError as exc:  # a failure no module translated: still the operator's to read, never a crash
        return CommandResult(success=False, error=f"{request.command.value}: {exc.strerror or exc}")


def gated_request(context: ExecutionContext, engine: Engine, request: ProvisioningRequest, plan: Plan) -> CommandResult:
    """The local policy first (grants only), then the change; a denial changes nothing. Every outcome, denial
    included, is one audit entry (blocking)."""
    grant = policy_gate.grant_to_check(request)
    decided_by = ""
    if grant is not None:
        try:
            decision, facts = policy_gate.check(context.policy, engine, grant, datetime.now(UTC))
        except AgentError as exc:  # the ledger or NSS could not be read: no facts, no grant
            failed = CommandResult(success=False, error=f"local policy not evaluated: {exc}")
            context.audit_trail.record_request(request, failed, dry_run=context.dry_run)
            return failed
        decided_by = decision.policy
        if not decision.allowed:
            log.warning(
                "policy_denied",
                request_id=grant.request_id,
                command=grant.command.value,
                user=grant.user,
                policy=decision.policy,
                reason=decision.reason,
            )
            denied = policy_gate.denial(decision, context.policy, facts)
            context.audit_trail.record_request(request, denied, dry_run=context.dry_run, policy=decided_by, denied=True)
            return denied
    result = run_request(engine, request, plan)
    context.audit_trail.record_request(request, result, dry_run=context.dry_run, policy=decided_by)
    return result


def dry_run_answer(request: ProvisioningRequest, result: CommandResult, plan: Plan) -> CommandResult:
    """What a dry run reports: success with the plan, or the failure a real run would meet."""
    if not result.success:
        return result
    user = request.user if isinstance(request, UserRequest | KeyRequest | CaKeyRequest | SudoRequest) else ""
    if isinstance(request, SessionRequest):
        user = request.user
    answer = result.message if not result.message.startswith("DRY-RUN") else ""
    lines = [f"a real run would answer: {answer}"] if answer else []
    lines.append(plan.text() or "no change on this host")
    return CommandResult(success=True, message=messages.dry_run(request.command.value, user), output="\n".join(lines))


def _handler(command: Command) -> Handler:
    async def handle(context: ExecutionContext, data: Mapping[str, object]) -> CommandResult:
        try:
            request = parse_request(command.value, data)
        except RequestInvalid as exc:
            return CommandResult(success=False, error=exc.message)
        if isinstance(request, ListUsersRequest | AuditRequest | SudoshRequest):
            return await trio.to_thread.run_sync(run_read_only, request)
        engine = Engine(context.config, context.state_dir, context.dry_run, audit_trail=context.audit_trail)
        plan = Plan()
        # Not abandoned on cancel: a host edit, once started, always runs to its end (the worker answers the
        # backend on time regardless and keeps the result for a retry).
        result = await trio.to_thread.run_sync(gated_request, context, engine, request, plan)
        return dry_run_answer(request, result, plan) if context.dry_run else result

    return handle


HANDLERS: dict[str, Handler] = {command.value: _handler(command) for command in Command}
