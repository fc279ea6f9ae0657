"""Root-only files in root-only directories, by directory fd: the ledger's grouped, atomic writes.

rootfile.write_root_file replaces one file and fsyncs its directory; a ledger commit that names fifty users
(revoke-all, reconciliation, an expiry sweep) would then pay fifty directory fsyncs. `replace_files` keeps every
guarantee and pays one: each new file is written to a temp file and fsync-ed, then every temp file is renamed
over its target, then the directory is fsync-ed once. A crash anywhere leaves each target old or new, never torn
(a rename is atomic; the temp was durable before it); which of the renames survive a crash before the directory
fsync is the file system's choice, so callers must accept any mix of old and new files (each one whole).

The rules are safefile's; the directory fd comes from host/rootfile.py root_dir and reads go through its
read_in_dir: directories owned by root, not group/world-writable, opened with O_NOFOLLOW; files root-owned regular
files with one link, read up to a limit; a symlink, hard link or foreign owner is refused with UnsafePath.
Temp files have fixed names (`.<name>.tmp`): the caller holds the lock of every file it replaces, so a temp file
by that name is a crashed writer's and is removed first; no directory scan (the users directory may hold 100,000
records). Everything here blocks.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Mapping

from p0_ssh_agent.host import crashpoints, selinux
from p0_ssh_agent.host.safefile import _DIR_FLAGS, _TEMP_FLAGS, FileEditFailed, _write_all

FILE_MODE = 0o600


def temp_name(name: str) -> str:
    return f".{name}.tmp"


def exists(dir_fd: int, name: str) -> bool:
    """Whether `name` exists in the directory (a symlink counts: it is not followed, and refused when read)."""
    try:
        os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def has_entries(path: str) -> bool:
    """Whether the directory holds anything but temp files (`path` is opened with O_NOFOLLOW, never followed)."""
    try:
        fd = os.open(path, _DIR_FLAGS)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise FileEditFailed(f"cannot open {path}: {exc.strerror}") from None
    try:
        with os.scandir(fd) as entries:
            return any(not entry.name.startswith(".") for entry in entries)
    finally:
        os.close(fd)


def replace_files(dir_fd: int, shown_dir: str, changes: Mapping[str, bytes | None]) -> None:
    """Replace (bytes) or delete (None) each named file of the directory, with one directory fsync for all.

    Each file: temp written, fchmod 0600, fchown 0:0, fsync-ed; then all are renamed (deletions unlinked); then the
    directory is fsync-ed. A failure before the renames changes nothing and removes the temp files."""
    written: list[str] = []
    try:
        for name, data in changes.items():
            if data is None:
                continue
            temp = temp_name(name)
            shown = f"{shown_dir}/{temp}"
            if exists(dir_fd, temp):  # a crashed writer's: we hold the file's lock
                crashpoints.step(f"unlink {shown}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(temp, dir_fd=dir_fd)
            crashpoints.step(f"create {shown}")
            fd = os.open(temp, _TEMP_FLAGS, FILE_MODE, dir_fd=dir_fd)
            written.append(temp)
            try:
                crashpoints.step(f"write {shown}")
                _write_all(fd, data)
                crashpoints.step(f"fchmod+fchown {shown}")
                os.fchmod(fd, FILE_MODE)
                os.fchown(fd, 0, 0)
                crashpoints.step(f"fsync {shown}")
                os.fsync(fd)
            finally:
                os.close(fd)
        for name, data in changes.items():
            if data is None:
                crashpoints.step(f"unlink {shown_dir}/{name}")
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(name, dir_fd=dir_fd)
            else:
                crashpoints.step(f"rename {shown_dir}/{temp_name(name)} -> {name}")
                os.replace(temp_name(name), name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
                written.remove(temp_name(name))
    except OSError as exc:
        raise FileEditFailed(f"cannot write {shown_dir}/{exc.filename or ''}: {exc.strerror}") from None
    finally:
        for temp in written:
            with contextlib.suppress(OSError):
                os.unlink(temp, dir_fd=dir_fd)
    crashpoints.step(f"fsync {shown_dir}")
    try:
        os.fsync(dir_fd)  # make every rename durable, once for the group
    except OSError as exc:
        raise FileEditFailed(f"cannot sync {shown_dir}: {exc.strerror}") from None
    selinux.restorecon([f"{shown_dir}/{name}" for name, data in changes.items() if data is not None])


def rename_aside(dir_fd: int, shown_dir: str, name: str, new_name: str) -> None:
    """Rename `name` to `new_name` in the directory (never over an existing file) and fsync the directory."""
    if exists(dir_fd, new_name):
        raise FileEditFailed(f"cannot rename {shown_dir}/{name}: {shown_dir}/{new_name} already exists")
    try:
        crashpoints.step(f"rename {shown_dir}/{name} -> {new_name}")
        os.rename(name, new_name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        crashpoints.step(f"fsync {shown_dir}")
        os.fsync(dir_fd)
    except OSError as exc:
        raise FileEditFailed(f"cannot rename {shown_dir}/{name}: {exc.strerror}") from None
