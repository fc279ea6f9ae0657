"""Drift (issue 6), pure: what differs between the ledger and the host, and the Plan that repairs it.

provisioning/reconcile.py reads the facts (the ledger, a user's authorized_keys, the sudoers drop-in) under the
handlers' locks and has the engine apply the repair; everything here is a function of those facts and touches
nothing. Drift, one finding each:

    key_missing    a key or CA line in the ledger is not in the user's authorized_keys (removed by hand, the file or
                   the account gone)
    key_changed    under our marker for that request, a line of the same kind is there but is not the one we wrote:
                   another key, options added or changed (principals=, command=, ...), or an expiry-time= moved
                   later than granted_at + maxGrantSeconds. (A line without expiry-time= is not drift: the grant
                   may predate maxGrantSeconds, or the local OpenSSH may not read the option.)
    foreign_line   any other line under a marker of a request the ledger holds for that user
    sudo_missing   a sudo rule in the ledger is not in /etc/sudoers.d/p0-ssh-agent
    sudo_changed   the drop-in holds the request's rule with another user or run-as than the ledger
    sudo_unknown   a rule in the drop-in that the ledger does not hold
    unreadable     a file that could not be compared (a drop-in edited into a shape the agent refuses to parse, an
                   authorized_keys the agent refuses to read: symlink, foreign owner, ...)

Pairs under markers of requests the ledger does not hold for that user are not ours to judge (the Go agent's, or
another tool's) and are left out.

Repair never grants anything: the ledger stores fingerprints, not keys, so a vanished key cannot be put back, and a
vanished sudo rule is not re-added either (that would re-grant something someone deliberately removed). The repair
plans (host/actions.py) are made of the actions the handlers use:

    key_missing    the ledger entry is forgotten                                  ChangeLedger
    key_changed    the changed line (with its marker) is removed and the ledger   EditUserFile (remove_block),
                   entry forgotten                                                then ChangeLedger
    foreign_line   the line (with its marker) is removed                          EditUserFile (remove_block)
    sudo_missing   the ledger entry is forgotten                                  InstallSudoers, ChangeLedger
    sudo_changed   the rule is removed from the drop-in (visudo-checked as        (the drop-in rendered without
                   always) and the ledger entry forgotten                         the rules the ledger does not
    sudo_unknown   the rule is removed from the drop-in                           hold, then the ledger's mirror)
    unreadable     nothing: the operator fixes the file (the message says which and why)

The file is edited before the ledger forgets, as a revoke does: a crash in between leaves the ledger claiming more
than the host holds, which the next reconciliation reports again (key_missing) and forgets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from typing import Literal

from p0_ssh_agent.core.authorized_keys_format import OwnLine, blocks, is_ca_line, parse_own_line, remove_block
from p0_ssh_agent.core.openssh_expiry import grant_time, stamp_time
from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.sshkeys import KNOWN_KEY_TYPES, parse_public_key
from p0_ssh_agent.core.sudoers import SudoGrant
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import ChangeLedger, HostAction, Plan
from p0_ssh_agent.host.ledger import KeyEntry, Ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.authorized_keys import AUTHORIZED_KEYS, SSH_DIR, KeyFile
from p0_ssh_agent.provisioning.sudo_rules import DROPIN_PATH, Grants, parse_rules, rules_change

DriftKind = Literal[
    "key_missing", "key_changed", "foreign_line", "sudo_missing", "sudo_changed", "sudo_unknown", "unreadable"
]
# sshd reads expiry-time= to the second; a stamp may sit up to a second before the exact instant, never after.
_STAMP_SLACK = timedelta(seconds=1)
_REPAIRED = CommandResult(success=True)  # the answer of a repair's plan: nobody reads it


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    path: str
    user: str | None
    request_id: str | None
    detail: str  # fingerprints and names only, never a key or a line from the file
    repaired: bool = False


@dataclass(frozen=True)
class Findings:
    """What one comparison found, and the plan that repairs all of it (no actions: nothing to repair)."""

    drift: list[Drift]
    repair: Plan


def home_keys_path(user: str) -> str:
    """How a finding names the file of a user whose home is not known (the account gone, the lookup failed)."""
    return f"~{user}/{SSH_DIR}/{AUTHORIZED_KEYS}"


# --- keys ------------------------------------------------------------------------------------------------------


def describe_line(line: bytes) -> str:
    """A line named by its key's fingerprint when one can be found in it, never by its text."""
    own = parse_own_line(line)
    if own is not None:
        return f"key {own.key.fingerprint()}"
    tokens = line.decode("utf-8", "replace").split()
    for index, token in enumerate(tokens[:-1]):
        if token in KNOWN_KEY_TYPES:
            try:
                key = parse_public_key(" ".join(tokens[index : index + 2]), field="line")
            except RequestInvalid:
                break
            return f"key {key.fingerprint()} with options this agent does not write"
    return "a line that is not a key this agent writes"


def _is_ours(own: OwnLine | None, entry: KeyEntry, user: str, max_grant_seconds: int | None) -> bool:
    if own is None or own.is_ca != (entry.kind == "ca") or own.key.fingerprint() != entry.fingerprint:
        return False
    if own.is_ca and own.principal != user:
        return False
    if own.expiry is not None and max_grant_seconds is not None:
        try:
            stamped = stamp_time(own.expiry)
        except ValueError:
            return False
        return stamped <= grant_time(entry.granted_at) + timedelta(seconds=max_grant_seconds) + _STAMP_SLACK
    return True


def _strip_foreign(content: bytes, foreign: dict[str, set[bytes]]) -> bytes:
    for request_id, lines in foreign.items():
        content = remove_block(content, request_id, select=lines.__contains__)
    return content


def _forget_entries(ledger: Ledger, user: str, vanished: list[tuple[str, KeyEntry]]) -> None:
    per_user = ledger.keys.get(user, {})
    for request_id, entry in vanished:
        kept = [e for e in per_user.get(request_id, []) if e != entry]
        if kept:
            per_user[request_id] = kept
        else:
            per_user.pop(request_id, None)
    if not per_user:
        ledger.keys.pop(user, None)


def _forget(user: str, vanished: list[tuple[str, KeyEntry]]) -> tuple[HostAction, ...]:
    if not vanished:
        return ()
    return (ChangeLedger(lambda ledger: _forget_entries(ledger, user, vanished)),)


def compare_keys(
    record: UserRecord,
    ledger: Ledger,
    content: bytes,
    max_grant_seconds: int | None,
    key_file: KeyFile | None = None,
) -> Findings:
    """The drift between the key and CA lines `ledger` holds for the account and the `content` of its key file
    (key_file; None: its ~/.ssh/authorized_keys); the repair removes the lines that are not ours (create=False: a
    missing file stays missing), then forgets the entries whose line is gone or changed."""
    where = key_file or KeyFile(record)
    user, path = record.name, where.path
    in_file = blocks(content)
    drift: list[Drift] = []
    vanished: list[tuple[str, KeyEntry]] = []  # (request id, entry): forgotten on repair
    foreign: dict[str, set[bytes]] = {}  # request id -> lines removed on repair
    for request_id, entries in sorted(ledger.keys.get(user, {}).items()):
        lines = in_file.get(request_id, [])
        parsed = [(line, parse_own_line(line)) for line in lines]
        matched = {
            index
            for index, (_line, own) in enumerate(parsed)
            if any(_is_ours(own, entry, user, max_grant_seconds) for entry in entries)
        }
        strangers = [line for index, (line, _own) in enumerate(parsed) if index not in matched]
        for entry in entries:
            if any(_is_ours(own, entry, user, max_grant_seconds) for _line, own in parsed):
                continue
            vanished.append((request_id, entry))
            same_kind = next((s for s in strangers if is_ca_line(s) == (entry.kind == "ca")), None)
            if same_kind is None:
                detail = f"{entry.kind} line {entry.fingerprint} is gone"
                drift.append(Drift("key_missing", path, user, request_id, detail))
                continue
            strangers.remove(same_kind)
            foreign.setdefault(request_id, set()).add(same_kind)
            now_there = describe_line(same_kind)
            if now_there == f"key {entry.fingerprint}":
                detail = f"{entry.kind} line {entry.fingerprint} was edited: its principals or expiry-time differ"
            else:
                detail = f"{entry.kind} line {entry.fingerprint} was replaced by {now_there}"
            drift.append(Drift("key_changed", path, user, request_id, detail))
        for line in strangers:
            foreign.setdefault(request_id, set()).add(line)
            detail = f"{describe_line(line)} under the marker of this request"
            drift.append(Drift("foreign_line", path, user, request_id, detail))
    actions: tuple[HostAction, ...] = ()
    if foreign:
        actions = (where.edit(lambda data: _strip_foreign(data, foreign), create=False),)
    return Findings(drift, Plan(actions + _forget(user, vanished), _REPAIRED))


def account_gone(user: str, ledger: Ledger) -> Findings:
    """The account is gone, and its keys with it: every entry `ledger` holds for it is missing, and forgotten on
    repair."""
    owned = ledger.keys.get(user, {})
    vanished = [(rid, entry) for rid, entries in sorted(owned.items()) for entry in entries]
    path = home_keys_path(user)
    drift = [
        Drift("key_missing", path, user, rid, f"{entry.kind} line {entry.fingerprint}: the account is gone")
        for rid, entry in vanished
    ]
    return Findings(drift, Plan(_forget(user, vanished), _REPAIRED))


# --- sudo ------------------------------------------------------------------------------------------------------


def _keep_ledger_rules(ledger: Ledger) -> Callable[[Grants], None]:
    def keep(rules: Grants) -> None:
        for request_id, rule in list(rules.items()):
            entry = ledger.sudo.get(request_id)
            if entry is None or SudoGrant(request_id, entry.user, entry.run_as) != rule:
                del rules[request_id]

    return keep


def compare_sudo(dropin: bytes | None, ledger: Ledger) -> Findings:
    """The drift between the drop-in's content (None: no file) and the rules `ledger` holds; AgentError if the
    drop-in is not as this agent writes it (unreadable: the operator's to fix).

    The repair renders the drop-in without the rules the ledger does not hold (InstallSudoers, visudo-checked) and
    mirrors it whole into the ledger (ChangeLedger), so vanished and changed grants are forgotten: the actions a
    sweep's rules_change makes of this content. They are the ones an UnderSudoersLock would run, so the caller
    applies them holding the sudoers lock it read `dropin` and `ledger` under."""
    rules = parse_rules(dropin)
    drift: list[Drift] = []
    for request_id, entry in sorted(ledger.sudo.items()):
        rule = rules.get(request_id)
        wanted = SudoGrant(request_id, entry.user, entry.run_as)
        if rule is None:
            drift.append(Drift("sudo_missing", DROPIN_PATH, entry.user, request_id, f"rule '{wanted.rule}' is gone"))
        elif rule != wanted:
            detail = f"rule '{wanted.rule}' became '{rule.rule}'"
            drift.append(Drift("sudo_changed", DROPIN_PATH, rule.user, request_id, detail))
    for request_id, rule in sorted(rules.items()):
        if request_id not in ledger.sudo:
            detail = f"rule '{rule.rule}' is not in the ledger"
            drift.append(Drift("sudo_unknown", DROPIN_PATH, rule.user, request_id, detail))
    actions = rules_change(_keep_ledger_rules(ledger), users=None).then(dropin) if drift else ()
    return Findings(drift, Plan(actions, _REPAIRED))
