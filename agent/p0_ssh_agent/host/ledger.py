"""The ledger: what this agent owns on the host, so it never touches what it does not (peers.md §5 item 1).

    users            name -> UserEntry(uid, created_at, adopted): accounts the agent created, or was told to adopt
    keys             user -> request_id -> [KeyEntry(kind "key" | "ca", fingerprint, granted_at)]: one request may
                     hold a key and a CA line for the same user (provisionAuthorizedKeys and provisionCAKeys share
                     a requestId, upstream-protocol.md §6.9), hence a list
    sudo             request_id -> SudoEntry(user, run_as, granted_at): the drop-in is rendered from these
    uid_high_water   the highest UID the agent ever handed out: a deleted user's UID is never reused (peers.md §5
                     item 8), even after the user and its ledger entry are gone

Persisted as JSON at <state_dir>/ledger.json: mode 0600, root-owned, written atomically (temp file, fsync, rename,
directory fsync, through safefile.write_root_file), versioned by "schema": 1. Key material is never stored, only
fingerprints.

A ledger that cannot be read is NOT replaced by an empty one, and is left exactly where it is: load_ledger raises
LedgerCorrupt (a ConfigError, exit 78), naming the file and the problem. An empty ledger would disown every user
the agent created (it would then refuse to delete them) and drop every sudo grant at the next render, so the
operator decides: restore it, or move it aside to start empty. A ledger written by a newer agent (a higher schema)
is refused the same way, so an older agent never rewrites data it does not understand.

The caller holds locks.global_lock("ledger") from load to save. Everything here blocks.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, cast

from p0_ssh_agent.core.requests import REQUEST_ID_RE, is_user_name
from p0_ssh_agent.core.sudoers import SudoGrant
from p0_ssh_agent.errors import AgentError, ConfigError
from p0_ssh_agent.host import locks
from p0_ssh_agent.host.safefile import read_root_file, write_root_file

SCHEMA = 1
LEDGER_NAME = "ledger.json"
LEDGER_MODE = 0o600
# Far above any real ledger (about 150 bytes per grant), far below what would hurt to parse. The one limit for both
# directions: save_ledger refuses to write what load_ledger would refuse to read, or a grant that pushed the ledger
# over it would succeed once and then make every later grant and revoke fail.
MAX_LEDGER_BYTES = 64 * 1024 * 1024
KeyKind = Literal["key", "ca"]
_REQUEST_ID = re.compile(REQUEST_ID_RE, re.ASCII)


class LedgerCorrupt(ConfigError):
    """ledger.json exists but cannot be used; it was left untouched."""


class LedgerFull(AgentError):
    """The changed ledger would exceed MAX_LEDGER_BYTES; it was not written, so the change did not happen."""


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

    def sudo_grants(self) -> list[SudoGrant]:
        """What core.sudoers.render_dropin needs to render the drop-in."""
        return [SudoGrant(request_id, entry.user, entry.run_as) for request_id, entry in self.sudo.items()]


# --- JSON ---------------------------------------------------------------------------------------------------


def to_json(ledger: Ledger) -> str:
    document = {
        "schema": SCHEMA,
        "uid_high_water": ledger.uid_high_water,
        "users": {
            name: {"uid": e.uid, "created_at": e.created_at, "adopted": e.adopted} for name, e in ledger.users.items()
        },
        "keys": {
            user: {
                request_id: [
                    {"kind": e.kind, "fingerprint": e.fingerprint, "granted_at": e.granted_at} for e in entries
                ]
                for request_id, entries in per_user.items()
            }
            for user, per_user in ledger.keys.items()
        },
        "sudo": {
            request_id: {"user": e.user, "run_as": e.run_as, "granted_at": e.granted_at}
            for request_id, e in ledger.sudo.items()
        },
    }
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


class _Reader:
    """Typed access to the parsed document; every failure names the field's path (users.alice.uid)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> LedgerCorrupt:
        return LedgerCorrupt(
            f"{self.source}: {where} {problem}. The ledger was left untouched; restore it from a backup, or move it "
            "aside (the agent then starts with an empty ledger and no longer recognises the users it created)"
        )

    def obj(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a JSON object")
        return cast("dict[str, Any]", value)

    def string(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, "must be a non-empty string")
        return value

    def integer(self, value: object, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, "must be a non-negative integer")
        return value

    def user_name(self, value: str, where: str) -> str:
        if not is_user_name(value):
            raise self.fail(where, f"is not a valid user name: {value!r}")
        return value

    def request_id(self, value: str, where: str) -> str:
        if not _REQUEST_ID.fullmatch(value):
            raise self.fail(where, f"has an invalid request id: {value!r}")
        return value

    def fields(self, value: object, where: str, names: set[str]) -> dict[str, Any]:
        document = self.obj(value, where)
        missing, unknown = names - document.keys(), document.keys() - names
        if missing or unknown:
            raise self.fail(where, f"must have exactly the fields {sorted(names)} (missing {sorted(missing)}, "
                            f"unknown {sorted(unknown)})")  # fmt: skip
        return document


def _read_users(reader: _Reader, users: object, ledger: Ledger) -> None:
    for name, value in reader.obj(users, "users").items():
        where = f"users.{name}"
        entry = reader.fields(value, where, {"uid", "created_at", "adopted"})
        if not isinstance(entry["adopted"], bool):
            raise reader.fail(f"{where}.adopted", "must be true or false")
        uid = reader.integer(entry["uid"], f"{where}.uid")
        created_at = reader.string(entry["created_at"], f"{where}.created_at")
        ledger.users[reader.user_name(name, where)] = UserEntry(uid, created_at, entry["adopted"])


def _read_keys(reader: _Reader, keys: object, ledger: Ledger) -> None:
    for user, per_user in reader.obj(keys, "keys").items():
        reader.user_name(user, f"keys.{user}")
        for request_id, entries in reader.obj(per_user, f"keys.{user}").items():
            where = f"keys.{user}.{reader.request_id(request_id, f'keys.{user}')}"
            if not isinstance(entries, list):
                raise reader.fail(where, "must be a list")
            for index, value in enumerate(entries):
                item = reader.fields(value, f"{where}[{index}]", {"kind", "fingerprint", "granted_at"})
                if item["kind"] not in ("key", "ca"):
                    raise reader.fail(f"{where}[{index}].kind", 'must be "key" or "ca"')
                fingerprint = reader.string(item["fingerprint"], f"{where}[{index}].fingerprint")
                granted_at = reader.string(item["granted_at"], f"{where}[{index}].granted_at")
                ledger.record_key(user, request_id, item["kind"], fingerprint, now=granted_at)


def _read_sudo(reader: _Reader, sudo: object, ledger: Ledger) -> None:
    for request_id, value in reader.obj(sudo, "sudo").items():
        where = f"sudo.{request_id}"
        entry = reader.fields(value, where, {"user", "run_as", "granted_at"})
        user, run_as = entry["user"], entry["run_as"]
        if not isinstance(user, str) or (run_as is not None and not isinstance(run_as, str)):
            raise reader.fail(where, "must name user (a string) and run_as (a string or null)")
        granted_at = reader.string(entry["granted_at"], f"{where}.granted_at")
        try:
            ledger.record_sudo(request_id, user, run_as, now=granted_at)
        except ValueError as exc:
            raise reader.fail(where, f"is not a rule this agent writes ({exc})") from None


def from_json(text: str, source: str) -> Ledger:
    """Parse and check a ledger document; LedgerCorrupt names the first bad field."""
    reader = _Reader(source)
    try:
        raw = json.loads(text)
    except json.JSONDecodeError as exc:
        raise reader.fail(f"line {exc.lineno} column {exc.colno}:", f"is not valid JSON ({exc.msg})") from None
    top = reader.obj(raw, "the document")
    schema = top.get("schema")
    if isinstance(schema, int) and not isinstance(schema, bool) and schema > SCHEMA:
        raise LedgerCorrupt(
            f"{source} has schema {schema}, newer than this agent understands ({SCHEMA}); it was written by a newer "
            "p0-ssh-agent: upgrade the agent rather than let this one rewrite it"
        )
    top = reader.fields(top, "the document", {"schema", "uid_high_water", "users", "keys", "sudo"})
    if schema != SCHEMA or isinstance(schema, bool):
        raise reader.fail("schema", f"must be {SCHEMA}")
    ledger = Ledger(uid_high_water=reader.integer(top["uid_high_water"], "uid_high_water"))
    _read_users(reader, top["users"], ledger)
    _read_keys(reader, top["keys"], ledger)
    _read_sudo(reader, top["sudo"], ledger)
    # A UID in the table counts even if the mark was lost: never hand it out again.
    created = [entry.uid for entry in ledger.users.values() if not entry.adopted]
    ledger.uid_high_water = max([ledger.uid_high_water, *created])
    return ledger


# --- on disk ------------------------------------------------------------------------------------------------


def ledger_path(state_dir: Path) -> Path:
    return state_dir / LEDGER_NAME


def load_ledger(state_dir: Path) -> Ledger:
    """The ledger in state_dir; an empty one if there is none yet; LedgerCorrupt (file untouched) if unusable."""
    path = ledger_path(state_dir)
    data = read_root_file(str(path), max_bytes=MAX_LEDGER_BYTES)
    if data is None:
        return Ledger()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise _Reader(str(path)).fail(f"byte {exc.start}", "is not UTF-8") from None
    return from_json(text, str(path))


def save_ledger(ledger: Ledger, state_dir: Path) -> None:
    """Write the ledger atomically: after a crash the file holds the old ledger or the new one, never a mix.

    LedgerFull, before anything is written, if the result would be larger than load_ledger accepts. Every change is
    recorded in the ledger before the host is changed (see provisioning/), so the request that would grow it past
    the limit fails with the host and the ledger as they were.
    """
    path = ledger_path(state_dir)
    data = to_json(ledger).encode("utf-8")
    if len(data) > MAX_LEDGER_BYTES:
        raise LedgerFull(
            f"refusing to save the ledger {path}: it would be {len(data)} bytes, more than the "
            f"{MAX_LEDGER_BYTES // (1024 * 1024)} MiB the agent reads back ({len(ledger.users)} users, "
            f"{sum(len(per_user) for per_user in ledger.keys.values())} key requests, {len(ledger.sudo)} sudo rules); "
            "nothing was written and the request was not carried out: revoke grants that are no longer needed"
        )
    write_root_file(str(path), data, mode=LEDGER_MODE, max_bytes=MAX_LEDGER_BYTES)


# --- the store: what callers use -----------------------------------------------------------------------------


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


@dataclass(frozen=True)
class LedgerStore:
    """The ledger in one state directory: read one user's records or all of them, commit a change.

    Reads take no lock (the file is replaced atomically, so a read sees one whole version). A commit takes the
    ledger lock itself, innermost (after the caller's user lock), re-reads, applies the per-user change and saves,
    so two requests for different users never lose each other's records. `lock_dir` None: no lock (a dry run).
    """

    state_dir: Path
    lock_dir: str | None

    def read_all(self) -> Ledger:
        return load_ledger(self.state_dir)

    def read_user(self, name: str) -> Ledger:
        return user_view(self.read_all(), name)

    def commit(self, before: Ledger, after: Ledger) -> None:
        """Store `after` in place of `before` for every user either names (one atomic write for all of them)."""
        if self.lock_dir is None:
            return
        with locks.global_lock("ledger", lock_dir=self.lock_dir):
            save_ledger(apply_change(self.read_all(), before, after), self.state_dir)
