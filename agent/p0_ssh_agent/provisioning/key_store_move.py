"""Move the live key grants of the agent's created accounts between ~/.ssh/authorized_keys and the key store.

When keyStore changes (`p0-ssh-agent key-store`, cli/key_store.py; and at start-up, for what a change left behind),
every account the ledger says the agent CREATED gets its grants where the new mode keeps them:

    to the store   copy its granted pairs from ~/.ssh/authorized_keys into <key_dir>/<name>, then join the store's
                   group (sshd reads the store for members once the drop-in is in place); with `remove`, then
                   take those pairs out of the home file
    to home        copy the store file's granted pairs into ~/.ssh/authorized_keys; with `remove`, then leave the
                   group and remove the store file

A pair is "granted" when the ledger holds it: same account, request id, kind (key or CA line) and fingerprint, and
the line is one the agent writes (core/authorized_keys_format.py parse_own_line; a CA line's principal is the
account). The home file is the user's to edit: a pair they wrote there themselves, marker and all, must never reach
the store, and a pair left in the store by a revoke cut off mid-way must not come back home.

Each account's plan (host/actions.py) is built purely from what is read under the account's lock (the user's
ledger records, its home file and store file) and applied through the engine under the same lock, so a grant or a
revoke of that account never interleaves. Each step only ever adds a copy before any removal, in an order in which
sshd always finds the grants in the place it reads: a crash at any point leaves access intact, and a rerun
converges (add_block and remove_block are idempotent). Adopted and unmanaged accounts are never in the store.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.core.authorized_keys_format import add_block, blocks, parse_own_line, remove_block
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import accounts, key_store_files
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import (
    HostAction,
    JoinKeyStoreGroup,
    LeaveKeyStoreGroup,
    Plan,
)
from p0_ssh_agent.host.ledger import KeyEntry
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.authorized_keys import KeyFile
from p0_ssh_agent.provisioning.engine import Engine

log = get_logger(__name__)

Destination = Literal["store", "home"]
Pair = tuple[str, bytes]  # (request id, content line without its ending)


@dataclass(frozen=True)
class AccountKeys:
    """What one account's move is planned from, read under its lock."""

    record: UserRecord
    grants: dict[str, list[KeyEntry]]  # the ledger's keys of the account: request id -> entries
    home: bytes  # ~/.ssh/authorized_keys (b"" if missing; not read for a move home)
    store: bytes | None  # <key_dir>/<name> (None if missing; not read for a move to the store)


def granted_pairs(content: bytes, name: str, grants: dict[str, list[KeyEntry]]) -> list[Pair]:
    """The pairs in `content` that the ledger holds for the account `name`, in file order (pure)."""
    found: list[Pair] = []
    for request_id, lines in blocks(content).items():
        entries = grants.get(request_id, [])
        for line in lines:
            own = parse_own_line(line)
            if own is None or (own.is_ca and own.principal != name):
                continue
            kind = "ca" if own.is_ca else "key"
            fingerprint = own.key.fingerprint()
            held = any(entry.kind == kind and entry.fingerprint == fingerprint for entry in entries)
            if held and (request_id, line) not in found:
                found.append((request_id, line))
    return found


def _adding(pairs: list[Pair]) -> Callable[[bytes], bytes]:
    def add(content: bytes) -> bytes:
        for request_id, line in pairs:
            content = add_block(content, request_id, line.decode("ascii"))
        return content

    return add


def _removing(pairs: list[Pair]) -> Callable[[bytes], bytes]:
    def remove(content: bytes) -> bytes:
        for request_id, line in pairs:
            content = remove_block(content, request_id, select=line.__eq__)
        return content

    return remove


def plan_to_store(account: AccountKeys, key_dir: str, *, remove: bool) -> Plan:
    """Copy the home file's granted pairs into the store and join the group; with `remove`, then drop them from
    the home file. The group joins even with nothing to copy: in store mode no key the user adds logs them in."""
    record = account.record
    pairs = granted_pairs(account.home, record.name, account.grants)
    actions: list[HostAction] = []
    if pairs:
        actions.append(KeyFile(record, key_dir).edit(_adding(pairs)))
    actions.append(JoinKeyStoreGroup(record.name))
    if remove and pairs:
        actions.append(KeyFile(record).edit(_removing(pairs), create=False))
    verb = "moved" if remove else "copied"
    message = f"{record.name}: {len(pairs)} pair(s) {verb} to the store"
    return Plan(tuple(actions), CommandResult(success=True, message=message))


def plan_to_home(account: AccountKeys, key_dir: str, *, remove: bool) -> Plan:
    """Copy the store file's granted pairs into the home file; with `remove`, then leave the group (sshd reads the
    home file again) and remove the store file (with any pair the ledger no longer holds: no grant, no access)."""
    record = account.record
    pairs = granted_pairs(account.store or b"", record.name, account.grants)
    actions: list[HostAction] = []
    if pairs:
        actions.append(KeyFile(record).edit(_adding(pairs)))
    if remove:
        actions.append(LeaveKeyStoreGroup(record.name))
        if account.store is not None:
            actions.append(KeyFile(record, key_dir).edit(lambda _content: b"", create=False))
    verb = "moved" if remove else "copied"
    message = f"{record.name}: {len(pairs)} pair(s) {verb} home"
    return Plan(tuple(actions), CommandResult(success=True, message=message))


# --- applying them, account by account, under each account's lock ------------------------------------------------


@dataclass
class MoveReport:
    done: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)


def move_grants(engine: Engine, to: Destination, *, remove: bool) -> MoveReport:
    """Move every created account's grants `to` the store or home (blocking). Keeps going past a failure, which it
    reports; a rerun picks up where a failed or interrupted run stopped."""
    report = MoveReport()
    for name, entry in sorted(engine.read_ledger().users.items()):
        if entry.adopted:
            continue  # adopted accounts keep their own ~/.ssh/authorized_keys
        record = accounts.lookup_user(name)
        if record is None or record.uid != entry.uid:
            report.skipped.append(f"{name}: not on this host with UID {entry.uid}; nothing to move")
            continue
        try:
            result = _move_account(engine, record, to, remove=remove)
        except (AgentError, OSError) as exc:
            report.failed.append(f"{name}: {exc}")
            log.warning("key_store_move_failed", target_user=name, to=to, error=str(exc))
            continue
        if result is None:
            report.skipped.append(f"{name}: no longer created by p0-ssh-agent; nothing to move")
        else:
            report.done.append(result.message)
    log.info("key_store_moved", to=to, remove=remove, done=len(report.done), failed=len(report.failed))
    return report


def _move_account(engine: Engine, record: UserRecord, to: Destination, *, remove: bool) -> CommandResult | None:
    with engine.user_lock(record.uid):
        view = engine.store.read_user(record.name)  # again, under the lock: what a grant meanwhile recorded
        entry = view.users.get(record.name)
        if entry is None or entry.adopted or entry.uid != record.uid:
            return None
        # Only the file the pairs come from is read here; the other is read by its edit, under the same lock.
        to_store = to == "store"
        account = AccountKeys(
            record,
            view.keys.get(record.name, {}),
            KeyFile(record).read() if to_store else b"",
            None if to_store else key_store_files.read_key_file(record.name, key_dir=engine.key_dir),
        )
        plan = (plan_to_store if to == "store" else plan_to_home)(account, engine.key_dir, remove=remove)
        return plan.result(engine.apply(plan, view))


def move_stragglers(engine: Engine) -> MoveReport | None:
    """At start-up: the grants a mode change (or a grant made in the old mode while it ran) left in the other
    place. Store mode: copy home pairs into the store and join, never removing the home copies (sshd may not
    honour the drop-in yet). Home mode: copy the store's pairs home, leave the group, remove the store files.
    None, at the cost of one stat, on a home-mode host that never had a store."""
    if engine.config.key_store == "store":
        return move_grants(engine, "store", remove=False)
    if not Path(engine.key_dir).is_dir():
        return None
    return move_grants(engine, "home", remove=True)
