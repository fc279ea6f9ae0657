"""The decision on one agent-access operation (pure: no file, no clock, no replay cache): Allowed or a Refusal.

    the kill switch                      agentAccess off                                        -> DISABLED
    the account                          listed in agentAccessUsers, and eligibility.refusal_for -> DISABLED/ACCOUNT
    the UCAN                             capability.verify_ucan: signature by a listed issuer, time bounds,
                                         audience "did:web:<this host>", no delegation           -> CAPABILITY
    the host                             the request's `host`, when it names one, is this host   -> OUTSIDE
    the constraint                       capability.covering_grant: one grant of the UCAN covers
                                         the ability, this host, the username and every path     -> OUTSIDE
    the agent's own files                the grant's path_prefix is not at, above or beneath the
                                         agent's configured directories (nor above its files)    -> OUTSIDE
    the cosignature                      cosign.check_cosignature: context.cosigner; exec always
                                         needs one (step-up by default, whatever the policy says) -> STEP_UP
    the agent-access policy              Cedar, once per path, principal = the UCAN's issuer     -> POLICY

The order is the cheapest and least revealing first: nothing about the UCAN is said to a request for an account
that may not be used, and the policy is asked only about what the capability already allows. The cosignature's
one-time use is claimed later, by the line, right before the operation runs (agent_access/line.py), so a request
refused here never burns an approver's signature.
"""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass

from p0_ssh_agent.agent_access.access_model import (
    AccessCommand,
    Capability,
    Grant,
    Operation,
    Refusal,
    RefusalKind,
    TargetAccount,
    TrustKeys,
)
from p0_ssh_agent.agent_access.access_policy import AccessPolicy, access_context, judged_paths
from p0_ssh_agent.agent_access.capability import CapabilityRejected, covering_grant, verify_ucan
from p0_ssh_agent.agent_access.cosign import CosignRejected, check_cosignature
from p0_ssh_agent.agent_access.eligibility import refusal_for
from p0_ssh_agent.agent_access.scoped_paths import components, within
from p0_ssh_agent.core.local_policy import NO_PERMIT
from p0_ssh_agent.core.messages import token


@dataclass(frozen=True)
class GateFacts:
    """What the decision is made on, gathered once by the line (agent_access/line.py)."""

    enabled: bool  # agentAccess
    listed: Collection[str]  # agentAccessUsers
    account: TargetAccount | None  # eligibility.read_account(operation.username)
    trust: TrustKeys
    policy: AccessPolicy
    hostname: str  # this host's name: config.hostname, else the kernel's
    now: int  # seconds since the epoch
    # The agent's own places (its configuration): a prefix may lie at, above or beneath none of the directories,
    # and at or above none of the files.
    own_directories: tuple[str, ...] = ()
    own_files: tuple[str, ...] = ()

    @property
    def audience(self) -> str:
        return f"did:web:{self.hostname}"


@dataclass(frozen=True)
class CapabilityRefusal(Refusal):
    """A refusal after the UCAN verified: who issued it, and the approver whose cosignature was checked, for the
    audit entry (the answer says only the Refusal's own fields)."""

    issuer: str = ""
    approver: str = ""


@dataclass(frozen=True)
class Allowed:
    capability: Capability
    grant: Grant  # the one that covers the operation; its path_prefix confines the worker
    cosigner: bool  # a cosignature from an approver verified (context.cosigner)
    approver: str  # that approver's key id, or ""
    policies: tuple[str, ...]  # the agent-access policy ids that permitted it
    jti: str = ""  # the cosignature's id, for the replay cache (line.py claims it last)
    jti_expires: int = 0  # until when it must be remembered

    @property
    def prefix(self) -> str:
        return self.grant.path_prefix


def decide(operation: Operation, facts: GateFacts) -> Allowed | Refusal:
    if not facts.enabled:
        return Refusal(RefusalKind.DISABLED, "agent access is off (agentAccess: false)")
    refusal = refusal_for(facts.account, name=operation.username, listed=facts.listed)
    if refusal is not None:
        return refusal
    try:
        capability = verify_ucan(operation.ucan, facts.trust, audience=facts.audience, now=facts.now)
    except CapabilityRejected as exc:
        return Refusal(RefusalKind.CAPABILITY, f"capability rejected: {exc}")
    issuer = capability.issuer
    if operation.host and operation.host != facts.hostname:
        return CapabilityRefusal(
            RefusalKind.OUTSIDE,
            f"outside the capability: the request names host {token(operation.host)}, this is {facts.hostname}",
            issuer=issuer,
        )
    covered = _covering(operation, capability, facts.hostname)
    if isinstance(covered, Refusal):
        return CapabilityRefusal(covered.kind, covered.message, issuer=issuer)
    own = own_place(covered.path_prefix, facts.own_directories, facts.own_files)
    if own:
        return CapabilityRefusal(
            RefusalKind.OUTSIDE,
            f"outside the capability: path_prefix {covered.path_prefix} is refused: it is, covers or lies "
            f"beneath the agent's own {own}",
            issuer=issuer,
        )
    cosigned = _cosignature(operation, capability, facts)
    if isinstance(cosigned, Refusal):
        return CapabilityRefusal(cosigned.kind, cosigned.message, issuer=issuer)
    approver, jti, jti_expires = cosigned
    decision = facts.policy.evaluate_all(
        principal=capability.issuer,
        command=operation.command,
        host=operation.host or facts.hostname,
        username=operation.username,
        paths=judged_paths(operation, covered.path_prefix),
        context=access_context(operation, cosigner=bool(approver), hostname=facts.hostname),
    )
    if not decision.allowed:
        message = _denial(operation, decision.policies, decision.reason)
        return CapabilityRefusal(RefusalKind.POLICY, message, decision.policy, issuer=issuer, approver=approver)
    return Allowed(capability, covered, bool(approver), approver, decision.policies, jti, jti_expires)


def _covering(operation: Operation, capability: Capability, hostname: str) -> Grant | Refusal:
    """The grant covering the operation, or OUTSIDE naming what is not covered (the first path outside the
    nearest prefix, or the ability, host or username no grant has)."""
    paths = operation.paths or ((operation.cwd,) if operation.cwd else ())
    grant = covering_grant(capability, operation.command, host=hostname, username=operation.username, paths=paths)
    if grant is not None:
        return grant
    return Refusal(RefusalKind.OUTSIDE, f"outside the capability: {_uncovered(operation, capability, hostname)}")


def _uncovered(operation: Operation, capability: Capability, hostname: str) -> str:
    ability = operation.command.ability
    grants = [g for g in capability.grants if g.ability in (ability, "ssh/*")]
    if not grants:
        return f"it grants no {ability}"
    grants = [g for g in grants if g.host == hostname]
    if not grants:
        return f"it grants {ability} on no host named {hostname}"
    grants = [g for g in grants if g.username == operation.username]
    if not grants:
        return f"it grants {ability} on {hostname} to no account named {operation.username}"
    paths = operation.paths or ((operation.cwd,) if operation.cwd else ())
    for path in paths:
        if not any(within(path, g.path_prefix) for g in grants):
            prefixes = " or ".join(sorted({g.path_prefix for g in grants}))
            return f"{path} is not under {prefixes}"
    return "no single grant covers every path"  # each path has a grant, but not one grant for all of them


def own_place(prefix: str, directories: Collection[str], files: Collection[str]) -> str:
    """The agent's own directory the prefix is at, above or beneath, or own file it is at or above; "" if none."""
    parts = components(prefix, "path_prefix")
    for directory in directories:
        own = components(directory)
        shorter = min(len(parts), len(own))
        if parts[:shorter] == own[:shorter]:
            return f"directory {directory}"
    for file in files:
        if within(file, prefix):
            return f"file {file}"
    return ""


def _cosignature(operation: Operation, capability: Capability, facts: GateFacts) -> tuple[str, str, int] | Refusal:
    """(approver, jti, expiry) of a valid cosignature, ("", "", 0) for none where none is needed, or STEP_UP."""
    if not operation.cosignature:
        if operation.command is AccessCommand.EXEC:
            return Refusal(
                RefusalKind.STEP_UP,
                "step-up required: ssh_exec needs a cosignature from an approver key listed on this host",
            )
        return "", "", 0
    try:
        checked = check_cosignature(
            operation, keys=facts.trust, audience=facts.audience, capability=capability, now=facts.now
        )
    except CosignRejected as exc:
        return Refusal(RefusalKind.STEP_UP, f"step-up refused: {exc}")
    return checked.approver, checked.jti, checked.expires


def _denial(operation: Operation, policies: tuple[str, ...], reason: str) -> str:
    """ "denied by policy ssh:sftp-upload:no-exec (forbid)", or the default deny, naming the path when it is one
    of several (move and copy judge each)."""
    where = next((f" for {path}" for path in operation.paths[1:] if reason.startswith(f"{path}: ")), "")
    if not where and len(operation.paths) > 1:
        where = f" for {operation.paths[0]}"
    if policies == (NO_PERMIT,):
        return f"denied by policy {NO_PERMIT} (no agent-access policy permits {operation.command.action}){where}"
    if reason.split(": ", 1)[-1].startswith("policy evaluation failed"):
        return f"denied by policy {', '.join(policies)} (its evaluation failed){where}"
    return f"denied by policy {', '.join(policies)} (forbid){where}"
