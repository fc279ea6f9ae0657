"""The ledger: what this agent owns on the host, so it never touches what it does not (peers.md §5 item 1).

The model (Ledger: users, keys, sudo, uid_high_water) is host/ledger_model.py; the file formats are
host/ledger_records.py; the layout and the migration from ledger.json are host/ledger_layout.py. This module is
what callers use: `LedgerStore` (read one user's records or all, commit a change), `load_ledger` (everything) and
`save_ledger` (replace everything), and every public name of the other three.

Stored per user, schema 2, under <state_dir>/ledger/: one record per user (users/<name>.json: its account entry,
keys and sudo rules) and a host record (host.json: uid_high_water), so one user's grant reads and writes that
user's file only, whatever the others hold. Every file is mode 0600, root-owned, in root-only directories, read
with a bound and written atomically and symlink-safely (host/ledger_files.py: temp file, fsync, rename, directory
fsync). Key material is never stored, only fingerprints. A schema-1 <state_dir>/ledger.json (one document, agents
before this layout) is migrated on first use by a store that may write (host/ledger_layout.py has the steps, and
what a crash at each one leaves); until then it is read as it is.

A ledger that cannot be read is NOT replaced by an empty one, and is left exactly where it is: the read raises
LedgerCorrupt (a ConfigError, exit 78), naming the file and the field. An empty ledger would disown every user
the agent created (it would then refuse to delete them) and drop every sudo grant at the next render, so the
operator decides: restore it, or move it aside to start empty. A file written by a newer agent (a higher schema)
is refused the same way, so an older agent never rewrites data it does not understand.

Compaction is part of every commit: a revoked entry is removed from its user's record (nothing is appended, so
there is no log to compact), and a record that holds nothing any more is deleted. What stays is what is live, plus
the host's uid_high_water (never lowered). The lock directory keeps one empty lock file per user ever committed
(/run: a tmpfs, gone at boot).

Locks (host/locks.py), innermost after the caller's: a commit takes the record lock of each user it names, in
name order (so commits for different users never wait for each other), and the host record's lock only when the
UID high-water mark rises; the migration takes "ledger-migration". Everything here blocks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.host import ledger_files, locks, rootfile
from p0_ssh_agent.host.ledger_layout import (
    LEDGER_NAME,
    MAX_LEDGER_BYTES,
    Layout,
    LedgerVersion,
    changed_only,
    digest,
    encode_records,
    migrate,
    read_every_record,
    read_host,
    read_legacy,
    read_record,
    retire_legacy,
    snapshot,
    version,
    write_everything,
    write_host,
)
from p0_ssh_agent.host.ledger_model import (
    KeyEntry,
    KeyKind,
    Ledger,
    LedgerCorrupt,
    LedgerFull,
    SudoEntry,
    UserEntry,
    apply_change,
    copy_ledger,
    user_view,
    users_in,
    utc_now,
)
from p0_ssh_agent.host.ledger_records import (
    LEGACY_SCHEMA,
    SCHEMA,
    HostRecord,
    from_json,
    to_json,
    user_record_json,
)

__all__ = [
    "LEDGER_MODE",
    "LEDGER_NAME",
    "LEGACY_SCHEMA",
    "MAX_LEDGER_BYTES",
    "SCHEMA",
    "KeyEntry",
    "KeyKind",
    "Ledger",
    "LedgerCorrupt",
    "LedgerFull",
    "LedgerRecords",
    "LedgerStore",
    "LedgerVersion",
    "SudoEntry",
    "UserEntry",
    "apply_change",
    "copy_ledger",
    "from_json",
    "ledger_path",
    "load_ledger",
    "save_ledger",
    "to_json",
    "user_record_json",
    "user_view",
    "users_in",
    "utc_now",
]

LEDGER_MODE = ledger_files.FILE_MODE
MIGRATION_LOCK = "ledger-migration"
HOST_LOCK = "ledger-host"


def ledger_path(state_dir: Path) -> Path:
    """Where the ledger is: ledger.json while it is not migrated, else the directory of user records (renaming a
    record into it changes its mtime, so a stat of it tells a reader whether anything changed)."""
    layout = Layout.of(state_dir)
    return Path(layout.legacy if os.path.lexists(layout.legacy) else layout.users_dir)


@dataclass(frozen=True)
class LedgerStore:
    """The ledger in one state directory: read one user's records or all of them, commit a change.

    Reads take no lock (every file is replaced by rename, so a read sees each record whole; read_all reads the
    records one after the other, each as it is at that moment). A commit takes its users' record locks itself,
    innermost (after the caller's user lock), and replaces their records only, so two requests for different users
    never lose each other's records, nor wait for each other. `lock_dir` None: no lock and no write, not even the
    migration (a dry run; it reads ledger.json as it is).
    """

    state_dir: Path
    lock_dir: str | None

    @property
    def _layout(self) -> Layout:
        return Layout.of(self.state_dir)

    def _migrate_if_needed(self) -> None:
        if self.lock_dir is not None and os.path.lexists(self._layout.legacy):
            with locks.global_lock(MIGRATION_LOCK, lock_dir=self.lock_dir):
                migrate(self._layout)

    def read_all(self) -> Ledger:
        self._migrate_if_needed()
        found = snapshot(self._layout)
        return found if isinstance(found, Ledger) else read_every_record(self._layout, found)

    def read_user(self, name: str) -> Ledger:
        """A copy of one user's records (account entry, keys, sudo rules) and the host's UID high-water mark."""
        self._migrate_if_needed()
        found = snapshot(self._layout)
        if isinstance(found, Ledger):
            return user_view(found, name)
        view = Ledger(uid_high_water=found.uid_high_water)
        read_record(self._layout, name, view)
        return view

    def version(self, name: str) -> LedgerVersion:
        """A token that changes whenever a commit or a migration changes what read_user(name) would return, taken
        by lstat alone (host/ledger_layout.py version): taken before a read, and again later, equal tokens mean the
        read is still the ledger's. A store that may write migrates first, so the token is the layout's that the
        read will see."""
        self._migrate_if_needed()
        return version(self._layout, name)

    def high_water(self) -> int | None:
        """The host record's UID high-water mark as it is now (None: no host record), one small read."""
        host = read_host(self._layout)
        return None if host is None else host.uid_high_water

    def commit(self, before: Ledger, after: Ledger) -> None:
        """Store `after` in place of `before` for every user either names: each record whole, one directory fsync
        for the group. A crash in the middle leaves each named user's record old or new, never torn; LedgerFull
        (nothing written) if a record would be larger than a read accepts."""
        if self.lock_dir is None:
            return
        self._migrate_if_needed()
        layout = self._layout
        names = sorted(users_in(before) | users_in(after))
        records = encode_records(layout, after, names)
        created = [entry.uid for entry in after.users.values() if not entry.adopted]
        with contextlib.ExitStack() as held:
            for name in names:  # in name order: two group commits never wait for each other in a circle
                held.enter_context(locks.ledger_record_lock(name, lock_dir=self.lock_dir))
            # The mark rises before a record that needs it is written: a crash leaves a UID skipped, never reused.
            # `before` is what a read returned, and the mark never falls: when it already covers what `after`
            # needs, host.json (then there, or its mark would be 0) holds at least that, and is not read again.
            needed = max([after.uid_high_water, *created])
            if not 0 < needed <= before.uid_high_water:
                self._raise_high_water(needed)
            if not names:
                return
            with rootfile.root_dir(layout.users_dir, create=True) as users_fd:
                assert users_fd is not None  # noqa: S101 - create=True returns a directory or raises
                changes = changed_only(users_fd, layout, records)
                if changes:
                    ledger_files.replace_files(users_fd, layout.users_dir, changes)

    def _raise_high_water(self, high_water: int) -> None:
        """Write host.json if it is missing (a new host: it comes before any record) or its mark is below."""
        current = read_host(self._layout)
        if current is not None and current.uid_high_water >= high_water:
            return  # the common case: no lock, no write
        assert self.lock_dir is not None  # noqa: S101 - commit returned already for a dry run
        with locks.global_lock(HOST_LOCK, lock_dir=self.lock_dir):
            current = read_host(self._layout)
            if current is None:
                write_host(self._layout, HostRecord(high_water))
            elif current.uid_high_water < high_water:
                write_host(self._layout, HostRecord(high_water, current.migrated_from))


@dataclass
class LedgerRecords:
    """The ledger records one request read (once), and the commits it makes from them.

    Every commit stores only the users whose records the change touched (LedgerStore.commit replaces every user
    `before` or `after` names), so a snapshot of the whole ledger (a sudo request's) never overwrites a concurrent
    change to someone else."""

    store: LedgerStore
    committed: Ledger

    def after(self, change: Callable[[Ledger], object]) -> Ledger:
        """The ledger after `change` (pure: a copy; nothing is stored)."""
        result = copy_ledger(self.committed)
        change(result)
        return result

    def commit(self, after: Ledger) -> None:
        touched = {name for name in users_in(self.committed) | users_in(after) if _differs(self.committed, after, name)}
        if touched:
            self.store.commit(_only(self.committed, touched), _only(after, touched))
        self.committed = copy_ledger(after)

    def change(self, change: Callable[[Ledger], object]) -> None:
        self.commit(self.after(change))


def _differs(before: Ledger, after: Ledger, name: str) -> bool:
    old, new = user_view(before, name), user_view(after, name)
    return (old.users, old.keys, old.sudo) != (new.users, new.keys, new.sudo)


def _only(ledger: Ledger, names: set[str]) -> Ledger:
    """The records of `names` in `ledger` (with its UID high-water mark)."""
    result = Ledger(uid_high_water=ledger.uid_high_water)
    for name in names:
        view = user_view(ledger, name)
        result.users.update(view.users)
        result.keys.update(view.keys)
        result.sudo.update(view.sudo)
    return result


def load_ledger(state_dir: Path) -> Ledger:
    """The whole ledger in state_dir (any layout; nothing is migrated or written); an empty one if there is none
    yet; LedgerCorrupt (files untouched) if unusable."""
    return LedgerStore(state_dir, lock_dir=None).read_all()


def save_ledger(ledger: Ledger, state_dir: Path) -> None:
    """Make the ledger in state_dir exactly `ledger` (the per-user layout; a ledger.json is moved aside as
    migrated). Only changed records are written; records of users `ledger` does not hold are deleted.

    For the only writer (tests, a restore, a caller that excludes every other writer): it takes no lock. A crash
    leaves each record old or new. LedgerFull, before anything is written, if a record would be larger than a read
    accepts. Every change is recorded in the ledger before the host is changed (see provisioning/), so the request
    that would grow it past the limit fails with the host and the ledger as they were.
    """
    layout = Layout.of(state_dir)
    encode_records(layout, ledger, sorted(users_in(ledger)))  # LedgerFull before anything, even the migration
    legacy = read_legacy(layout)  # also refuses a symlinked ledger.json before anything is written
    host = read_host(layout)
    if legacy is not None:
        write_everything(layout, ledger, digest(legacy))
        retire_legacy(layout)
    else:
        write_everything(layout, ledger, None if host is None else host.migrated_from)
