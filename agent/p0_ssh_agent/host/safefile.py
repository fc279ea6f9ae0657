"""Symlink-safe, atomic edits of files in users' home directories (root-owned files under /etc: host/rootfile.py,
on the same checks).

Root must never follow a path a user controls (upstream-protocol.md §12 items 4, 7, 8, 9). So a user's file is
reached by walking directory file descriptors: the home is opened with O_NOFOLLOW|O_DIRECTORY and checked (owned by
the user or root, not group/world-writable), then `~/.ssh` relative to it, then the file relative to that. A symlink,
a hard link (which could be /etc/shadow under another name), a foreign owner or a non-regular file is refused with
UnsafePath, naming the path and the problem; nothing is changed then.

A write goes to a temp file in the same directory (O_EXCL|O_NOFOLLOW), is fchmod/fchown-ed, fsync-ed, renamed over
the target relative to the directory fd, and the directory is fsync-ed, so readers (sshd, sudo) see the old file
or the new one, never a torn one; any failure removes the temp file. Modes and owners are enforced on every call,
also when the content is already right. Labels are restored with restorecon when SELinux is on (host/selinux.py).

Callers serialise edits with host/locks.py. Everything here blocks: async callers run it in a worker thread.

Every file is checked and read by host/plainfile.py's two rules, the ones runAudit applies too: a regular file
with one link (check_plain_file), read up to a limit counted in bytes read, not taken from fstat (read_at_most).

    AgentError
    ├── FileEditFailed      an I/O error (missing home, disk full, ...): names the path and the OS error; the file
    │   │                   is as it was
    │   └── EditNotDurable  the new content is in place, but the directory's fsync after the rename failed
    └── PermissionProblem
        └── UnsafePath      a symlink, hard link, foreign owner, wrong type, or a group/world-writable directory
            └── FileTooLarge    more than the limit could be read from it
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import secrets
import stat
from collections.abc import Callable, Collection
from dataclasses import dataclass
from typing import NoReturn

from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import crashpoints, selinux
from p0_ssh_agent.host.plainfile import (
    MAX_FILE_BYTES,
    FileTooLarge,
    UnsafePath,
    check_plain_file,
    file_kind,
    read_at_most,
)

__all__ = [
    "MAX_FILE_BYTES",
    "EditNotDurable",
    "FileEdit",
    "FileEditFailed",
    "FileTooLarge",
    "UnsafePath",
    "edit_in_user_dir",
    "preview_in_user_dir",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
# O_NONBLOCK: opening a FIFO a user put in place of the file must not hang us; we refuse it right after.
_READ_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
_TEMP_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class FileEdit:
    """What an edit did (or, in a dry run, would do). before None: the file did not exist; after None: it does
    not exist afterwards. changed is about the content; modes and owners are enforced either way."""

    path: str
    before: bytes | None
    after: bytes | None
    changed: bool


class FileEditFailed(AgentError):
    """The edit failed for an ordinary reason (missing directory, I/O error); the message names the path."""


class EditNotDurable(FileEditFailed):
    """The rename went through (readers see the new content) but the directory's fsync failed: a crash may still
    bring the old file back. Unlike its parent, this failure changed the file: a ledger record of it must stay."""


def _check_component(name: str, what: str) -> None:
    if not name or name in (".", "..") or "/" in name or "\0" in name:
        raise ValueError(f"{what} must be a single path component, got {name!r}")


def _refuse_entry(name: str, shown: str, expected: str, dir_fd: int | None) -> NoReturn:
    """Explain why `name` could not be opened as `expected`: it is a symlink (to where) or the wrong kind."""
    try:
        info = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except OSError as exc:
        raise FileEditFailed(f"cannot open {shown}: {exc.strerror}") from None
    if stat.S_ISLNK(info.st_mode):
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        raise UnsafePath(f"refusing {shown}: it is a symlink (to {target}); replace it with {expected}")
    raise UnsafePath(f"refusing {shown}: it is {file_kind(info.st_mode)}, not {expected}")


def _open_dir(name: str, shown: str, dir_fd: int | None = None) -> int | None:
    """A directory fd for `name` (no symlink as its last component), or None if it does not exist."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        # O_DIRECTORY|O_NOFOLLOW on a symlink fails with ENOTDIR on Linux, ELOOP elsewhere.
        if exc.errno in (errno.ELOOP, errno.ENOTDIR):
            _refuse_entry(name, shown, "a directory", dir_fd)
        raise FileEditFailed(f"cannot open {shown}: {exc.strerror}") from None


def _check_dir(fd: int, shown: str, owners: Collection[int], *, allow_loose: bool = False) -> os.stat_result:
    info = os.fstat(fd)
    if info.st_uid not in owners:
        wanted = " or ".join(f"uid {uid}" for uid in sorted(set(owners)))
        raise UnsafePath(f"refusing {shown}: it is owned by uid {info.st_uid}, not {wanted}")
    if not allow_loose and stat.S_IMODE(info.st_mode) & 0o022:
        raise UnsafePath(
            f"refusing {shown}: it is group- or world-writable (mode {stat.S_IMODE(info.st_mode):04o}), so another "
            f"user could swap files in it (sshd's StrictModes refuses it too); fix with: chmod go-w {shown}"
        )
    return info


def _enforce(fd: int, info: os.stat_result, uid: int, gid: int, mode: int) -> None:
    if (info.st_uid, info.st_gid) != (uid, gid):
        crashpoints.step("fchown")
        os.fchown(fd, uid, gid)
    if stat.S_IMODE(info.st_mode) != mode:
        crashpoints.step("fchmod")
        os.fchmod(fd, mode)


def _check_owner(info: os.stat_result, shown: str, owners: Collection[int]) -> None:
    if info.st_uid not in owners:
        wanted = " or ".join(f"uid {uid}" for uid in sorted(set(owners)))
        raise UnsafePath(f"refusing {shown}: it is owned by uid {info.st_uid}, not {wanted}")


def _read_regular(
    dir_fd: int, name: str, shown: str, owners: Collection[int], max_bytes: int = MAX_FILE_BYTES
) -> tuple[int, os.stat_result, bytes] | None:
    """Open and read an existing regular file with one link and an allowed owner, of at most max_bytes; None if
    it does not exist. The caller closes the returned fd."""
    try:
        fd = os.open(name, _READ_FLAGS, dir_fd=dir_fd)
    except FileNotFoundError:
        return None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            _refuse_entry(name, shown, "a regular file", dir_fd)
        raise FileEditFailed(f"cannot open {shown}: {exc.strerror}") from None
    try:
        info = os.fstat(fd)  # the file we opened, not whatever the name points at by now
        check_plain_file(info, shown)
        _check_owner(info, shown, owners)
        return fd, info, read_at_most(fd, max_bytes, shown)
    except OSError as exc:
        os.close(fd)
        raise FileEditFailed(f"cannot read {shown}: {exc.strerror}") from None
    except BaseException:
        os.close(fd)
        raise


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _remove_stale_temps(dir_fd: int, name: str) -> None:
    """Delete temp files an earlier edit of `name` left when it was killed between create and rename.

    Every caller holds the lock for `name` (user, sudoers or ledger lock), so no live edit of ours owns one now.
    Only exact temp names of ours are touched, and unlink never follows a link or removes a directory.
    """
    pattern = re.compile(rf"\.{re.escape(name)}\.(?:p0tmp|tmp)\.[0-9a-f]{{16}}")
    # scandir, not listdir: a user's ~/.ssh may hold millions of names, and a list of them all is memory they choose.
    # Unlinking while iterating is allowed (POSIX readdir) and keeps even a list of the matches out of memory.
    with contextlib.suppress(OSError), os.scandir(dir_fd) as entries:
        for entry in entries:
            if pattern.fullmatch(entry.name):
                crashpoints.step(f"unlink {entry.name}")
                with contextlib.suppress(OSError):
                    os.unlink(entry.name, dir_fd=dir_fd)


def _replace(
    dir_fd: int,
    name: str,
    data: bytes,
    *,
    shown_dir: str,
    temp_name: str,
    owner: tuple[int, int],
    mode: int,
    validate: Callable[[str], None] | None = None,
) -> None:
    """Write `data` to `temp_name`, check it, rename it over `name`, fsync the directory. No temp file survives."""
    temp_path = f"{shown_dir}/{temp_name}"
    _remove_stale_temps(dir_fd, name)
    crashpoints.step(f"create {temp_path}")
    try:
        fd = os.open(temp_name, _TEMP_FLAGS, 0o600, dir_fd=dir_fd)
    except OSError as exc:
        raise FileEditFailed(f"cannot create {temp_path}: {exc.strerror}") from None
    try:
        try:
            crashpoints.step(f"write {temp_path}")
            _write_all(fd, data)
            # Mode and owner only after the content is complete: a user never holds a half-written temp file.
            crashpoints.step(f"fchmod+fchown {temp_path}")
            os.fchmod(fd, mode)
            os.fchown(fd, *owner)
            crashpoints.step(f"fsync {temp_path}")
            os.fsync(fd)
        finally:
            os.close(fd)
        if validate is not None:
            validate(temp_path)
        crashpoints.step(f"rename {temp_path} -> {name}")
        os.replace(temp_name, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException as exc:
        with contextlib.suppress(OSError):
            os.unlink(temp_name, dir_fd=dir_fd)
        if isinstance(exc, OSError):
            raise FileEditFailed(f"cannot write {shown_dir}/{name}: {exc.strerror}") from None
        raise
    crashpoints.step(f"fsync {shown_dir}")
    try:
        os.fsync(dir_fd)  # make the rename itself durable
    except OSError as exc:
        raise EditNotDurable(f"cannot sync {shown_dir}: {exc.strerror}") from None


def edit_in_user_dir(
    *,
    home: str,
    uid: int,
    gid: int,
    subdir: str,
    filename: str,
    transform: Callable[[bytes], bytes],
    dir_mode: int = 0o700,
    file_mode: int = 0o600,
    create: bool = True,
    keep_owner: bool = False,
) -> FileEdit:
    """Replace <home>/<subdir>/<filename> with transform(its bytes, or b"" if missing), safely (module docstring).

    create False: a missing directory or file is left missing and transform is not called (a revoke with nothing
    to remove). A missing file whose transform is empty is not created. The directory and file end up uid:gid
    with dir_mode/file_mode (a root-owned one, as the Go agent left them, is handed to the user). transform must
    be a pure function of the bytes: it may run twice when the directory has to be created.

    keep_owner (only with create False: a revoke in an account the agent does not manage): owner and modes are
    left as they are, the new file gets the old one's, and an unchanged file is not written at all.
    """
    if keep_owner and create:
        raise ValueError("edit_in_user_dir: keep_owner only for an edit that creates nothing (create=False)")
    modes = None if keep_owner else (dir_mode, file_mode)
    return _user_file_edit(home, (uid, gid), subdir, filename, transform, modes=modes, create=create, write=True)


def preview_in_user_dir(
    *,
    home: str,
    uid: int,
    gid: int,
    subdir: str,
    filename: str,
    transform: Callable[[bytes], bytes],
    create: bool = True,
) -> FileEdit:
    """What edit_in_user_dir would do, through the same checks: nothing on disk changes, not even a mode. Also
    how a file in a user's directory is read safely (transform: the identity)."""
    return _user_file_edit(
        home, (uid, gid), subdir, filename, transform, modes=(0o700, 0o600), create=create, write=False
    )


def _user_file_edit(
    home: str,
    owner: tuple[int, int],
    subdir: str,
    filename: str,
    transform: Callable[[bytes], bytes],
    *,
    modes: tuple[int, int] | None,
    create: bool,
    write: bool,
) -> FileEdit:
    """modes None: owner and modes are kept as found (edit_in_user_dir's keep_owner)."""
    (uid, gid), (dir_mode, file_mode) = owner, modes or (0o700, 0o600)
    _check_component(subdir, "subdir")
    _check_component(filename, "filename")
    shown_dir = f"{home.rstrip('/')}/{subdir}"
    path = f"{shown_dir}/{filename}"
    owners = (uid, 0)
    with contextlib.ExitStack() as cleanup:
        home_fd = _open_dir(home, home)
        if home_fd is None:
            raise FileEditFailed(f"cannot edit {path}: the home directory {home} does not exist")
        cleanup.callback(os.close, home_fd)
        _check_dir(home_fd, home, owners)

        dir_fd = _open_dir(subdir, shown_dir, home_fd)
        made_dir = dir_fd is None
        if dir_fd is None:
            after = transform(b"") if create else b""
            if not after or not write:
                return FileEdit(path, None, after or None, changed=bool(after))
            dir_fd = _make_dir(home_fd, subdir, shown_dir, dir_mode)
        cleanup.callback(os.close, dir_fd)
        # A loose ~/.ssh of the user's own is tightened, not refused: only the user can write into it anyway.
        dir_info = _check_dir(dir_fd, shown_dir, owners, allow_loose=True)
        if write and modes is not None:
            _enforce(dir_fd, dir_info, uid, gid, dir_mode)
        mode = None if modes is None else file_mode
        edit = _edit_file(
            dir_fd, filename, shown_dir, transform, owner=(uid, gid), mode=mode, create=create, write=write
        )
    if edit.changed and write:
        selinux.restorecon([shown_dir, path] if made_dir else [path])
    return edit


def _make_dir(home_fd: int, subdir: str, shown_dir: str, mode: int) -> int:
    crashpoints.step(f"mkdir {shown_dir}")
    try:
        os.mkdir(subdir, mode, dir_fd=home_fd)
    except FileExistsError:
        pass  # made meanwhile by someone else: opened and checked like any existing one
    except OSError as exc:
        raise FileEditFailed(f"cannot create {shown_dir}: {exc.strerror}") from None
    dir_fd = _open_dir(subdir, shown_dir, home_fd)
    if dir_fd is None:
        raise FileEditFailed(f"cannot open {shown_dir}: it vanished right after it was created")
    return dir_fd


def _edit_file(
    dir_fd: int,
    filename: str,
    shown_dir: str,
    transform: Callable[[bytes], bytes],
    *,
    owner: tuple[int, int],
    mode: int | None,
    create: bool,
    write: bool,
) -> FileEdit:
    """mode None: the file keeps its owner and mode (a rewrite gets the old file's); nothing is created then."""
    path = f"{shown_dir}/{filename}"
    with contextlib.ExitStack() as cleanup:
        existing = _read_regular(dir_fd, filename, path, (owner[0], 0))
        if existing is None:
            if not create or mode is None:
                return FileEdit(path, None, None, changed=False)
            before = None
        else:
            file_fd, file_info, before = existing
            cleanup.callback(os.close, file_fd)
        after = transform(before or b"")
        if before is None and not after:
            return FileEdit(path, None, None, changed=False)  # never create an empty file
        if not write or after == before:
            if existing is not None and write and mode is not None:
                _enforce(file_fd, file_info, *owner, mode)
            return FileEdit(path, before, after, changed=after != before)
        if mode is None:  # kept as found (existing is not None here: a missing file is never created then)
            owner, mode = (file_info.st_uid, file_info.st_gid), stat.S_IMODE(file_info.st_mode)
        temp_name = f".{filename}.p0tmp.{secrets.token_hex(8)}"
        _replace(dir_fd, filename, after, shown_dir=shown_dir, temp_name=temp_name, owner=owner, mode=mode)
    return FileEdit(path, before, after, changed=True)
