"""Root-owned files (under /etc, the state directory): read, replace atomically, preview, remove.

The same walk and checks as a user's file (host/safefile.py): the directory opened with O_NOFOLLOW|O_DIRECTORY
and checked root-owned and not group/world-writable, the file a root-owned regular file with one link, written
through a temp file, fsync, rename and a directory fsync, so sudo and sshd see the old file or the new one.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable, Iterator

from p0_ssh_agent.host import crashpoints, selinux
from p0_ssh_agent.host.plainfile import MAX_FILE_BYTES
from p0_ssh_agent.host.safefile import (
    FileEdit,
    FileEditFailed,
    _check_component,
    _check_dir,
    _enforce,
    _open_dir,
    _read_regular,
    _replace,
)

DIR_MODE = 0o700  # what root_dir(create=True) makes a missing directory with


@contextlib.contextmanager
def root_dir(path: str, *, create: bool = False, mode: int = DIR_MODE) -> Iterator[int | None]:
    """A checked fd for the root-owned directory `path` (absolute), or None if it does not exist and not `create`.

    create: a missing last component is made (`mode`, whatever the umask) and its parent fsync-ed; the parent must
    exist."""
    if not path.startswith("/"):
        raise ValueError(f"root directories are addressed by absolute path, got {path!r}")
    fd = _open_dir(path, path)
    if fd is None and create:
        parent, name = os.path.split(path.rstrip("/"))
        with root_dir(parent) as parent_fd:
            if parent_fd is None:
                raise FileEditFailed(f"cannot create {path}: the directory {parent} does not exist")
            try:
                crashpoints.step(f"mkdir {path}")
                os.mkdir(name, mode, dir_fd=parent_fd)
                if mode & ~DIR_MODE:  # bits the agent's umask (0077) took from mkdir's mode
                    os.chmod(name, mode, dir_fd=parent_fd)
            except FileExistsError:
                pass  # made meanwhile by another writer: opened and checked like any existing one
            except OSError as exc:
                raise FileEditFailed(f"cannot create {path}: {exc.strerror}") from None
            else:
                crashpoints.step(f"fsync {parent}")
                os.fsync(parent_fd)  # the new directory's name is durable before anything is written in it
        fd = _open_dir(path, path)
    if fd is None:
        yield None
        return
    try:
        _check_dir(fd, path, (0,))
        yield fd
    finally:
        os.close(fd)


def read_in_dir(dir_fd: int, shown_dir: str, name: str, max_bytes: int = MAX_FILE_BYTES) -> bytes | None:
    """The content of root-owned regular file `name` in the directory, at most max_bytes; None if missing."""
    found = _read_regular(dir_fd, name, f"{shown_dir}/{name}", (0,), max_bytes)
    if found is None:
        return None
    os.close(found[0])
    return found[2]


def _open_root_dir(path: str) -> tuple[int, str, str]:
    if not path.startswith("/"):
        raise ValueError(f"root files are addressed by absolute path, got {path!r}")
    directory, name = os.path.split(path)
    _check_component(name, "file name")
    dir_fd = _open_dir(directory, directory)
    if dir_fd is None:
        raise FileEditFailed(f"cannot edit {path}: the directory {directory} does not exist")
    try:
        _check_dir(dir_fd, directory, (0,))
    except BaseException:
        os.close(dir_fd)
        raise
    return dir_fd, directory, name


def read_root_file(path: str, *, max_bytes: int = MAX_FILE_BYTES) -> bytes | None:
    """The content of a root-owned file, checked like write_root_file's target; None if it does not exist."""
    dir_fd, directory, name = _open_root_dir(path)
    try:
        return read_in_dir(dir_fd, directory, name, max_bytes)
    finally:
        os.close(dir_fd)


def write_root_file(
    path: str,
    data: bytes,
    *,
    mode: int,
    validate: Callable[[str], None] | None = None,
    max_bytes: int = MAX_FILE_BYTES,
) -> FileEdit:
    """Replace a root-owned file (e.g. under /etc) with `data`, mode `mode`, owner 0:0.

    The temp file is `.<name>.tmp.<random>` in the same directory: its name has a '.', so sudo's #includedir skips
    it while it exists. validate(temp path) runs before the rename; if it raises, the target is untouched and the
    temp file is removed. The directory must be root-owned and not group/world-writable; an existing target must
    be a root-owned regular file with a single link.
    """
    dir_fd, directory, name = _open_root_dir(path)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(os.close, dir_fd)
        existing = _read_regular(dir_fd, name, path, (0,), max_bytes)
        before = None
        if existing is not None:
            file_fd, file_info, before = existing
            cleanup.callback(os.close, file_fd)
        changed = data != before
        if not changed:
            _enforce(file_fd, file_info, 0, 0, mode)
            return FileEdit(path, before, data, changed=False)
        temp_name = f".{name}.tmp.{secrets.token_hex(8)}"
        _replace(
            dir_fd, name, data, shown_dir=directory, temp_name=temp_name, owner=(0, 0), mode=mode, validate=validate
        )
    selinux.restorecon([path])
    return FileEdit(path, before, data, changed=True)


def preview_root_file(path: str, data: bytes, *, max_bytes: int = MAX_FILE_BYTES) -> FileEdit:
    """What write_root_file(path, data) would do, through the same checks of the directory and the target."""
    before = read_root_file(path, max_bytes=max_bytes)
    return FileEdit(path, before, data, changed=data != before)


def preview_root_removal(path: str) -> FileEdit:
    """What remove_root_file(path) would do, through the same checks."""
    before = read_root_file(path)
    return FileEdit(path, before, None, changed=before is not None)


def remove_root_file(path: str) -> FileEdit:
    """Delete a root-owned regular file (checked like write_root_file's target); a missing file is no change."""
    dir_fd, _directory, name = _open_root_dir(path)
    with contextlib.ExitStack() as cleanup:
        cleanup.callback(os.close, dir_fd)
        existing = _read_regular(dir_fd, name, path, (0,))
        if existing is None:
            return FileEdit(path, None, None, changed=False)
        file_fd, _info, before = existing
        cleanup.callback(os.close, file_fd)
        unlink_in_dir(dir_fd, _directory, name)
    return FileEdit(path, before, None, changed=True)


def unlink_in_dir(dir_fd: int, shown_dir: str, name: str) -> None:
    """Unlink `name` in the directory and fsync the directory, so the removal is durable (FileEditFailed)."""
    try:
        crashpoints.step(f"unlink {shown_dir}/{name}")
        os.unlink(name, dir_fd=dir_fd)
        crashpoints.step(f"fsync {shown_dir}")
        os.fsync(dir_fd)
    except OSError as exc:
        raise FileEditFailed(f"cannot remove {shown_dir}/{name}: {exc.strerror}") from None
