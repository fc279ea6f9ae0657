"""The key store's files and group (core/sshd_key_store.py has the layout and why): effects, blocking.

One file per created account, `<key_dir>/<name>`, root:<the account's group> 0640, in a root-owned 0711 directory:
read and replaced through host/safefile.py's directory-fd walk (O_NOFOLLOW, a root-owned regular file with one
link, temp file + fsync + rename + directory fsync, restorecon), so sshd sees the old file or the new one. A file
whose last line goes is removed: the store holds no empty files. The caller holds the account's lock.

Membership of KEY_STORE_GROUP is what makes sshd read the store for an account (the drop-in's Match Group):
`usermod -a -G` to join (the group made with `groupadd -r` first if missing), `gpasswd -d` to leave.
"""

from __future__ import annotations

import contextlib
import grp
import os
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path

from p0_ssh_agent.core.sshd_key_store import (
    KEY_DIR_MODE,
    KEY_FILE_MODE,
    KEY_STORE_DIR,
    KEY_STORE_GROUP,
    STATE_DIR_MODE,
)
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc, selinux
from p0_ssh_agent.host.account_changes import _planned_tool, _tool, invalidate_caches
from p0_ssh_agent.host.accounts import TOOL_TIMEOUT, _group_exists
from p0_ssh_agent.host.rootfile import root_dir, unlink_in_dir
from p0_ssh_agent.host.safefile import (
    FileEdit,
    FileEditFailed,
    _check_component,
    _enforce,
    _read_regular,
    _replace,
)

GPASSWD_CANDIDATES = ("/usr/bin/gpasswd", "/usr/sbin/gpasswd", "/bin/gpasswd", "/sbin/gpasswd")


@contextlib.contextmanager
def _store_dir(key_dir: str, *, create: bool) -> Iterator[int | None]:
    """A checked fd for the store directory (root-owned, not group/world-writable), made 0711 if missing and
    `create` (and put back to 0711: sshd, acting as the user, must pass through it); None if it is missing and not
    `create`. Its parent (the state directory) must exist."""
    missing = create and not os.path.lexists(key_dir)
    with root_dir(key_dir, create=create, mode=KEY_DIR_MODE) as fd:
        if fd is not None and create:
            _enforce(fd, os.fstat(fd), 0, 0, KEY_DIR_MODE)
            if missing:
                selinux.restorecon([key_dir])  # the label the admin's `key-store store` set up for the store
        yield fd


def prepare_store_dirs(state_dir: str, key_dir: str) -> None:
    """For `p0-ssh-agent key-store store`: the state directory and the store made 0711 and checked root-owned, not
    group/world-writable, and every directory above them traversable by all (sshd opens the file as the user)."""
    for here in Path(state_dir).parents:
        info = here.stat()
        if not info.st_mode & 0o001:
            raise FileEditFailed(
                f"{here} is mode {info.st_mode & 0o7777:04o}: sshd, reading the key store as the user, cannot pass "
                f"it; make it traversable (chmod o+x {here}) or set stateDir under a directory that is"
            )
    with root_dir(state_dir) as fd:
        if fd is None:
            raise FileEditFailed(f"the state directory {state_dir} does not exist")
        _enforce(fd, os.fstat(fd), 0, 0, STATE_DIR_MODE)
    with _store_dir(key_dir, create=True):
        pass


def read_key_file(name: str, *, key_dir: str = KEY_STORE_DIR) -> bytes | None:
    """The account's store file (None if there is none), through the same checks as an edit."""
    _check_component(name, "user name")
    with _store_dir(key_dir, create=False) as dir_fd:
        if dir_fd is None:
            return None
        found = _read_regular(dir_fd, name, f"{key_dir}/{name}", (0,))
        if found is None:
            return None
        os.close(found[0])
        return found[2]


def edit_key_file(
    name: str,
    gid: int,
    transform: Callable[[bytes], bytes],
    *,
    create: bool = True,
    write: bool = True,
    key_dir: str = KEY_STORE_DIR,
) -> FileEdit:
    """The account's store file := transform(it, or b"" if missing). create False: a missing file stays missing (a
    revoke). An empty result removes the file. write False: what it would do (a dry run), nothing changes."""
    _check_component(name, "user name")
    path = f"{key_dir.rstrip('/')}/{name}"
    with _store_dir(key_dir, create=create and write) as dir_fd:
        if dir_fd is None:
            after = transform(b"") if create else b""
            return FileEdit(path, None, after or None, changed=bool(after))
        with contextlib.ExitStack() as cleanup:
            existing = _read_regular(dir_fd, name, path, (0,))
            before = None
            if existing is not None:
                file_fd, file_info, before = existing
                cleanup.callback(os.close, file_fd)
            elif not create:
                return FileEdit(path, None, None, changed=False)
            after = transform(before or b"")
            if not after:
                if before is not None and write:
                    unlink_in_dir(dir_fd, key_dir, name)
                return FileEdit(path, before, None, changed=before is not None)
            if after == before:
                if write and existing is not None:
                    _enforce(file_fd, file_info, 0, gid, KEY_FILE_MODE)
                return FileEdit(path, before, after, changed=False)
            if write:
                temp_name = f".{name}.tmp.{secrets.token_hex(8)}"
                _replace(
                    dir_fd, name, after, shown_dir=key_dir, temp_name=temp_name, owner=(0, gid), mode=KEY_FILE_MODE
                )
    if write:
        selinux.restorecon([path])
    return FileEdit(path, before, after, changed=True)


# --- the group sshd's Match Group names ---------------------------------------------------------------------------


def in_store_group(name: str, group: str = KEY_STORE_GROUP) -> bool:
    """Whether /etc/group (NSS) lists `name` as a member of the store's group."""
    try:
        return name in grp.getgrnam(group).gr_mem
    except KeyError:
        return False


def _join_argvs(name: str, group: str, tool: Callable[[str], str]) -> list[list[str]]:
    """What makes `name` a member (the group made first, a system group, if missing); nothing if it is one."""
    if in_store_group(name, group):
        return []
    made = [] if _group_exists(group) else [[tool("groupadd"), "-r", group]]
    return [*made, [tool("usermod"), "-a", "-G", group, name]]


def planned_join(name: str, group: str = KEY_STORE_GROUP) -> list[list[str]]:
    """What join_store_group would run (a dry run)."""
    return _join_argvs(name, group, _planned_tool)


def join_store_group(name: str, group: str = KEY_STORE_GROUP) -> list[list[str]]:
    """Make `name` a member of the store's group; what it ran."""
    argvs = _join_argvs(name, group, _tool)
    for argv in argvs:
        proc.run(argv, timeout=TOOL_TIMEOUT)
    if argvs:
        invalidate_caches()
    return argvs


def planned_leave(name: str, group: str = KEY_STORE_GROUP) -> list[list[str]]:
    """What leave_store_group would run (a dry run): nothing if it is no member."""
    return [[_gpasswd() or GPASSWD_CANDIDATES[0], "-d", name, group]] if in_store_group(name, group) else []


def leave_store_group(name: str, group: str = KEY_STORE_GROUP) -> list[list[str]]:
    """Take `name` out of the store's group (sshd reads its ~/.ssh/authorized_keys again); what it ran."""
    if not in_store_group(name, group):
        return []
    tool = _gpasswd()
    if tool is None:
        where = ", ".join(GPASSWD_CANDIDATES)
        raise AgentError(f"gpasswd was not found in {where}: install shadow-utils (Debian: passwd)")
    argv = [tool, "-d", name, group]
    proc.run(argv, timeout=TOOL_TIMEOUT)
    invalidate_caches()
    return [argv]


def _gpasswd() -> str | None:
    """gpasswd lives in /usr/bin (it is setuid for group administrators), not in /usr/sbin like usermod."""
    return proc.which("gpasswd", GPASSWD_CANDIDATES)
