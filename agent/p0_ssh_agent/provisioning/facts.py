"""Facts and the decision: what the host holds for one request, read once, and the pure rules that judge it.

    gather(engine, request)            -> HostFacts   (I/O: NSS, /etc/login.defs, the ledger read ONCE)
    still_current(engine, facts)       -> the facts if nothing they depend on changed since, else None  (NSS and a
                                          stat; a new host record alone: its UID high-water mark read again)
    claim(facts, adopted)              -> the account the change may touch, or NotManaged        (pure)
    own_leftover_group(facts)          -> the UID of a creation killed between groupadd and useradd  (pure)
    decide(policy, facts, request)     -> Allow | Deny                                           (pure)

The pipeline (provisioning/pipeline.py) hands the same facts to the decision and to the handler, so the local
policy decides on exactly the snapshot the change acts on. A grant the policy judges is gathered before any lock
(a refusal leaves no trace); under the lock, still_current confirms the snapshot without reading the ledger again,
and only if something changed meanwhile are the facts gathered and judged again.

Ownership (issue 4, upstream-protocol.md §12 item 5; issue 14 item 1): the agent touches an account only if the
ledger says it created it ("created"), or it is adopted: listed in `adoptUsers` (recorded in the ledger as adopted
on first sight) or adopted into the ledger by an admin's `p0-ssh-agent adopt` (P0's Go agent's accounts, on the
evidence of their rule in the root-owned /etc/sudoers-p0: provisioning/go_agent_accounts.py). Looking like a Go
agent account (UID = GID in 65536-90000, a group of its name) is not ownership: anyone can make such an account.
Only a created account's lock state and existence are the agent's to change (provisioning/users.py); an adopted one
gets keys and sudo rules only. Root and system accounts are refused even when adopted by mistake.
"""

from __future__ import annotations

import dataclasses
import datetime
import socket
from collections.abc import Collection
from dataclasses import dataclass
from typing import Literal

from p0_ssh_agent.core.local_policy import NO_PERMIT, Decision, Facts, LocalPolicy
from p0_ssh_agent.core.requests import Action, Change, SudoRequest, public_key_of
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_DIR
from p0_ssh_agent.errors import AgentError, PermissionProblem
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.accounts import GroupRecord, UserRecord
from p0_ssh_agent.host.ledger import Ledger, LedgerCorrupt, LedgerVersion, copy_ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine

# created: the ledger says the agent made it; adopted: the ledger holds it as adopted; adoptable: in adoptUsers,
# not yet recorded; uid-changed: in the ledger with another UID; foreign: none of these.
Ownership = Literal["created", "adopted", "adoptable", "uid-changed", "foreign"]
MANAGED: tuple[Ownership, ...] = ("created", "adopted", "adoptable")
ADOPT_HINT = (
    "list it under adoptUsers in the configuration to let the agent manage its keys and sudo rules "
    "(an account P0's Go agent created: see `p0-ssh-agent adopt --list`)"
)


class NotManaged(PermissionProblem):
    """The target account exists but is not the agent's to change."""


@dataclass(frozen=True)
class HostFacts:
    """One request's view of the host: read once, before the decision, and not read again by the change."""

    user: str
    account: UserRecord | None
    primary_group: str | None  # the name of the account's primary group
    groups: tuple[str, ...]  # every group the account is in, by name (what Cedar sees)
    uid_min: int
    ledger: Ledger  # the ledger's records for this request (LedgerStore.read_user, or read_all for sudo)
    hostname: str
    now: datetime.datetime
    # LedgerStore.version of the user's records, taken just before the read: still_current compares it.
    ledger_version: LedgerVersion | None = None
    key_dir: str = KEY_STORE_DIR  # the key store's directory (Engine.key_dir): where keyStore store keeps keys
    # No account: the group of the user's name, if there is one (own_leftover_group judges it); else None.
    name_group: GroupRecord | None = None


_AccountView = tuple[UserRecord | None, str | None, tuple[str, ...], int, GroupRecord | None]


def _account_view(user: str) -> _AccountView:
    """The account, its primary group's name, its groups' names, uid_min: NSS and /etc/login.defs, cheap; with no
    account, the group of its name instead (a getgrnam; its members only if there is one)."""
    account = accounts.lookup_user(user)
    if account is None:
        return None, None, (), accounts.uid_min(), accounts.lookup_group(user)
    by_id = accounts.group_names_by_id(user, account.gid)  # the primary group is always a key
    groups = tuple(sorted({name for name in by_id.values() if name is not None}))
    return account, by_id[account.gid], groups, accounts.uid_min(), None


def gather(engine: Engine, request: Change, now: datetime.datetime) -> HostFacts:
    """Read what the request needs (blocking): the facts the decision and the change share."""
    account, primary, groups, uid_min, name_group = _account_view(request.user)
    # A sudo request renders the shared drop-in, which holds everyone's rules: it reads the whole ledger. Its
    # decision and its commits depend on the user's own records only (sudo_rules.change_rules commits the users
    # its change touched), so the version of those is what still_current compares.
    whole = isinstance(request, SudoRequest)
    version = engine.store.version(request.user)  # before the read: a commit after it changes the version
    return HostFacts(
        user=request.user,
        account=account,
        primary_group=primary,
        groups=groups,
        uid_min=uid_min,
        ledger=_read_ledger(engine, request.user, whole=whole),
        hostname=engine.config.hostname or socket.gethostname(),
        now=now,
        ledger_version=version,
        key_dir=engine.key_dir,
        name_group=name_group,
    )


def still_current(engine: Engine, facts: HostFacts) -> HostFacts | None:
    """`facts` as they still are on the host (the caller now holds the lock the change needs), or None if what the
    decision rests on changed: the account facts looked up again (NSS, cheap) and the ledger's version compared by
    stat, without reading the ledger again.

    A new host record alone (host.json replaced, the user's record and ledger.json as they were) is not such a
    change: the decision reads nothing of it, and the only thing of it the change uses, the UID high-water mark
    (new_uid), is read again here. That is what every creation but the first of a parallel batch meets: each one
    raises the mark while the next waits for the accounts lock."""
    if facts.ledger_version is None:
        return None
    version = engine.store.version(facts.user)
    seen = (facts.account, facts.primary_group, facts.groups, facts.uid_min, facts.name_group)
    if (version[0], version[2]) != (facts.ledger_version[0], facts.ledger_version[2]):
        return None
    if _account_view(facts.user) != seen:
        return None
    if version[1] == facts.ledger_version[1]:
        return facts
    high_water = engine.store.high_water()  # the mark only rises: one read after the version is at least as new
    if high_water is None:
        return None  # host.json gone: the ledger as a whole is in question, gather it again
    ledger = copy_ledger(facts.ledger)
    ledger.uid_high_water = max(ledger.uid_high_water, high_water)
    return dataclasses.replace(facts, ledger=ledger, ledger_version=version)


def _read_ledger(engine: Engine, name: str, *, whole: bool) -> Ledger:
    """The one ledger read of a request. A dry run by an unprivileged user, who cannot read it, plans with an
    empty one (a corrupt ledger still fails it: that is the operator's to hear about)."""
    try:
        return engine.store.read_all() if whole else engine.store.read_user(name)
    except LedgerCorrupt:
        raise
    except AgentError:
        if engine.store.lock_dir is None:
            return Ledger()
        raise


# --- the ownership rule (pure) -----------------------------------------------------------------------------------


def ownership(facts: HostFacts, record: UserRecord, adopted: Collection[str]) -> Ownership:
    """The ownership rule alone (root and system accounts are judged by accounts.manage_refusal): what the ledger
    says (created or adopted, with the same UID; or another UID), else adoptable if in adoptUsers, else foreign.
    Never the UID pattern: a hand-made account in the Go agent's range is foreign until an admin adopts it."""
    entry = facts.ledger.users.get(record.name)
    if entry is not None:
        if entry.uid != record.uid:
            return "uid-changed"
        return "adopted" if entry.adopted else "created"
    return "adoptable" if record.name in adopted else "foreign"


def created_by_agent(facts: HostFacts, record: UserRecord) -> bool:
    """Whether the ledger says the agent created this account: then, and only then, may a change lock, unlock or
    delete it. Adopted accounts (adoptUsers, `p0-ssh-agent adopt`) get keys and sudo rules only."""
    return ledger_created(facts.ledger, record)


def ledger_created(ledger: Ledger, record: UserRecord) -> bool:
    """created_by_agent on a ledger alone: the ledger holds the account as created, with its UID."""
    entry = ledger.users.get(record.name)
    return entry is not None and entry.uid == record.uid and not entry.adopted


def claim(facts: HostFacts, adopted: Collection[str]) -> UserRecord | None:
    """The account if it exists and the agent may change it; None if it does not exist; NotManaged otherwise.
    An "adoptable" account is the caller's to record (adopted=True) in the ledger after it."""
    record = facts.account
    if record is None:
        return None
    refusal = accounts.manage_refusal(record, min_uid=facts.uid_min, adopted=adopted)
    if refusal is not None:
        raise NotManaged(refusal)
    claimed = ownership(facts, record, adopted)
    if claimed in MANAGED:
        return record
    name = record.name
    if claimed == "uid-changed":
        raise NotManaged(
            f"refusing to manage {name}: the agent created it with UID {facts.ledger.users[name].uid}, but it now "
            f"has UID {record.uid} (deleted and re-created by someone else?); remove it from the ledger to adopt it"
        )
    raise NotManaged(not_created_refusal(name))


def own_leftover_group(facts: HostFacts) -> int | None:
    """The UID the ledger recorded for the user when all the host holds of it is the group its creation made: the
    agent, killed between `groupadd -g UID NAME` and `useradd` (tests/test_crash_points.py), left the intent in the
    ledger (recorded ahead: provisioning/users.py) and that group. The evidence: no account of the name; the ledger
    says the agent creates it (not adopted) with that UID; a group of the name with GID = that UID and no member.
    Anything else (another GID, a member, no intent) is someone else's group: None, and a creation refuses it."""
    entry = facts.ledger.users.get(facts.user)
    group = facts.name_group
    if facts.account is not None or entry is None or entry.adopted or group is None:
        return None
    if group.gid != entry.uid or group.members:
        return None
    return entry.uid


def not_created_refusal(name: str) -> str:
    """Why an account the agent did not create is refused, and how to let it manage its keys and sudo rules."""
    return f"refusing to manage {name}: the account exists but was not created by p0-ssh-agent; " + ADOPT_HINT


# --- the decision (pure) -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Allow:
    policy: str = ""  # the policies that permitted it ("" when no policy was asked: a revoke)


@dataclass(frozen=True)
class Deny:
    policy: str
    reason: str
    result: CommandResult  # the 403 answer, naming the policy


def policy_facts(facts: HostFacts, request: Change, *, org_id: str, adopted: Collection[str]) -> Facts:
    """What Cedar sees, from the request and the host's facts (pure; no adoption happens here)."""
    record = facts.account
    managed = system = False
    if record is not None:
        system = accounts.manage_refusal(record, min_uid=facts.uid_min) is not None  # UID 0, system, reserved
        managed = record.uid != 0 and ownership(facts, record, adopted) in MANAGED
    local = facts.now.astimezone()
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
        "hostname": facts.hostname,
        "hour": local.hour,
        "minute": local.minute,
        "weekday": local.isoweekday(),
        "now": int(facts.now.timestamp()),
    }
    return Facts(
        org_id=org_id,
        command=request.command.value,
        user=request.user,
        exists=record is not None,
        uid=record.uid if record is not None else -1,
        managed=managed,
        system=system,
        groups=facts.groups,
        context=context,
    )


def decide(
    policy: LocalPolicy | None, facts: HostFacts, request: Change, *, org_id: str, adopted: Collection[str]
) -> Allow | Deny:
    """The local policy's verdict on a grant (None: no policy asked, as in the agent's own revokes)."""
    if policy is None or request.action is not Action.GRANT:
        return Allow()
    seen = policy_facts(facts, request, org_id=org_id, adopted=adopted)
    decision = policy.evaluate(seen)
    if decision.allowed:
        return Allow(decision.policy)
    return Deny(decision.policy, decision.reason, denial(decision, policy, seen))


def denial(decision: Decision, policy: LocalPolicy, facts: Facts) -> CommandResult:
    """The answer to a denied grant: 403, the policy that denied it and where it lives."""
    error = f"{facts.command} for user {facts.user} denied by the local policy ({policy.source}): {decision.reason}"
    if decision.policies == (NO_PERMIT,) and facts.exists and not facts.managed:
        # The usual reason in practice: say what the provisioning engine would have said, and how to fix it.
        error += "; " + not_created_refusal(facts.user)
    return CommandResult(success=False, error=error, http_status=403, policy_denied=True)
