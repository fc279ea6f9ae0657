"""Changes to local accounts with shadow-utils: create, lock, unlock and delete JIT users (host/accounts.py holds
the lookups, the rules and UID allocation they rely on).

Every change goes through the shadow tools by absolute path (no shell, no sudo), and a user is only reported as
created once NSS shows it with the expected UID. A failed `useradd` is rolled back (no orphan group, no
half-created user); the group an interrupted creation left (GID = UID, no member: the agent was killed between
groupadd and useradd) is joined by the retry, or removed by a revoke, and any other group of the name is refused;
the password field is "*"; `usermod -L -e 1` locks and expires; `userdel -r` exit 8 ("still logged in") is UserBusy
so the caller retries. The planned_* functions return the argv lists a change would run, for a dry run's
description, without running anything.
"""

from __future__ import annotations

import contextlib
import grp
import os
import time
from collections.abc import Callable, Collection
from pathlib import Path

from p0_ssh_agent.errors import AgentError, DataError
from p0_ssh_agent.host import crashpoints, proc
from p0_ssh_agent.host.accounts import (
    DEFAULT_SHELL,
    EXIT_ID_IN_USE,
    EXIT_NAME_IN_USE,
    EXIT_NO_SUCH_USER,
    EXIT_USER_LOGGED_IN,
    HOME_MODE,
    HOME_ROOT,
    NO_PASSWORD_FIELD,
    TOOL_TIMEOUT,
    AccountConflict,
    AccountRefused,
    UserBusy,
    UserMissing,
    UserRecord,
    _check_name,
    _gid_taken,
    _group_exists,
    _uid_taken,
    check_new_account_name,
    lookup_group,
    lookup_user,
    manage_refusal,
    user_exists_in_nss,
)


def _tool(name: str) -> str:
    path = proc.which(name, (f"/usr/sbin/{name}", f"/sbin/{name}"))
    if path is None:
        raise AgentError(f"{name} was not found in /usr/sbin or /sbin: install shadow-utils (Debian: passwd)")
    return path


def _planned_tool(name: str) -> str:
    """The tool's path for a plan, even on a host that lacks it (a dry run must not fail for that)."""
    return proc.which(name, (f"/usr/sbin/{name}", f"/sbin/{name}")) or f"/usr/sbin/{name}"


def _leftover_refusal(name: str, gid: int) -> str | None:
    """Why the group called `name` is not the one an interrupted creation of the user `name` with UID `gid` left
    (GID = UID, no member, no such user yet); None when it is. Any other group of the name is someone else's."""
    if user_exists_in_nss(name):
        return f"user {name} already exists"
    group = lookup_group(name)
    if group is None:
        return f"the group {name} is gone"
    if group.gid != gid:
        return f"a group named {name} exists with GID {group.gid}, not the {gid} the agent gave the one it made"
    if group.members:
        return f"the group {name} has members ({', '.join(group.members)}); the group the agent made had none"
    return None


def _creation_conflict(name: str, uid: int, home_root: str, *, join_group: bool) -> str | None:
    if user_exists_in_nss(name):
        return f"user {name} already exists"
    if join_group:
        leftover = _leftover_refusal(name, uid)
        if leftover is not None:
            return f"{leftover}; refusing to put the new user into a group the agent did not create"
    elif _group_exists(name):
        return (
            f"a group named {name} already exists; refusing to put the new user into a group the agent did not create"
        )
    if _uid_taken(uid):
        return f"UID {uid} is already in use"
    if not join_group and _gid_taken(uid):  # joined: the GID is that group's
        return f"GID {uid} is already in use (the new user's group gets GID = UID)"
    home = Path(home_root) / name
    if home.exists() or home.is_symlink():
        return f"{home} already exists; refusing to give a new user the files (and keys) left there; move it away"
    return None


def invalidate_caches() -> list[list[str]]:
    """Flush nscd's passwd/group caches (if nscd runs) and sssd's (if installed); returns what it ran.

    Failures are ignored: a cache that cannot be flushed expires on its own, and the NSS check after a change
    catches a stale answer.
    """
    ran: list[list[str]] = []
    nscd = proc.which("nscd", ("/usr/sbin/nscd", "/sbin/nscd"))
    if nscd is not None and any(Path(p).exists() for p in ("/run/nscd/socket", "/var/run/nscd/socket")):
        ran += [[nscd, "-i", "passwd"], [nscd, "-i", "group"]]
    sss_cache = proc.which("sss_cache", ("/usr/sbin/sss_cache", "/sbin/sss_cache"))
    if sss_cache is not None:
        ran.append([sss_cache, "-E"])
    for argv in ran:
        proc.run(argv, timeout=30, check=False)
    return ran


def _rollback(name: str, uid: int) -> None:
    """Undo a failed creation: remove the half-made user (only if it has our UID), then our group if left."""
    invalidate_caches()
    record = lookup_user(name)
    if record is not None and record.uid == uid:
        proc.run([_tool("userdel"), "-r", name], timeout=TOOL_TIMEOUT, check=False)
    with contextlib.suppress(KeyError):
        if grp.getgrnam(name).gr_gid == uid:  # userdel usually removes it already (USERGROUPS_ENAB)
            proc.run([_tool("groupdel"), name], timeout=TOOL_TIMEOUT, check=False)
    invalidate_caches()
    left = [what for what, present in (("user", user_exists_in_nss(name)), ("group", _group_exists(name))) if present]
    if left:
        raise AgentError(
            f"creating user {name} failed and the rollback left the {' and '.join(left)} {name} behind: "
            f"remove it by hand (userdel -r {name}; groupdel {name})"
        )


def _secure_home(record: UserRecord) -> None:
    """chmod 0700 the new home (Debian's useradd makes it 0755), through an fd opened without following links."""
    fd = os.open(record.home, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        if os.fstat(fd).st_uid == record.uid:
            crashpoints.step(f"fchmod {record.home}")
            os.fchmod(fd, HOME_MODE)
    finally:
        os.close(fd)


def _creation_argvs(
    name: str, uid: int, shell: str, home_root: str, tool: Callable[[str], str], *, leftover_group: bool
) -> list[list[str]]:
    """The commands that create `name`, after every check they need (conflicts, the name, the shell).
    leftover_group: the ledger holds this creation's intent (name and UID) and the group a killed creation made may
    be there: if a group of the name is, it is joined (no groupadd) when it is that group, refused otherwise."""
    _check_name(name)
    if not Path(shell).is_absolute():
        raise DataError(f"shell {shell!r} must be an absolute path")
    join_group = leftover_group and _group_exists(name)
    argvs = [] if join_group else [[tool("groupadd"), "-g", str(uid), name]]
    argvs.append([tool("useradd"), "-m", "-u", str(uid), "-g", str(uid), "-s", shell, "-p", NO_PASSWORD_FIELD, name])
    conflict = _creation_conflict(name, uid, home_root, join_group=join_group)
    if conflict is not None:
        raise AccountConflict(f"cannot create user {name}: {conflict}")
    check_new_account_name(name)  # after the conflicts: "user root already exists" says more than "reserved"
    return argvs


def planned_create_user(
    name: str, *, uid: int, shell: str = DEFAULT_SHELL, home_root: str = HOME_ROOT, leftover_group: bool = False
) -> list[list[str]]:
    """The commands create_user would run, through the same checks (a dry run): nothing is created."""
    return _creation_argvs(name, uid, shell, home_root, _planned_tool, leftover_group=leftover_group)


def create_user(
    name: str, *, uid: int, shell: str = DEFAULT_SHELL, home_root: str = HOME_ROOT, leftover_group: bool = False
) -> tuple[UserRecord, list[list[str]]]:
    """Create `name` with UID = GID = `uid`, its own group, a home, `shell` and password "*".

    Returns the record as NSS shows it and the commands run. Refuses (AccountConflict) when the name, UID, GID,
    group name or home is taken, and (AccountRefused) a name a new account may not have; rolls back a failed
    useradd. leftover_group (the retry of a creation the ledger holds the intent of): the group this creation's
    groupadd made, if there (GID = `uid`, no member), is the new user's; checked here again, at the effect.
    """
    argvs = _creation_argvs(name, uid, shell, home_root, _tool, leftover_group=leftover_group)
    *groupadd, useradd = argvs
    for argv in groupadd:
        try:
            proc.run(argv, timeout=TOOL_TIMEOUT)
        except proc.CommandFailed as exc:
            if exc.result.returncode in (EXIT_NAME_IN_USE, EXIT_ID_IN_USE):  # lost a race with another writer
                raise AccountConflict(f"cannot create user {name}: {exc}") from exc
            raise
    try:
        proc.run(useradd, timeout=TOOL_TIMEOUT)
    except proc.CommandFailed:
        _rollback(name, uid)
        raise
    invalidate_caches()
    record = lookup_user(name)
    if record is None or (record.uid, record.gid) != (uid, uid):
        _rollback(name, uid)
        raise AgentError(
            f"useradd reported success but NSS does not show {name} with UID/GID {uid} (found {record}); "
            "check /etc/nsswitch.conf (passwd: files ...) and name-service caches; the user was removed again"
        )
    _secure_home(record)
    return record, argvs


def _leftover_group_there(name: str, gid: int) -> bool:
    """Whether the group an interrupted creation left is there to remove; AccountConflict if the group of that name
    is another one (see _leftover_refusal)."""
    _check_name(name)
    if not _group_exists(name) and not user_exists_in_nss(name):
        return False
    refusal = _leftover_refusal(name, gid)
    if refusal is not None:
        raise AccountConflict(f"refusing to remove the group {name}: {refusal}")
    return True


def planned_delete_leftover_group(name: str, *, gid: int) -> list[list[str]]:
    """What delete_leftover_group would run, through the same checks (a dry run)."""
    return [[_planned_tool("groupdel"), name]] if _leftover_group_there(name, gid) else []


def delete_leftover_group(name: str, *, gid: int) -> list[list[str]]:
    """groupdel the group a creation killed between groupadd and useradd left: only that group (GID = `gid`, no
    member, no user of the name), checked here at the effect; a group already gone is not an error."""
    if not _leftover_group_there(name, gid):
        return []
    argv = [_tool("groupdel"), name]
    proc.run(argv, timeout=TOOL_TIMEOUT)
    invalidate_caches()
    return [argv]


def _existing(name: str, adopted: Collection[str]) -> UserRecord:
    _check_name(name)
    record = lookup_user(name)
    if record is None:
        raise UserMissing(f"user {name} does not exist")
    refusal = manage_refusal(record, adopted=adopted)
    if refusal is not None:
        raise AccountRefused(refusal)
    return record


def planned_lock_user(name: str, *, adopted: Collection[str] = ()) -> list[list[str]]:
    """What lock_user would run, through the same checks (a dry run)."""
    _existing(name, adopted)
    return [[_planned_tool("usermod"), "-L", "-e", "1", name]]


def lock_user(name: str, *, adopted: Collection[str] = ()) -> list[list[str]]:
    """Lock the password and expire the account (`usermod -L -e 1`): sshd then refuses even a valid key."""
    _existing(name, adopted)
    argv = [_tool("usermod"), "-L", "-e", "1", name]
    proc.run(argv, timeout=TOOL_TIMEOUT)
    invalidate_caches()
    return [argv]


def is_locked(name: str, *, shadow: str = "/etc/shadow", today: int | None = None) -> bool:
    """Whether lock_user's marks are on the account: a "!" password or an expiry date already passed.

    An account that /etc/shadow does not list (LDAP, sssd) or a shadow file we cannot read counts as not locked:
    unlock_user would have nothing to undo there.
    """
    try:
        text = Path(shadow).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    days = int(time.time() // 86400) if today is None else today
    for line in text.splitlines():
        fields = line.split(":")
        if fields[0] != name or len(fields) < 8:
            continue
        expiry = fields[7]
        return fields[1].startswith("!") or (expiry.isdigit() and int(expiry) <= days)
    return False


def planned_unlock_user(name: str, *, adopted: Collection[str] = ()) -> list[list[str]]:
    """What unlock_user would run, through the same checks (a dry run)."""
    _existing(name, adopted)
    return [[_planned_tool("usermod"), "-U", "-e", "", name]]


def unlock_user(name: str, *, adopted: Collection[str] = ()) -> list[list[str]]:
    """Undo lock_user for a re-grant (`usermod -U -e ''`): the password field returns to "*"."""
    _existing(name, adopted)
    argv = [_tool("usermod"), "-U", "-e", "", name]
    proc.run(argv, timeout=TOOL_TIMEOUT)
    invalidate_caches()
    return [argv]


def _deletable(name: str, adopted: Collection[str]) -> bool:
    """Whether there is an account to delete (a user already gone is not an error); AccountRefused if not ours."""
    _check_name(name)
    record = lookup_user(name)
    if record is None:
        return False
    refusal = manage_refusal(record, adopted=adopted)
    if refusal is not None:
        raise AccountRefused(refusal)
    return True


def planned_delete_user(name: str, *, adopted: Collection[str] = ()) -> list[list[str]]:
    """What delete_user would run, through the same checks (a dry run)."""
    return [[_planned_tool("userdel"), "-r", name]] if _deletable(name, adopted) else []


def delete_user(name: str, *, adopted: Collection[str] = ()) -> list[list[str]]:
    """Delete the user, its home and mail spool (`userdel -r`). A user that is already gone is not an error.

    Raises UserBusy when userdel reports the user still logged in (exit 8): end its sessions, retry later.
    """
    argv = [_tool("userdel"), "-r", name]
    if not _deletable(name, adopted):
        return []
    result = proc.run(argv, timeout=TOOL_TIMEOUT, check=False)
    invalidate_caches()
    if result.returncode == EXIT_USER_LOGGED_IN:
        raise UserBusy(f"user {name} is still logged in; end its sessions and delete it again later")
    if result.returncode not in (0, EXIT_NO_SUCH_USER):
        raise proc.CommandFailed(result)
    return [argv]
