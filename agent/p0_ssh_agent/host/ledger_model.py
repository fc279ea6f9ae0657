"""The ledger's data model: what the agent owns on the host, as values (host/ledger.py says how it is stored).

    users            name -> UserEntry(uid, created_at, adopted): accounts the agent created, or was told to adopt
    keys             user -> request_id -> [KeyEntry(kind "key" | "ca", fingerprint, granted_at)]: one request may
                     hold a key and a CA line for the same user (provisionAuthorizedKeys and provisionCAKeys share
                     a requestId, upstream-protocol.md §6.9), hence a list
    sudo             request_id -> SudoEntry(user, run_as, granted_at): the drop-in is rendered from these
    uid_high_water   the highest UID the agent ever handed out: a deleted user's UID is never reused (peers.md §5
                     item 8), even after the user and its ledger entry are gone

A user's records are its account entry, its keys and the sudo rules naming it; `user_view`, `apply_change` and the
store all cut the ledger along that line. Pure: no I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Literal

from p0_ssh_agent.core.sudoers import SudoGrant
from p0_ssh_agent.errors import AgentError, ConfigError

KeyKind = Literal["key", "ca"]


class LedgerCorrupt(ConfigError):
    """A ledger file exists but cannot be used; it was left untouched."""


class LedgerFull(AgentError):
    """A changed ledger record would exceed MAX_LEDGER_BYTES; nothing was written, so the change did not happen."""


def utc_now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class UserEntry:
    uid: int
    created_at: str
    adopted: bool = False


@dataclass(frozen=True)
class KeyEntry:
    kind: KeyKind
    fingerprint: str  # "SHA256:..." as ssh-keygen -l prints it
    granted_at: str


@dataclass(frozen=True)
class SudoEntry:
    user: str
    run_as: str | None  # None means ALL
    granted_at: str


@dataclass
class Ledger:
    users: dict[str, UserEntry] = field(default_factory=dict)
    keys: dict[str, dict[str, list[KeyEntry]]] = field(default_factory=dict)
    sudo: dict[str, SudoEntry] = field(default_factory=dict)
    uid_high_water: int = 0

    def record_user(self, name: str, uid: int, *, adopted: bool = False, now: str | None = None) -> None:
        self.users[name] = UserEntry(uid, now or utc_now(), adopted)
        if not adopted:  # an adopted account's UID was not handed out by us
            self.uid_high_water = max(self.uid_high_water, uid)

    def forget_user(self, name: str) -> None:
        """Drop the user, its keys and its sudo grants (its account is gone; so must every right be)."""
        self.users.pop(name, None)
        self.keys.pop(name, None)
        for request_id in [rid for rid, entry in self.sudo.items() if entry.user == name]:
            del self.sudo[request_id]

    def record_key(
        self, user: str, request_id: str, kind: KeyKind, fingerprint: str, *, now: str | None = None
    ) -> None:
        """Note a key line; recording the same (kind, fingerprint) for a request again changes nothing."""
        entries = self.keys.setdefault(user, {}).setdefault(request_id, [])
        if not any((entry.kind, entry.fingerprint) == (kind, fingerprint) for entry in entries):
            entries.append(KeyEntry(kind, fingerprint, now or utc_now()))

    def forget_keys(self, user: str, request_id: str, kind: KeyKind | None = None) -> list[KeyEntry]:
        """Remove and return what a request granted to a user (only lines of `kind` when given)."""
        per_user = self.keys.get(user, {})
        entries = per_user.pop(request_id, [])
        removed = [entry for entry in entries if kind is None or entry.kind == kind]
        kept = [entry for entry in entries if entry not in removed]
        if kept:
            per_user[request_id] = kept
        if not per_user:
            self.keys.pop(user, None)
        return removed

    def record_sudo(self, request_id: str, user: str, run_as: str | None, *, now: str | None = None) -> None:
        SudoGrant(request_id, user, run_as)  # raises ValueError for anything the drop-in could not render
        previous = self.sudo.get(request_id)
        if previous is None or (previous.user, previous.run_as) != (user, run_as):
            self.sudo[request_id] = SudoEntry(user, run_as, now or utc_now())

    def forget_sudo(self, request_id: str) -> SudoEntry | None:
        return self.sudo.pop(request_id, None)

    def grants_held(self, user: str, *, besides: str | None = None) -> int:
        """How many grants the ledger records for `user`: requests holding a key or CA line, and sudo rules (the
        account entry is not a grant). besides: leave that request's out (the one being revoked)."""
        keys = sum(1 for rid, entries in self.keys.get(user, {}).items() if entries and rid != besides)
        rules = sum(1 for rid, entry in self.sudo.items() if entry.user == user and rid != besides)
        return keys + rules

    def sudo_grants(self) -> list[SudoGrant]:
        """What core.sudoers.render_dropin needs to render the drop-in."""
        return [SudoGrant(request_id, entry.user, entry.run_as) for request_id, entry in self.sudo.items()]


# --- cutting the ledger by user ------------------------------------------------------------------------------


def user_view(ledger: Ledger, name: str) -> Ledger:
    """The part of `ledger` that belongs to one user (its account entry, its keys, its sudo rules), with the host's
    UID high-water mark. A copy: changing it changes nothing in `ledger`."""
    view = Ledger(uid_high_water=ledger.uid_high_water)
    if name in ledger.users:
        view.users[name] = ledger.users[name]
    if name in ledger.keys:
        view.keys[name] = {request_id: list(entries) for request_id, entries in ledger.keys[name].items()}
    view.sudo = {request_id: entry for request_id, entry in ledger.sudo.items() if entry.user == name}
    return view


def copy_ledger(ledger: Ledger) -> Ledger:
    """A deep copy to change without touching the original (a plan computes the ledger after from the one before)."""
    return Ledger(
        users=dict(ledger.users),
        keys={user: {rid: list(items) for rid, items in per_user.items()} for user, per_user in ledger.keys.items()},
        sudo=dict(ledger.sudo),
        uid_high_water=ledger.uid_high_water,
    )


def users_in(ledger: Ledger) -> set[str]:
    """Every user name the ledger holds a record for (an account, keys or a sudo rule)."""
    return set(ledger.users) | set(ledger.keys) | {entry.user for entry in ledger.sudo.values()}


def apply_change(current: Ledger, before: Ledger, after: Ledger) -> Ledger:
    """`current` with the records of every user named in `before` or `after` replaced by `after`'s (pure).

    Requests for different users commit independently: a change computed from one user's view replaces that user's
    records only, so a concurrent change to another user (made between the read and this commit) is kept."""
    result = copy_ledger(current)
    for name in users_in(before) | users_in(after):
        result.users.pop(name, None)
        result.keys.pop(name, None)
        for request_id in [rid for rid, entry in result.sudo.items() if entry.user == name]:
            del result.sudo[request_id]
        if name in after.users:
            result.users[name] = after.users[name]
        if name in after.keys:
            result.keys[name] = {rid: list(entries) for rid, entries in after.keys[name].items()}
        result.sudo.update({rid: entry for rid, entry in after.sudo.items() if entry.user == name})
    result.uid_high_water = max(current.uid_high_water, after.uid_high_water)
    return result
