"""Grant expiry enforced on the host (issue 6): maxGrantSeconds, sshd's expiry-time=, the sweep, offline revoke.

Two layers, so a grant ends on time even when the backend never sends the revoke:

1. sshd itself. With maxGrantSeconds set, every key and CA line the agent writes carries
   `expiry-time="<granted_at + maxGrantSeconds>"`, so sshd refuses the key after that instant even if the agent is
   dead (core/openssh_expiry.py: which form each OpenSSH reads, none before 7.7; host/openssh.py probes the local one).
2. The sweep. Grants older than maxGrantSeconds (by the ledger's granted_at: keys, CA lines, sudo rules) are
   revoked by the agent through the request line the backend's revokes take (provisioning/pipeline.py run_change:
   same locks, same checks, same messages), online or offline. The supervisor runs it at start-up (grants
   that expired while the agent was down) and then again at each next expiry (runtime/periodic.py).

A sweep never deletes an account: the backend's provisionUser revoke decides that (userRevokeMode). But a revoke
that takes a created account's last grant locks it and ends its sessions (provisioning/access_ends.py, issue 14
item 5: a key line the user added during the grant must not outlive it), unless userRevokeMode is keep. The
offline revoke (offlineRevokeAfterSeconds, off by default) is the exception: when the backend has been unreachable
that long it takes back everything, like `p0-ssh-agent revoke-all`, with created accounts kept or locked as
userRevokeMode says (delete is downgraded to lock: a network outage must not destroy home directories).

Everything here blocks (files, visudo); runtime/periodic.py calls it in a worker thread.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Literal

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.core.openssh_expiry import grant_time
from p0_ssh_agent.core.requests import Action, CaKeyRequest, Command, KeyRequest, SudoRequest
from p0_ssh_agent.host import audit_trail
from p0_ssh_agent.host.actions import Description
from p0_ssh_agent.host.ledger import Ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from p0_ssh_agent.provisioning.revoke_everything import Report, revoke_all

log = get_logger(__name__)

GrantKind = Literal["key", "ca", "sudo"]


# --- live grants -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveGrant:
    """One grant the ledger holds: what `status` lists and what the sweep revokes once it is expired."""

    kind: GrantKind
    user: str
    request_id: str
    granted_at: datetime
    expires_at: datetime | None  # None: maxGrantSeconds is not set
    detail: str  # the key's fingerprint, or the sudo rule's run-as user

    def age(self, now: datetime) -> timedelta:
        return now - self.granted_at

    def expired(self, now: datetime) -> bool:
        return self.expires_at is not None and self.expires_at <= now


def live_grants(ledger: Ledger, max_grant_seconds: int | None) -> list[LiveGrant]:
    grants: list[LiveGrant] = []
    lifetime = None if max_grant_seconds is None else timedelta(seconds=max_grant_seconds)

    def add(kind: GrantKind, user: str, request_id: str, granted: str, detail: str) -> None:
        at = grant_time(granted)
        grants.append(LiveGrant(kind, user, request_id, at, None if lifetime is None else at + lifetime, detail))

    for user, per_request in ledger.keys.items():
        for request_id, entries in per_request.items():
            for entry in entries:
                add(entry.kind, user, request_id, entry.granted_at, entry.fingerprint)
    for request_id, sudo in ledger.sudo.items():
        add("sudo", sudo.user, request_id, sudo.granted_at, f"run as {sudo.run_as or 'ALL'}")
    return sorted(grants, key=lambda g: (g.granted_at, g.user, g.request_id, g.kind))


def next_expiry(grants: list[LiveGrant], now: datetime) -> datetime | None:
    """The earliest expiry still in the future (past ones are the sweep's, or failed and retried on their own)."""
    future = [g.expires_at for g in grants if g.expires_at is not None and g.expires_at > now]
    return min(future, default=None)


# --- the sweep -------------------------------------------------------------------------------------------------


@dataclass
class SweepReport:
    revoked: list[LiveGrant] = field(default_factory=list)
    failed: list[tuple[LiveGrant, str]] = field(default_factory=list)
    next_expiry: datetime | None = None


def _revoke(engine: Engine, grant: LiveGrant) -> CommandResult:
    """The revoke the backend would send for this grant, through the request line (run_change)."""
    request: KeyRequest | CaKeyRequest | SudoRequest
    if grant.kind == "key":
        request = KeyRequest(Command.AUTHORIZED_KEYS, grant.user, Action.REVOKE, grant.request_id, None)
    elif grant.kind == "ca":
        request = CaKeyRequest(Command.CA_KEYS, grant.user, Action.REVOKE, grant.request_id, None)
    else:
        request = SudoRequest(Command.SUDO, grant.user, Action.REVOKE, grant.request_id, sudo=False, run_as=None)
    return run_change(engine, request).result


_COMMAND_OF: dict[GrantKind, Command] = {"key": Command.AUTHORIZED_KEYS, "ca": Command.CA_KEYS, "sudo": Command.SUDO}


def record_expiry(
    grant: LiveGrant, *, result: str, trail: audit_trail.AuditTrail, error: str = "", dry_run: bool = False
) -> None:
    """The one place an expiry revoke is recorded: a structlog line and an audit entry (host/audit_trail.py)."""
    event = log.warning if error else log.info
    event(
        "grant_expired",
        request_id=grant.request_id,
        target_user=grant.user,
        kind=grant.kind,
        granted_at=grant.granted_at.isoformat(),
        expires_at=grant.expires_at.isoformat() if grant.expires_at else None,
        detail=grant.detail,
        result=result,
        error=error or None,
        dry_run=dry_run,
    )
    command = _COMMAND_OF[grant.kind].value
    expired = grant.expires_at.isoformat() if grant.expires_at else "?"
    summary = f"{'[dry run] ' if dry_run else ''}{command} revoke for {grant.user} (request {grant.request_id})"
    summary += f": grant expired at {expired}, {result}" + (f": {error}" if error else "")
    trail.record(
        audit_trail.AuditEvent(
            event=audit_trail.Event.FAILED if error else audit_trail.Event.EXPIRED,
            origin="expiry",
            request_id=grant.request_id,
            command=command,
            action=Action.REVOKE.value,
            target_user=grant.user,
            result="failure" if error else "success",
            summary=summary,
            dry_run=dry_run,
            key_fingerprint=grant.detail if grant.kind != "sudo" else "",
            error=error,
            detail=f"granted {grant.granted_at.isoformat()}, expired {expired} ({grant.detail})",
        ),
    )


def sweep(engine: Engine, now: datetime) -> SweepReport:
    """Revoke every grant older than maxGrantSeconds (blocking). Keeps going past a failure; never raises for one."""
    report = SweepReport()
    max_seconds = engine.config.max_grant_seconds
    if max_seconds is None:
        return report
    grants = live_grants(engine.read_ledger(), max_seconds)
    done: set[tuple[GrantKind, str, str]] = set()  # a revoke removes every line of its (kind, user, request)
    for grant in grants:
        if not grant.expired(now) or (grant.kind, grant.user, grant.request_id) in done:
            continue
        done.add((grant.kind, grant.user, grant.request_id))
        try:
            result = _revoke(engine, grant)
        except ValueError as exc:  # run_change translates AgentError and OSError itself
            result = CommandResult(success=False, error=str(exc))
        if result.success:
            report.revoked.append(grant)
            outcome = "revoked" if not engine.describes else "would revoke"
            record_expiry(grant, result=outcome, dry_run=engine.describes, trail=engine.audit_trail)
        else:
            report.failed.append((grant, result.error))
            error = result.error or "revoke failed"
            record_expiry(grant, result="failed", error=error, dry_run=engine.describes, trail=engine.audit_trail)
    report.next_expiry = next_expiry(grants, now)
    return report


# --- offline revoke --------------------------------------------------------------------------------------------


def offline_user_mode(configured: str) -> str:
    """keep stays keep; lock and delete both lock: an outage is no reason to delete anyone's home directory."""
    return "keep" if configured == "keep" else "lock"


def offline_revoke(engine: Engine, offline_seconds: float) -> Report:
    """Take back every grant in the ledger because the backend has been unreachable for `offline_seconds`."""
    mode = offline_user_mode(engine.config.user_revoke_mode)
    report = revoke_all(engine, mode, Description(), origin="offline-revoke")
    log.warning(
        "offline_revoke",
        offline_seconds=round(offline_seconds),
        threshold=engine.config.offline_revoke_after_seconds,
        users=mode,
        done=len(report.done),
        failed=len(report.failed),
        failures=report.failed or None,
        dry_run=engine.describes,
    )
    return report
