"""The request line: one forwarded request in, one CommandResult out, read top to bottom in this module.

    frame -> command name -> core.requests.parse_request -> Change | Query          (parsed once; one `match`)
      Query  -> readonly.run_read_only                                             (for real, even in a dry run)
      Change -> facts.gather: account, groups, the ledger read ONCE                (provisioning/facts.py)
             -> facts.decide: the local policy on those facts -> Allow | Deny      (pure)
                (a grant the policy judges: both before any lock, so a refusal leaves no trace; the others: both
                under the lock below)
             -> the first lock the change needs (the user's; the accounts lock for provisionUser on a user with no
                account), and
                facts.still_current: the judged snapshot confirmed by NSS and a stat (else gathered and judged
                again: a rare race)
             -> plan: the command's handler, pure, on the same facts -> a Plan (host/actions.py: ledger commits
                and host edits in the order its module documents) or an answer without one (authorized_keys,
                sudo_rules, users, end_sessions)
             -> apply: the engine's applier runs the Plan (host/apply.py) or, in a dry run, describes it
                (host/describe.py); the Plan's answer follows from what the actions came to
      -> Outcome -> one audit entry, the dry-run answer, the result (the runtime frames and logs it)

Every failure becomes a result in run_change, the one place that translates errors: a handler raises AgentError
(or the OSError no module translated) and the request fails with its message; nothing else catches.

The agent's own changes (expiry's sweep, the offline revoke, `revoke-all`) go through run_change too: they are
requests the agent makes to itself, with the same locks, facts and messages, and audit themselves (their entries
say why they happened).
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.local_policy import LocalPolicy
from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.requests import (
    Action,
    AuditRequest,
    CaKeyRequest,
    Change,
    Command,
    KeyRequest,
    ListUsersRequest,
    SessionRequest,
    SudoRequest,
    SudoshRequest,
    UserRequest,
    parse_request,
)
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_SUBDIR
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.actions import Description, Plan
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.protocol.forwarded import NO_COMMAND_MESSAGE, CommandResult, ForwardedRequest
from p0_ssh_agent.provisioning.authorized_keys import plan_keys
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.provisioning.end_sessions import plan_session
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.facts import Allow, Deny, HostFacts, decide, gather, still_current
from p0_ssh_agent.provisioning.lazy_pipeline import build_lazy_pipeline
from p0_ssh_agent.provisioning.readonly import run_read_only
from p0_ssh_agent.provisioning.sudo_rules import plan_sudo
from p0_ssh_agent.provisioning.users import new_uid, plan_user

log = get_logger(__name__)
COMMANDS = frozenset(command.value for command in Command)


@dataclass
class Outcome:
    """What a change came to: its result, the description of what it would do (a dry run's), and the policy's say."""

    result: CommandResult
    description: Description = field(default_factory=Description)
    policy: str = ""  # the policies that decided a grant ("" for a revoke)
    denied: bool = False


@dataclass(frozen=True)
class Pipeline:
    """What the runtime's worker calls for every `call` (runtime/worker.py's Pipeline protocol)."""

    context: ExecutionContext

    async def execute(self, request: ForwardedRequest, key: object = None) -> CommandResult:
        """`key`: the runtime's JobKey (for its locking and log line); the request is judged on its own, by the
        command name parse_forwarded_request worked out (request.command)."""
        command = request.command
        if not command:
            return CommandResult(success=True, message=NO_COMMAND_MESSAGE)
        if command not in COMMANDS:
            return CommandResult(success=False, error=f"unknown command: {_printable(command)}")
        if not isinstance(request.data, dict):
            return CommandResult(success=False, error="request body must be a JSON object")
        return await self.handle(command, request.data)

    async def handle(self, command: str, data: Mapping[str, object]) -> CommandResult:
        """One request body, by its command name (the benchmarks call this directly)."""
        try:
            parsed = parse_request(command, data)
        except RequestInvalid as exc:
            return CommandResult(success=False, error=exc.message)
        match parsed:
            case ListUsersRequest() | AuditRequest() | SudoshRequest():
                key_dir = self.context.state_dir / KEY_STORE_SUBDIR  # runAudit shows the key store's files too
                return await trio.to_thread.run_sync(run_read_only, parsed, key_dir)
            case _:
                return await self.change(parsed)

    async def change(self, request: Change) -> CommandResult:
        context = self.context
        # The one place that picks the applier: a dry run describes the plan, anything else applies it.
        engine = Engine.for_run(
            context.config, context.state_dir, dry_run=context.dry_run, audit_trail=context.audit_trail
        )
        # Not abandoned on cancel: a host edit, once started, always runs to its end (the worker answers the
        # backend on time regardless and keeps the result for a retry).
        outcome = await trio.to_thread.run_sync(run_change, engine, request, context.policy)
        context.audit_trail.record_request(
            request,
            outcome.result,
            dry_run=context.dry_run,
            policy=outcome.policy,
            denied=outcome.denied,
        )
        return dry_run_answer(request, outcome) if context.dry_run else outcome.result


def run_change(
    engine: Engine, request: Change, policy: LocalPolicy | None = None, now: datetime | None = None
) -> Outcome:
    """Facts, decision, change (blocking). `policy` None: no local policy is asked (the agent's own revokes, and
    tests of the handlers alone). The one place where an error becomes a result."""
    description, decided_by, moment = Description(), "", now or datetime.now(UTC)
    try:
        looked: Outcome | tuple[HostFacts, Allow] | None = None
        if policy is not None and request.action is Action.GRANT:
            # Judged before any lock: a grant the policy refuses changes nothing, not even a lock file.
            looked = _judge(engine, policy, request, moment)
        if isinstance(looked, Outcome):
            return looked
        with _first_lock(engine, request):
            # A dry run takes no lock (the describing applier's are no-ops), so there is nothing to confirm the
            # judged facts against: they are the run's facts, read once (issue 16: a dry-run grant's CPU).
            if looked is not None and not engine.describes:
                current = still_current(engine, looked[0])
                if current is None:
                    # A rare race, counted in the log: what was judged changed while the lock was awaited.
                    log.info("facts_changed_before_lock", request_id=request.request_id, user=request.user)
                    looked = None
                else:
                    looked = (current, looked[1])
            if looked is None:  # not judged yet (no policy, a revoke), or judged on facts that changed since
                looked = _decided(engine, policy, gather(engine, request, moment), request)
                if isinstance(looked, Outcome):
                    return looked
            facts, verdict = looked  # a judged grant's one ledger read, when nothing changed before the lock
            decided_by = verdict.policy
            planned = _plan(request, facts, engine.config)
            if isinstance(planned, Plan):
                applied = engine.apply(planned, facts.ledger)
                description, result = applied.description, planned.result(applied)
            else:
                result = planned
    except AgentError as exc:
        result = CommandResult(success=False, error=str(exc), http_status=exc.http_status)
    except OSError as exc:  # a failure no module translated: still the operator's to read, never a crash
        result = CommandResult(success=False, error=f"{request.command.value}: {exc.strerror or exc}")
    return Outcome(result, description, decided_by)


def _judge(engine: Engine, policy: LocalPolicy, request: Change, now: datetime) -> Outcome | tuple[HostFacts, Allow]:
    """The local policy on lock-free facts (see _decided)."""
    try:
        facts = gather(engine, request, now)
    except AgentError as exc:  # the ledger or NSS could not be read: no facts, no grant
        return Outcome(CommandResult(success=False, error=f"local policy not evaluated: {exc}"))
    return _decided(engine, policy, facts, request)


def _decided(
    engine: Engine, policy: LocalPolicy | None, facts: HostFacts, request: Change
) -> Outcome | tuple[HostFacts, Allow]:
    """The Outcome of a refusal, or the facts and the verdict to go on with."""
    verdict = decide(policy, facts, request, org_id=engine.config.org_id or "", adopted=engine.adopted())
    return _denied(request, verdict) if isinstance(verdict, Deny) else (facts, verdict)


def _denied(request: Change, verdict: Deny) -> Outcome:
    log.warning(
        "policy_denied",
        request_id=request.request_id,
        command=request.command.value,
        user=request.user,
        policy=verdict.policy,
        reason=verdict.reason,
    )
    return Outcome(verdict.result, Description(), verdict.policy, denied=True)


def _first_lock(engine: Engine, request: Change) -> contextlib.AbstractContextManager[None]:
    """The outermost lock the change needs (engine.py's lock order): the user's files for an existing account,
    the accounts lock for one provisionUser is to create or whose revoke may remove the group a half-made creation
    left (provisioning/users.py), none otherwise (another revoke for a user who is gone). A dry run's locks are
    no-ops: no lookup is made to pick one (new_uid refuses a name no new account may have, in a dry run too)."""
    if engine.describes:
        return contextlib.nullcontext()
    account = accounts.lookup_user(request.user)
    if account is not None:
        return engine.user_lock(account.uid)
    if isinstance(request, UserRequest):
        if request.action is Action.GRANT:
            accounts.check_new_account_name(request.user)  # a name no new account may have: no trace, not a lock
        return engine.lock("accounts")
    return contextlib.nullcontext()


def _plan(request: Change, facts: HostFacts, config: AgentConfig) -> Plan | CommandResult:
    """The command's handler: a Plan, or the answer when there is nothing to do (pure, but for new_uid's read)."""
    match request:
        case UserRequest():
            return plan_user(request, facts, config, new_uid(request, facts, config.adopt_users))
        case KeyRequest() | CaKeyRequest():
            return plan_keys(request, facts, config)
        case SudoRequest():
            return plan_sudo(request, facts, config)
        case SessionRequest():
            return plan_session(request, facts, config)


def dry_run_answer(request: Change, outcome: Outcome) -> CommandResult:
    """What a dry run reports: success with the plan, or the failure a real run would meet."""
    result = outcome.result
    if not result.success:
        return result
    answer = result.message if not result.message.startswith("DRY-RUN") else ""
    lines = [f"a real run would answer: {answer}"] if answer else []
    lines.append(outcome.description.text() or "no change on this host")
    output = "\n".join(lines)
    return CommandResult(success=True, message=messages.dry_run(request.command.value, request.user), output=output)


def _printable(text: str) -> str:
    """Echo a hostile command name back without control characters and bounded in length."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:64])
    return cleaned + ("..." if len(text) > 64 else "")


def build_pipeline(
    config: AgentConfig, state_dir: Path, audit_trail: AuditTrail, *, dry_run: bool | None = None
) -> Pipeline:
    """Raises PolicyError (exit 78) when the local policy does not load (provisioning/lazy_pipeline.py, which the
    daemon uses as it is: this is the same pipeline, built at once)."""
    return build_lazy_pipeline(config, state_dir, audit_trail, dry_run=dry_run).loaded()
