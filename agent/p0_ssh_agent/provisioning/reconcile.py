"""Reconciliation (issue 6): compare what the ledger says the agent granted with what the host holds, report drift
and, with `reconcile: repair`, repair what the ledger owns.

Drift, one event per finding:

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
vanished sudo rule is not re-added either (that would re-grant something someone deliberately removed). So:

    key_missing    the ledger entry is forgotten
    key_changed    the changed line (with its marker) is removed and the ledger entry forgotten
    foreign_line   the line (with its marker) is removed
    sudo_missing   the ledger entry is forgotten
    sudo_changed   the rule is removed from the drop-in (visudo-checked as always) and the ledger entry forgotten
    sudo_unknown   the rule is removed from the drop-in
    unreadable     nothing: the operator fixes the file (the message says which and why)

Locks are the handlers' own (a user's lock around reading the ledger and their file, the sudoers lock around the
drop-in), so a grant in flight is never mistaken for drift. Everything here blocks.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Literal

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.authorized_keys_format import OwnLine, blocks, is_ca_line, parse_own_line, remove_block
from p0_ssh_agent.core.openssh_expiry import grant_time, stamp_time
from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.sshkeys import KNOWN_KEY_TYPES, parse_public_key
from p0_ssh_agent.core.sudoers import SudoGrant
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import accounts, audit_trail
from p0_ssh_agent.host.actions import Plan
from p0_ssh_agent.host.ledger import KeyEntry, Ledger, LedgerRecords
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.authorized_keys import (
    AUTHORIZED_KEYS,
    SSH_DIR,
    authorized_keys_edit,
    read_authorized_keys,
)
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.sudo_rules import DROPIN_PATH, current_rules, rules_change

log = get_logger(__name__)

DriftKind = Literal[
    "key_missing", "key_changed", "foreign_line", "sudo_missing", "sudo_changed", "sudo_unknown", "unreadable"
]
# sshd reads expiry-time= to the second; a stamp may sit up to a second before the exact instant, never after.
_STAMP_SLACK = timedelta(seconds=1)
_DONE = CommandResult(success=True)  # the answer of a repair's plan: nobody reads it


@dataclass(frozen=True)
class Drift:
    kind: DriftKind
    path: str
    user: str | None
    request_id: str | None
    detail: str  # fingerprints and names only, never a key or a line from the file
    repaired: bool = False


def record_drift(drift: Drift, *, mode: str, trail: audit_trail.AuditTrail, dry_run: bool = False) -> None:
    """The one place a drift finding is recorded: a structlog line and an audit entry (host/audit_trail.py)."""
    log.warning(
        "drift",
        drift=drift.kind,
        path=drift.path,
        target_user=drift.user,
        request_id=drift.request_id,
        detail=drift.detail,
        mode=mode,
        repaired=drift.repaired,
    )
    # RESULT: "reported" for a finding left as it is (report mode, or nothing the agent may repair), "failure" for
    # a repair that was tried and failed, "success" for one repaired.
    result: audit_trail.Result = (
        "success" if drift.repaired else "failure" if mode == "repair" and _repairable(drift) else "reported"
    )
    summary = f"{'[dry run] ' if dry_run else ''}drift {drift.kind} in {drift.path}"
    summary += f" (user {drift.user or '-'}, request {drift.request_id or '-'}): {drift.detail}"
    summary += " (repaired)" if drift.repaired else f" ({mode} mode: {result})"
    trail.record(
        audit_trail.AuditEvent(
            event=audit_trail.Event.REPAIRED if drift.repaired else audit_trail.Event.DRIFT,
            origin="reconcile",
            request_id=drift.request_id or "",
            command="reconcile",
            action=mode,
            target_user=drift.user or "",
            result=result,
            summary=summary,
            dry_run=dry_run,
            key_fingerprint=audit_trail.fingerprint_in(drift.detail),
            detail=drift.detail,
            drift=drift.kind,
            path=drift.path,
        ),
    )


def _repairable(drift: Drift) -> bool:
    return drift.kind != "unreadable"  # the operator fixes an unreadable file; the agent never tries


def inspect_drift(config: AgentConfig, state_dir: Path) -> list[Drift]:
    """The drift as `status` and `doctor` show it: a dry-run engine (no lock, no repair), nothing logged or audited."""
    return reconcile(
        Engine.describing(config, state_dir, audit_trail=audit_trail.AuditTrail.off()), repair=False, record=False
    )


def reconcile(engine: Engine, *, repair: bool, record: bool = True) -> list[Drift]:
    """Compare ledger and host; with repair, fix what the module docstring says. Never raises for one bad file.

    A dry-run engine (dryRun: true, or `status`) only reports: it changes nothing and takes no locks.
    """
    repair = repair and not engine.describes
    found = _reconcile_keys(engine, repair) + _reconcile_sudo(engine, repair)
    if record:
        for drift in found:
            record_drift(
                drift, mode="repair" if repair else "report", trail=engine.audit_trail, dry_run=engine.describes
            )
    return found


# --- keys ------------------------------------------------------------------------------------------------------


def _describe(line: bytes) -> str:
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


@dataclass(frozen=True)
class _UserFindings:
    drift: list[Drift]
    vanished: list[tuple[str, KeyEntry]]  # (request id, entry): forgotten on repair
    foreign: dict[str, set[bytes]]  # request id -> lines removed on repair


def _compare_user(
    user: str, owned: dict[str, list[KeyEntry]], content: bytes, path: str, max_grant_seconds: int | None
) -> _UserFindings:
    in_file = blocks(content)
    drift: list[Drift] = []
    vanished: list[tuple[str, KeyEntry]] = []
    foreign: dict[str, set[bytes]] = {}
    for request_id, entries in sorted(owned.items()):
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
            now_there = _describe(same_kind)
            if now_there == f"key {entry.fingerprint}":
                detail = f"{entry.kind} line {entry.fingerprint} was edited: its principals or expiry-time differ"
            else:
                detail = f"{entry.kind} line {entry.fingerprint} was replaced by {now_there}"
            drift.append(Drift("key_changed", path, user, request_id, detail))
        for line in strangers:
            foreign.setdefault(request_id, set()).add(line)
            detail = f"{_describe(line)} under the marker of this request"
            drift.append(Drift("foreign_line", path, user, request_id, detail))
    return _UserFindings(drift, vanished, foreign)


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


def _reconcile_user(engine: Engine, user: str, repair: bool) -> list[Drift]:
    record = accounts.lookup_user(user)
    home_path = f"~{user}/{SSH_DIR}/{AUTHORIZED_KEYS}"
    max_seconds = engine.config.max_grant_seconds
    if record is None:  # the account is gone, and its keys with it
        records = LedgerRecords(engine.store, engine.store.read_user(user))
        owned = records.committed.keys.get(user, {})
        vanished = [(rid, entry) for rid, entries in sorted(owned.items()) for entry in entries]
        if repair:
            records.change(lambda ledger: _forget_entries(ledger, user, vanished))
        return [
            Drift("key_missing", home_path, user, rid, f"{e.kind} line {e.fingerprint}: the account is gone", repair)
            for rid, e in vanished
        ]
    path = f"{record.home.rstrip('/')}/{SSH_DIR}/{AUTHORIZED_KEYS}"
    with engine.user_lock(record.uid):
        records = LedgerRecords(engine.store, engine.store.read_user(user))
        owned = records.committed.keys.get(user, {})
        if not owned:
            return []
        try:
            content = read_authorized_keys(record)
        except AgentError as exc:
            return [Drift("unreadable", path, user, None, str(exc))]
        findings = _compare_user(user, owned, content, path, max_seconds)
        if not repair or not findings.drift:
            return findings.drift
        try:
            if findings.foreign:
                foreign = findings.foreign
                strip = authorized_keys_edit(record, lambda data: _strip_foreign(data, foreign), create=False)
                engine.apply(Plan((strip,), _DONE))
            records.change(lambda ledger: _forget_entries(ledger, user, findings.vanished))
        except AgentError as exc:
            log.error("drift_repair_failed", path=path, target_user=user, error=str(exc))
            return findings.drift
    return [replace(drift, repaired=True) for drift in findings.drift]


def _reconcile_keys(engine: Engine, repair: bool) -> list[Drift]:
    found: list[Drift] = []
    for user in sorted(engine.read_ledger().keys):
        try:
            found.extend(_reconcile_user(engine, user, repair))
        except (AgentError, OSError) as exc:
            found.append(Drift("unreadable", f"~{user}/{SSH_DIR}/{AUTHORIZED_KEYS}", user, None, str(exc)))
    return found


# --- sudo ------------------------------------------------------------------------------------------------------


def _compare_sudo(rules: dict[str, SudoGrant], ledger: Ledger) -> list[Drift]:
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
    return drift


def _keep_ledger_rules(engine: Engine) -> Callable[[dict[str, SudoGrant]], None]:
    def change(rules: dict[str, SudoGrant]) -> None:
        ledger = engine.read_ledger()  # read again under the sudoers lock: what holds now, not at the check
        for request_id, rule in list(rules.items()):
            entry = ledger.sudo.get(request_id)
            if entry is None or SudoGrant(request_id, entry.user, entry.run_as) != rule:
                del rules[request_id]

    return change


def _reconcile_sudo(engine: Engine, repair: bool) -> list[Drift]:
    try:
        with engine.lock("sudoers"):
            drift = _compare_sudo(current_rules(), engine.read_ledger())
    except AgentError as exc:
        return [Drift("unreadable", DROPIN_PATH, None, None, str(exc))]
    if not repair or not drift:
        return drift
    try:
        # rules_change mirrors the ledger to the drop-in afterwards: vanished and changed grants are forgotten.
        engine.apply(Plan((rules_change(_keep_ledger_rules(engine), users=None),), _DONE))
    except AgentError as exc:
        log.error("drift_repair_failed", path=DROPIN_PATH, error=str(exc))
        return drift
    return [replace(d, repaired=True) for d in drift]
