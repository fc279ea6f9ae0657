"""The local policy's gate in front of every grant: facts from the request and the host, then a decision.

Revokes are never evaluated (taking access away must always work, whatever the policy says), and neither are the
read-only commands, which change nothing. A denial changes nothing and answers HTTP 403 naming the policy.
"""

from __future__ import annotations

import datetime
import grp
import os
import socket

from p0_ssh_agent.core.local_policy import NO_PERMIT, Decision, Facts, LocalPolicy
from p0_ssh_agent.core.requests import (
    Action,
    CaKeyRequest,
    KeyRequest,
    ProvisioningRequest,
    SudoRequest,
    UserRequest,
    public_key_of,
)
from p0_ssh_agent.host import accounts
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine

GrantRequest = UserRequest | KeyRequest | CaKeyRequest | SudoRequest


def grant_to_check(request: ProvisioningRequest) -> GrantRequest | None:
    """The request if the policy must decide it (a grant), else None."""
    if isinstance(request, GrantRequest) and request.action is Action.GRANT:
        return request
    return None


def gather_facts(engine: Engine, request: GrantRequest, now: datetime.datetime) -> Facts:
    """What Cedar sees. Reads the host and the ledger; changes neither (no adoption happens here)."""
    record = accounts.lookup_user(request.user)
    managed = system = False
    groups: tuple[str, ...] = ()
    if record is not None:
        system = accounts.manage_refusal(record) is not None  # UID 0, below UID_MIN, nobody, reserved names
        managed = record.uid != 0 and engine.ownership(record, engine.read_ledger()) in ("owned", "adoptable")
        groups = _group_names(request.user, record.gid)
    local = now.astimezone()
    key = public_key_of(request)
    sudo = isinstance(request, SudoRequest) and (request.sudo or request.run_as is not None)
    run_as = (request.run_as or "ALL") if isinstance(request, SudoRequest) and sudo else ""
    context: dict[str, object] = {
        "requestId": request.request_id,
        "command": request.command.value,
        "sudo": sudo,
        "runAsUser": run_as,
        "keyType": key.key_type if key is not None else "",
        "keyFingerprint": key.fingerprint() if key is not None else "",
        "hostname": engine.config.hostname or socket.gethostname(),
        "hour": local.hour,
        "minute": local.minute,
        "weekday": local.isoweekday(),
        "now": int(now.timestamp()),
    }
    return Facts(
        org_id=engine.config.org_id or "",
        command=request.command.value,
        user=request.user,
        exists=record is not None,
        uid=record.uid if record is not None else -1,
        managed=managed,
        system=system,
        groups=groups,
        context=context,
    )


def _group_names(user: str, gid: int) -> tuple[str, ...]:
    names: list[str] = []
    try:
        gids = os.getgrouplist(user, gid)
    except OSError:
        gids = [gid]
    for number in gids:
        try:
            names.append(grp.getgrgid(number).gr_name)
        except KeyError:
            continue
    return tuple(sorted(set(names)))


def check(policy: LocalPolicy, engine: Engine, request: GrantRequest, now: datetime.datetime) -> tuple[Decision, Facts]:
    facts = gather_facts(engine, request, now)
    return policy.evaluate(facts), facts


def denial(decision: Decision, policy: LocalPolicy, facts: Facts) -> CommandResult:
    """The answer to a denied grant: 403, the policy that denied it and where it lives."""
    error = f"{facts.command} for user {facts.user} denied by the local policy ({policy.source}): {decision.reason}"
    if decision.policies == (NO_PERMIT,) and facts.exists and not facts.managed:
        # The usual reason in practice: say what the provisioning engine would have said, and how to fix it.
        error += (
            f"; refusing to manage {facts.user}: the account exists but was not created by p0-ssh-agent; "
            "list it under adoptUsers in the configuration to let the agent manage it"
        )
    return CommandResult(success=False, error=error, http_status=403, policy_denied=True)
