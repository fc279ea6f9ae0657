"""Adopting P0's Go agent's accounts on a host migrating from it: `p0-ssh-agent adopt` (issue 14 item 1).

The Go agent made its JIT accounts with UID = GID in 65536-90000 and a primary group of the same name, and wrote
their sudo rules, each under a `# RequestID: <id>` marker, into /etc/sudoers-p0. The shape alone proves nothing:
anyone who may run useradd can make such an account, and nothing in the user's own files counts either (the user
writes those). A rule for the account in /etc/sudoers-p0, a root-owned file (read through host/rootfile.py, which
refuses one anybody but root could have written), is the evidence: an account of that shape with such a rule is a
candidate, and the admin's `p0-ssh-agent adopt NAME` records it in the ledger as adopted.

Adopted means what adoptUsers means: the agent grants and revokes the account's keys and sudo rules; it never
locks, unlocks or deletes it (provisioning/users.py), and revoke-all leaves it. A Go agent account that never had
a sudo rule left no evidence: the admin who knows it lists it under adoptUsers instead.

    candidates(engine)      -> [Candidate]   the accounts of the Go agent's shape the ledger does not hold
    adopt(engine, names)    -> AdoptReport   each name adopted (one ledger commit, under the user's lock) or refused
"""

from __future__ import annotations

import grp
import pwd
import re
from dataclasses import dataclass, field

from p0_ssh_agent.core.authorized_keys_format import MARKER_PREFIX
from p0_ssh_agent.core.requests import USER_NAME_RE
from p0_ssh_agent.core.sudoers import LEGACY_FILE
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.rootfile import read_root_file
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.planning import PlanBuilder

_MARKER = re.compile(re.escape(MARKER_PREFIX) + r"(?P<request_id>\S{1,128})[ \t]*")
_RULE = re.compile(rf"(?P<user>{USER_NAME_RE.strip('^$')})[ \t]+ALL[ \t]*=.*", re.ASCII)


# --- the rule (pure) -------------------------------------------------------------------------------------------


def has_go_agent_shape(record: UserRecord, primary_group: str | None) -> bool:
    """UID in 65536-90000, GID = UID, a primary group of the account's name: how the Go agent made accounts (§6.2).
    Only what makes an account worth listing; never evidence on its own."""
    in_range = accounts.JIT_UID_LOW <= record.uid <= accounts.JIT_UID_HIGH
    return in_range and record.gid == record.uid and primary_group == record.name


def sudoers_p0_evidence(name: str, legacy: str) -> tuple[str, ...]:
    """The rules for `name` in /etc/sudoers-p0's text, each as "<file>:<line> (RequestID <id>)": a rule the Go
    agent wrote sits on the line after its marker."""
    found: list[str] = []
    request_id: str | None = None
    for number, line in enumerate(legacy.split("\n"), start=1):
        marker = _MARKER.fullmatch(line)
        if marker is not None:
            request_id = marker["request_id"]
            continue
        rule = _RULE.fullmatch(line.strip())
        if rule is not None and rule["user"] == name and request_id is not None:
            found.append(f"{LEGACY_FILE}:{number} (RequestID {request_id})")
        request_id = None
    return tuple(found)


@dataclass(frozen=True)
class Candidate:
    name: str
    uid: int
    evidence: tuple[str, ...]  # empty: no evidence, `adopt` refuses it


# --- on the host -----------------------------------------------------------------------------------------------


def _legacy_text() -> str:
    """/etc/sudoers-p0, read only if root-owned and safe (host/rootfile.py); "" when it does not exist."""
    content = read_root_file(LEGACY_FILE)
    return "" if content is None else content.decode("utf-8", errors="replace")


def _primary_group(gid: int) -> str | None:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return None


def candidates(engine: Engine) -> list[Candidate]:
    """Every account of the Go agent's shape that the ledger does not hold, with its evidence (possibly none)."""
    legacy = _legacy_text()
    held = engine.read_ledger().users
    found: list[Candidate] = []
    for entry in sorted(pwd.getpwall(), key=lambda e: e.pw_name):
        record = UserRecord(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)
        if record.name in held or not has_go_agent_shape(record, _primary_group(record.gid)):
            continue
        found.append(Candidate(record.name, record.uid, sudoers_p0_evidence(record.name, legacy)))
    return found


@dataclass
class AdoptReport:
    done: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)


def adopt(engine: Engine, names: list[str]) -> AdoptReport:
    """Record each named account as adopted, if it has the Go agent's shape and a rule in /etc/sudoers-p0; refuse
    it otherwise. Already in the ledger: nothing to do. Blocking."""
    report = AdoptReport()
    legacy = _legacy_text()
    for name in names:
        try:
            report.done.append(_adopt_one(engine, name, legacy))
        except AgentError as exc:
            report.refused.append(f"{name}: {exc}")
    return report


class NotAdoptable(AgentError):
    """The account is not one `adopt` may record: not the Go agent's shape, no evidence, or someone else's."""


def _adopt_one(engine: Engine, name: str, legacy: str) -> str:
    record = accounts.lookup_user(name)
    if record is None:
        raise NotAdoptable("no such account")
    with engine.user_lock(record.uid):
        ledger = engine.store.read_user(name)  # under the user's lock: no grant commits meanwhile
        entry = ledger.users.get(name)
        if entry is not None:
            if entry.uid != record.uid:
                raise NotAdoptable(f"the ledger holds {name} with UID {entry.uid}, the account has UID {record.uid}")
            return f"{name}: already in the ledger ({'adopted' if entry.adopted else 'created by p0-ssh-agent'})"
        refusal = accounts.manage_refusal(record)
        if refusal is not None:
            raise NotAdoptable(refusal)
        if not has_go_agent_shape(record, _primary_group(record.gid)):
            raise NotAdoptable(
                "not shaped like a Go agent account (UID = GID in 65536-90000, a group of its name); "
                "list it under adoptUsers if the agent should manage its keys and sudo rules"
            )
        evidence = sudoers_p0_evidence(name, legacy)
        if not evidence:
            raise NotAdoptable(
                f"no evidence that P0's Go agent created it (no rule for it in {LEGACY_FILE}); "
                "list it under adoptUsers if the agent should manage its keys and sudo rules"
            )
        builder = PlanBuilder(ledger)
        uid, now = record.uid, builder.now
        builder.change_ledger(lambda after: after.record_user(name, uid, adopted=True, now=now))
        engine.apply(builder.plan(CommandResult(success=True)), ledger)
        return f"{name}: adopted (UID {uid}; evidence: {', '.join(evidence)}): keys and sudo rules only"
