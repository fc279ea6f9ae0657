"""Where the ledger lives in a state directory, how it is read, and its one-time migration from ledger.json.

    <state_dir>/ledger/host.json          the host record: schema, uid_high_water, migrated_from
    <state_dir>/ledger/users/<name>.json  one record per user: its account entry, keys and sudo rules
    <state_dir>/ledger.json               schema 1 (agents before the per-user layout): migrated on first use
    <state_dir>/ledger.json.migrated-<UTC time>   what the migration moved aside: a backup, never read again

host.json is the layout's commit point: while it is missing the state directory holds a schema-1 ledger.json, or
no ledger at all (then ledger/users must be empty: records without a host record are refused, not ignored).

Migration (the caller holds the "ledger-migration" lock), each step crash-safe and the whole idempotent:
    1. read and check ledger.json whole (a corrupt or newer one is refused: nothing written, the file untouched)
    2. write every user record (and delete any a crashed earlier attempt left that ledger.json does not hold),
       one directory fsync
    3. write host.json with migrated_from = sha256 of ledger.json: from here on the per-user layout is the ledger
    4. rename ledger.json to ledger.json.migrated-<UTC time>, fsync the state directory
A crash before 3 leaves ledger.json in force (the next start redoes 2 from it); a crash between 3 and 4 leaves
both, and ledger.json's digest says it is the migrated one: the next start does 4. A ledger.json with another
digest next to host.json (a backup restored over a migrated host) is refused: the operator chooses one.

Reads take no lock: every file is replaced by rename, so each one read is whole. Everything here blocks.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from p0_ssh_agent.core.requests import is_user_name
from p0_ssh_agent.host import ledger_files, rootfile
from p0_ssh_agent.host.ledger_model import Ledger, LedgerCorrupt, LedgerFull, users_in
from p0_ssh_agent.host.ledger_records import (
    HostRecord,
    from_json,
    host_record_json,
    read_host_record,
    read_user_record,
    user_record_json,
)
from p0_ssh_agent.host.rootfile import read_root_file

LEDGER_NAME = "ledger.json"
LEDGER_DIR = "ledger"
USERS_DIR = "users"
HOST_NAME = "host.json"
RECORD_SUFFIX = ".json"
# Far above any real record (about 150 bytes per grant), far below what would hurt to parse. The one limit for both
# directions, per file (a user record, the host record, a schema-1 ledger.json): a commit refuses to write what a
# read would refuse, or a grant that pushed a record over it would succeed once and then make every later grant
# and revoke for that user fail.
MAX_LEDGER_BYTES = 64 * 1024 * 1024
_MAX_HOST_BYTES = 64 * 1024


@dataclass(frozen=True)
class Layout:
    """The ledger's paths in one state directory."""

    state_dir: str

    @classmethod
    def of(cls, state_dir: Path) -> Layout:
        return cls(str(state_dir.absolute()))

    @property
    def legacy(self) -> str:
        return f"{self.state_dir}/{LEDGER_NAME}"

    @property
    def ledger_dir(self) -> str:
        return f"{self.state_dir}/{LEDGER_DIR}"

    @property
    def users_dir(self) -> str:
        return f"{self.ledger_dir}/{USERS_DIR}"

    def record(self, name: str) -> str:
        return f"{self.users_dir}/{name}{RECORD_SUFFIX}"


def _text(data: bytes, source: str) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise LedgerCorrupt(
            f"{source}: byte {exc.start} is not UTF-8. The ledger was left untouched; restore it from a backup, or "
            "move it aside (the agent then starts with an empty ledger and no longer recognises the users it created)"
        ) from None


def digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


# --- reading --------------------------------------------------------------------------------------------------


def read_host(layout: Layout) -> HostRecord | None:
    with rootfile.root_dir(layout.ledger_dir) as fd:
        data = None if fd is None else rootfile.read_in_dir(fd, layout.ledger_dir, HOST_NAME, _MAX_HOST_BYTES)
    source = f"{layout.ledger_dir}/{HOST_NAME}"
    return None if data is None else read_host_record(_text(data, source), source)


def read_legacy(layout: Layout) -> bytes | None:
    return read_root_file(layout.legacy, max_bytes=MAX_LEDGER_BYTES)


def _both_refused(layout: Layout) -> LedgerCorrupt:
    return LedgerCorrupt(
        f"{layout.legacy} exists next to the per-user ledger {layout.ledger_dir} but is not the file that was "
        f"migrated into it (a backup restored over a migrated host?); both were left untouched. Keep one: move "
        f"{layout.legacy} aside to use {layout.ledger_dir}, or move {layout.ledger_dir} aside to migrate {LEDGER_NAME} "
        "again"
    )


def snapshot(layout: Layout) -> HostRecord | Ledger:
    """The ledger in force: the per-user layout's host record, or the whole schema-1 ledger (not migrated yet)."""
    host = read_host(layout)
    if host is None:
        data = read_legacy(layout)
        if data is not None:
            return from_json(_text(data, layout.legacy), layout.legacy)
        host = read_host(layout)  # migrated meanwhile: host.json is written before ledger.json is moved aside
        if host is None:
            if ledger_files.has_entries(layout.users_dir):
                raise LedgerCorrupt(
                    f"{layout.ledger_dir}/{HOST_NAME} is missing but {layout.users_dir} holds user records; they "
                    "were left untouched. Restore the whole ledger directory from a backup"
                )
            return Ledger()
        return host
    if os.path.lexists(layout.legacy):
        data = read_legacy(layout)
        if data is not None and digest(data) != host.migrated_from:
            raise _both_refused(layout)
    return host


# (inode, device, size, mtime_ns, ctime_ns) of one file; None if it does not exist; (-1, errno, ...) if unreadable.
FileVersion = tuple[int, int, int, int, int] | None
LedgerVersion = tuple[FileVersion, FileVersion, FileVersion]


def _file_version(path: str) -> FileVersion:
    try:
        found = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:  # a dry run by an unprivileged user: unreadable both times is "unchanged"
        return (-1, exc.errno or 0, 0, 0, 0)
    return (found.st_ino, found.st_dev, found.st_size, found.st_mtime_ns, found.st_ctime_ns)


def version(layout: Layout, name: str) -> LedgerVersion:
    """What a read of user `name`'s records depends on, by lstat alone: ledger.json (while not migrated), host.json
    and the user's record. Every file is replaced by rename, never written in place, so a replacement gives the
    path another inode; the inode of a file freed by an earlier replacement can be reused, which is why size,
    mtime and ctime are compared too (a replacement that reuses the inode within one timestamp tick and has the
    same size is the one change this cannot see)."""
    record = layout.record(name) if is_user_name(name) else None
    host = f"{layout.ledger_dir}/{HOST_NAME}"
    return (_file_version(layout.legacy), _file_version(host), None if record is None else _file_version(record))


def read_record(layout: Layout, name: str, into: Ledger) -> None:
    """Add user `name`'s record to `into` (nothing if it has none, or the name could not be one's)."""
    if not is_user_name(name):
        return
    with rootfile.root_dir(layout.users_dir) as fd:
        file_name = name + RECORD_SUFFIX
        data = None if fd is None else rootfile.read_in_dir(fd, layout.users_dir, file_name, MAX_LEDGER_BYTES)
    if data is not None:
        source = layout.record(name)
        read_user_record(_text(data, source), source, name, into)


def record_names(users_fd: int, layout: Layout) -> list[str]:
    """The user names of the records in the users directory (temp files skipped; anything else is refused)."""
    names = []
    with os.scandir(users_fd) as entries:
        for entry in entries:
            if entry.name.startswith("."):
                continue  # a temp file: a live commit's, or one a crash left (removed at that user's next commit)
            name = entry.name.removesuffix(RECORD_SUFFIX)
            if not entry.name.endswith(RECORD_SUFFIX) or not is_user_name(name):
                raise LedgerCorrupt(
                    f"{layout.users_dir}/{entry.name} is not a ledger record (records are <user name>{RECORD_SUFFIX}"
                    f"); nothing was changed: move it out of {layout.users_dir}"
                )
            names.append(name)
    return sorted(names)


def read_every_record(layout: Layout, host: HostRecord) -> Ledger:
    ledger = Ledger(uid_high_water=host.uid_high_water)
    with rootfile.root_dir(layout.users_dir) as fd:
        if fd is None:
            return ledger
        for name in record_names(fd, layout):
            data = rootfile.read_in_dir(fd, layout.users_dir, name + RECORD_SUFFIX, MAX_LEDGER_BYTES)
            if data is not None:  # None: deleted since the listing (its user's commit emptied it)
                source = layout.record(name)
                read_user_record(_text(data, source), source, name, ledger)
    return ledger


# --- writing --------------------------------------------------------------------------------------------------


def encode_records(layout: Layout, ledger: Ledger, names: list[str]) -> dict[str, bytes | None]:
    """File name -> the record of each named user in `ledger` (None: it holds nothing, the file goes). LedgerFull
    if one would be larger than a read accepts: raised before anything is written."""
    records: dict[str, bytes | None] = {}
    for name in names:
        if not is_user_name(name):
            raise ValueError(f"the ledger holds records only for valid user names: {name!r}")
        text = user_record_json(ledger, name)
        data = None if text is None else text.encode("utf-8")
        if data is not None and len(data) > MAX_LEDGER_BYTES:
            raise LedgerFull(
                f"refusing to save the ledger record {layout.record(name)}: it would be {len(data)} bytes, more than "
                f"the {MAX_LEDGER_BYTES // (1024 * 1024)} MiB the agent reads back "
                f"({len(ledger.keys.get(name, {}))} key requests, "
                f"{sum(1 for e in ledger.sudo.values() if e.user == name)} sudo rules); "
                "nothing was written and the request was not carried out: revoke grants that are no longer needed"
            )
        records[name + RECORD_SUFFIX] = data
    return records


def changed_only(users_fd: int, layout: Layout, records: dict[str, bytes | None]) -> dict[str, bytes | None]:
    """The records whose file does not already hold exactly that (an existing file is checked: no symlink)."""
    return {
        file_name: data
        for file_name, data in records.items()
        if rootfile.read_in_dir(users_fd, layout.users_dir, file_name, MAX_LEDGER_BYTES) != data
    }


def write_host(layout: Layout, host: HostRecord) -> None:
    with rootfile.root_dir(layout.ledger_dir, create=True) as fd:
        assert fd is not None  # noqa: S101 - create=True returns a directory or raises
        ledger_files.replace_files(fd, layout.ledger_dir, {HOST_NAME: host_record_json(host).encode("utf-8")})


def write_everything(layout: Layout, ledger: Ledger, migrated_from: str | None) -> None:
    """Make the per-user layout hold exactly `ledger`: records first (one directory fsync), host.json last. The
    caller excludes every other writer (the migration lock, or a save by the only writer)."""
    records = encode_records(layout, ledger, sorted(users_in(ledger)))
    with (
        rootfile.root_dir(layout.ledger_dir, create=True),
        rootfile.root_dir(layout.users_dir, create=True) as users_fd,
    ):
        assert users_fd is not None  # noqa: S101 - create=True returns a directory or raises
        stale = {name + RECORD_SUFFIX: None for name in record_names(users_fd, layout)}
        changes = changed_only(users_fd, layout, {**stale, **records})
        if changes:
            ledger_files.replace_files(users_fd, layout.users_dir, changes)
    write_host(layout, HostRecord(ledger.uid_high_water, migrated_from))


def retire_legacy(layout: Layout) -> None:
    """Step 4: move ledger.json aside as ledger.json.migrated-<UTC time> (never over an existing file)."""
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%SZ")
    with rootfile.root_dir(layout.state_dir) as fd:
        if fd is None or not ledger_files.exists(fd, LEDGER_NAME):
            return
        backup, number = f"{LEDGER_NAME}.migrated-{stamp}", 1
        while ledger_files.exists(fd, backup):
            number += 1
            backup = f"{LEDGER_NAME}.migrated-{stamp}-{number}"
        ledger_files.rename_aside(fd, layout.state_dir, LEDGER_NAME, backup)


def migrate(layout: Layout) -> None:
    """Steps 1-4 of the module docstring, or the ones a crash left undone; nothing if there is no ledger.json."""
    data = read_legacy(layout)
    if data is None:
        return
    host = read_host(layout)
    if host is None:
        ledger = from_json(_text(data, layout.legacy), layout.legacy)
        write_everything(layout, ledger, digest(data))
    elif host.migrated_from != digest(data):
        raise _both_refused(layout)
    retire_legacy(layout)
