"""Take back everything the ledger says this agent granted: keys and CA lines, sudo rules, the users it created.

For the administrator who wants the host clean before removing the package (docs/install.md). It goes through the
request line the backend's revokes take (provisioning/pipeline.py run_change: same locks, same checks, same
messages), so it is safe while the daemon runs, idempotent, and keeps going past a failure so one broken home
directory does not leave everything else.
Adopted accounts lose their grants but keep their account: the agent did not create them.

Every revoke is audited (host/audit_trail.py) under the grant's own request id, so the grant's history ends with it,
and the run as a whole adds one revoke-all entry that counts what was done and what failed.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from p0_ssh_agent.core.authorized_keys_format import remove_block
from p0_ssh_agent.core.requests import (
    Action,
    CaKeyRequest,
    Command,
    KeyRequest,
    ProvisioningRequest,
    SudoRequest,
    UserRequest,
)
from p0_ssh_agent.core.sudoers import LEGACY_FILE
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import audit_trail
from p0_ssh_agent.host.actions import Description, EditLegacySudoers, HostAction, Plan
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from p0_ssh_agent.provisioning.sudo_rules import rules_change

REVOKE_ALL_ID = "revoke-all"


@dataclass
class Report:
    done: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)

    def add(self, what: str, result: CommandResult) -> None:
        if result.success:
            self.done.append(f"{what}: {result.message}")
        else:
            self.failed.append(f"{what}: {result.error}")


def _attempt(report: Report, what: str, step: object) -> CommandResult:
    """Run one step and count it; the result (a failure for an exception) is what the audit entry records."""
    try:
        result = step() if callable(step) else step
    except (AgentError, OSError, ValueError) as exc:
        report.failed.append(f"{what}: {exc}")
        return CommandResult(success=False, error=str(exc))
    if isinstance(result, CommandResult):
        report.add(what, result)
        return result
    report.done.append(what)
    return CommandResult(success=True, message=what)


def _change(
    engine: Engine, request: KeyRequest | CaKeyRequest | UserRequest, description: Description
) -> CommandResult:
    """One revoke through the request line (no local policy: revokes are never evaluated); what a dry run would
    do joins `description`."""
    outcome = run_change(engine, request)
    description.steps.extend(outcome.description.steps)
    return outcome.result


def _apply(engine: Engine, action: HostAction, description: Description) -> None:
    """One action of the sweep's own, through the engine's applier (the sudoers lock is the action's)."""
    applied = engine.apply(Plan((action,), CommandResult(success=True)))
    description.steps.extend(applied.description.steps)


def _audit(engine: Engine, request: ProvisioningRequest, result: CommandResult, origin: audit_trail.Origin) -> None:
    event = audit_trail.request_event(request, result, dry_run=engine.describes, origin=origin)
    if event is not None:
        engine.audit_trail.record(event)


def _audit_summary(engine: Engine, report: Report, user_mode: str, origin: audit_trail.Origin) -> None:
    result: audit_trail.Result = "failure" if report.failed else "success"
    counts = f"{len(report.done)} done, {len(report.failed)} failed, created accounts: {user_mode}"
    engine.audit_trail.record(
        audit_trail.AuditEvent(
            event=audit_trail.Event.REVOKE_ALL,
            origin=origin,
            request_id=REVOKE_ALL_ID,
            command=REVOKE_ALL_ID,
            action=Action.REVOKE.value,
            target_user="",
            result=result,
            summary=f"{'[dry run] ' if engine.describes else ''}{origin}: every grant in the ledger revoked: {counts}",
            dry_run=engine.describes,
            error="; ".join(report.failed),
            detail=counts,
        ),
    )


def revoke_all(
    engine: Engine, user_mode: str, description: Description, *, origin: audit_trail.Origin = "revoke-all"
) -> Report:
    """Blocking. user_mode: keep | lock | delete, for the accounts the agent created. origin names who asked
    (`revoke-all`, or the offline revoke) in the audit entries. A describing engine's steps join `description`."""
    report = Report()
    ledger = engine.read_ledger()
    # The key revokes below lock a created account whose last grant they take (access_ends.py) as user_mode says:
    # `--users keep` keeps it unlocked even when userRevokeMode is lock.
    user_engine = dataclasses.replace(engine, config=dataclasses.replace(engine.config, user_revoke_mode=user_mode))
    for user, per_request in sorted(ledger.keys.items()):
        for request_id, entries in sorted(per_request.items()):
            kinds = {entry.kind for entry in entries}
            requests: list[KeyRequest | CaKeyRequest] = []
            if "key" in kinds:
                requests.append(KeyRequest(Command.AUTHORIZED_KEYS, user, Action.REVOKE, request_id, None))
            if "ca" in kinds:
                requests.append(CaKeyRequest(Command.CA_KEYS, user, Action.REVOKE, request_id, None))
            for request in requests:
                what = f"{request.command.value} {user} {request_id}"
                result = _attempt(report, what, lambda r=request: _change(user_engine, r, description))
                _audit(engine, request, result, origin)

    clear = rules_change(lambda grants: grants.clear(), users=None)
    result = _attempt(report, "sudo rules in /etc/sudoers.d", lambda: _apply(engine, clear, description))
    for request_id, sudo in sorted(ledger.sudo.items()):  # one drop-in rewrite, one entry per grant it took back
        sudo_request = SudoRequest(Command.SUDO, sudo.user, Action.REVOKE, request_id, sudo=False, run_as=None)
        _audit(engine, sudo_request, result, origin)
    if os.path.lexists(LEGACY_FILE):
        for request_id in sorted(ledger.sudo):
            _attempt(
                report,
                f"{LEGACY_FILE} {request_id}",
                lambda rid=request_id: _apply(
                    engine, EditLegacySudoers(lambda content: remove_block(content, rid)), description
                ),
            )

    for name, entry in sorted(ledger.users.items()):
        if entry.adopted:
            report.done.append(f"provisionUser {name}: adopted, account left as it is")
            continue
        if engine.describes:  # the grants above are still in the ledger: the handler would keep the account
            report.done.append(f"provisionUser {name}: would {user_mode} the account once its grants are gone")
            continue
        user_request = UserRequest(Command.PROVISION_USER, name, Action.REVOKE, REVOKE_ALL_ID)
        result = _attempt(report, f"provisionUser {name}", lambda r=user_request: _change(user_engine, r, description))
        _audit(engine, user_request, result, origin)
    _audit_summary(engine, report, user_mode, origin)
    return report
