"""Cross-process locks for host edits: one per user (their ~/.ssh files), one per user's ledger record, and named
global ones (sudoers, the ledger's migration and host record).

The daemon and a concurrent `p0-ssh-agent command` run may edit the same files, so in-process trio locks are not
enough (upstream-protocol.md §12 item 7). These are advisory `flock(LOCK_EX)` locks on root-owned files in a
root-only directory, by default /run/p0-ssh-agent/locks: /run is a tmpfs on real systems, so no stale lock file
outlives a boot, and a lock is released by the kernel when its holder dies.

`flock` blocks the calling thread. Async callers must take these inside `trio.to_thread.run_sync`, together with
the edit they protect, never on the event loop.

The locks are not re-entrant: flock locks belong to an open file description, so taking the same lock twice in
one process (even one thread) deadlocks. When both kinds are needed, take the global lock first, then user locks
in ascending uid order. Ledger locks are innermost: the migration lock ("ledger-migration"), then record locks
in ascending name order, then the host record's ("ledger-host").
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import stat
from collections.abc import Iterator
from pathlib import Path

from p0_ssh_agent.core.requests import is_user_name
from p0_ssh_agent.errors import AgentError, PermissionProblem

DEFAULT_LOCK_DIR = "/run/p0-ssh-agent/locks"
_LOCK_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,63}", re.ASCII)


class LockFailed(AgentError):
    """The lock directory or lock file could not be created or opened."""


def _open_lock_dir(lock_dir: str) -> int:
    flags = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        try:
            fd = os.open(lock_dir, flags)  # the common case: it exists (one call, not mkdir + stat + open)
        except FileNotFoundError:
            Path(lock_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
            fd = os.open(lock_dir, flags)
    except OSError as exc:
        raise LockFailed(f"cannot open lock directory {lock_dir}: {exc.strerror}") from None
    info = os.fstat(fd)
    # Anyone who can write here could swap a lock file and walk around our mutual exclusion.
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o022:
        os.close(fd)
        raise PermissionProblem(
            f"refusing lock directory {lock_dir}: owned by uid {info.st_uid} with mode "
            f"{stat.S_IMODE(info.st_mode):04o}; it must belong to uid {os.geteuid()} and not be group/world-writable"
        )
    return fd


@contextlib.contextmanager
def _flock(lock_dir: str, filename: str) -> Iterator[None]:
    dir_fd = _open_lock_dir(lock_dir)
    try:
        fd = os.open(filename, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise LockFailed(f"cannot open lock file {lock_dir}/{filename}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the last descriptor releases the lock


def user_file_lock(uid: int, *, lock_dir: str = DEFAULT_LOCK_DIR) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock for edits of one user's files (authorized_keys); blocks until it is free."""
    if uid < 0:
        raise ValueError(f"uid must not be negative: {uid}")
    return _flock(lock_dir, f"uid-{uid}.lock")


def ledger_record_lock(user: str, *, lock_dir: str = DEFAULT_LOCK_DIR) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock for one user's ledger record (host/ledger.py); blocks until it is free. Commits for different
    users take different locks, so they never wait for each other."""
    if not is_user_name(user):
        raise ValueError(f"a ledger record lock is named by a valid user name: {user!r}")
    return _flock(lock_dir, f"ledger-user-{user}.lock")


def global_lock(name: str, *, lock_dir: str = DEFAULT_LOCK_DIR) -> contextlib.AbstractContextManager[None]:
    """Exclusive lock named `name` (e.g. "sudoers", "ledger", "accounts"); blocks until it is free."""
    if not _LOCK_NAME.fullmatch(name):
        raise ValueError(f"lock name must match {_LOCK_NAME.pattern}: {name!r}")
    return _flock(lock_dir, f"global-{name}.lock")
