"""Local accounts: look up, allocate a UID, create, lock, unlock and delete JIT users with shadow-utils.

Every change goes through the shadow tools by absolute path (no shell, no sudo), and every answer comes from NSS
(`pwd`/`grp`), which is what sshd and sudo consult too: a user is only reported as created once NSS shows it with
the expected UID (peers.md §5 item 15). The Go agent's gaps this closes (upstream-protocol.md §12 items 5, 20, 21):

* UIDs are checked as both UID and GID, and against the owners of existing home directories (§12 item 20);
* an existing group or home directory with the new user's name is refused, never joined or inherited;
* a failed `useradd` is rolled back: no orphan group, no half-created user;
* the password field is "*": key logins work even with `UsePAM no`, and no password ever does
  (test-harness.md §3: useradd's default "!" makes sshd refuse the key);
* root, accounts below UID_MIN and reserved system names are refused unless explicitly adopted (§12 item 5);
* users can be locked and expired (`usermod -L -e 1`) and deleted (`userdel -r`, with exit 8 "still logged in"
  surfaced as UserBusy so the caller retries later) (§12 item 21, peers.md §5 item 8).

Callers hold the agent's global account lock around allocate_uid + create_user: the UID check and useradd are not
atomic against another writer of /etc/passwd.

    AgentError
    ├── AccountConflict     the name, UID, GID or home directory is already taken
    ├── AccountRefused      the account is root, a system account or reserved, and not adopted
    ├── UidRangeExhausted   no UID in the range is free as both UID and GID
    ├── UserBusy            userdel: the user is still logged in (retry after ending its sessions)
    └── UserMissing         the user does not exist
    (proc.CommandFailed for any other tool failure)
"""

from __future__ import annotations

import contextlib
import grp
import itertools
import os
import pwd
import time
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.core.new_accounts import new_account_refusal
from p0_ssh_agent.core.requests import RESERVED_USER_NAMES, USER_NAME_RE, is_user_name
from p0_ssh_agent.errors import AgentError, DataError
from p0_ssh_agent.host import proc

DEFAULT_UID_MIN = 1000
JIT_UID_LOW = 65536
JIT_UID_HIGH = 90000
NOBODY_UID = 65534
HOME_ROOT = "/home"
DEFAULT_SHELL = "/bin/bash"
# Not a valid hash: no password matches it, yet sshd does not treat the account as locked.
NO_PASSWORD_FIELD = "*"  # noqa: S105 - the absence of a password, not a secret
HOME_MODE = 0o700
# shadow-utils exit codes that are states, not failures (peers.md §6).
EXIT_NAME_IN_USE = 9
EXIT_ID_IN_USE = 4
EXIT_NO_SUCH_USER = 6
EXIT_USER_LOGGED_IN = 8
TOOL_TIMEOUT = 120.0


class AccountConflict(AgentError):
    """A name, UID, GID or home directory the new account needs is already taken."""


class AccountRefused(AgentError):
    """The account is not one the agent may manage (root, a system account, a reserved name)."""


class UidRangeExhausted(AgentError):
    """No UID in the allocation range is free as both UID and GID."""


class UserBusy(AgentError):
    """userdel refused because the user is still logged in; end its sessions and retry later."""


class UserMissing(AgentError):
    """The user does not exist (in NSS)."""


@dataclass(frozen=True)
class UserRecord:
    name: str
    uid: int
    gid: int
    home: str
    shell: str


def _record(entry: pwd.struct_passwd) -> UserRecord:
    return UserRecord(entry.pw_name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell)


def lookup_user(name: str) -> UserRecord | None:
    """The user as NSS reports it (files, sssd, LDAP: whatever sshd sees), or None."""
    try:
        return _record(pwd.getpwnam(name))
    except KeyError:
        return None


def user_exists_in_nss(name: str) -> bool:
    return lookup_user(name) is not None


def _uid_taken(uid: int) -> bool:
    try:
        pwd.getpwuid(uid)
    except KeyError:
        return False
    return True


def _gid_taken(gid: int) -> bool:
    try:
        grp.getgrgid(gid)
    except KeyError:
        return False
    return True


def _group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def uid_min(login_defs: str = "/etc/login.defs") -> int:
    """UID_MIN from login.defs (the first UID of ordinary users), or 1000 when it is missing or unreadable."""
    try:
        text = Path(login_defs).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_UID_MIN
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "UID_MIN":
            with contextlib.suppress(ValueError):
                return int(fields[1], 10)
    return DEFAULT_UID_MIN


def manage_refusal(record: UserRecord, *, min_uid: int | None = None, adopted: Collection[str] = ()) -> str | None:
    """Why the agent must not manage `record`, or None if it may.

    Root is never managed. System accounts (UID below UID_MIN, nobody, the reserved names) are refused unless the
    operator listed them in `adopted`.
    """
    if record.uid == 0:
        return f"refusing to manage {record.name}: UID 0 is root"
    if record.name in adopted:
        return None
    floor = uid_min() if min_uid is None else min_uid
    if record.uid < floor:
        return (
            f"refusing to manage {record.name}: UID {record.uid} is a system account (below UID_MIN {floor}); "
            "adopt it in the agent's configuration to allow this"
        )
    if record.uid == NOBODY_UID or record.name in RESERVED_USER_NAMES or record.name.startswith("systemd-"):
        return f"refusing to manage {record.name}: a reserved system account"
    return None


def _home_owners(home_root: str) -> set[int]:
    """UIDs and GIDs that own something directly under home_root: a leftover home keeps its owner's IDs busy."""
    owners: set[int] = set()
    try:
        with os.scandir(home_root) as entries:
            for entry in entries:
                with contextlib.suppress(OSError):
                    info = entry.stat(follow_symlinks=False)
                    owners.update((info.st_uid, info.st_gid))
    except OSError:
        pass
    return owners


def allocate_uid(
    low: int = JIT_UID_LOW, high: int = JIT_UID_HIGH, *, high_water: int | None, home_root: str = HOME_ROOT
) -> int:
    """The first ID after high_water (wrapping to low) that is free as UID and GID and owns no home directory.

    `high_water` is the largest ID the agent ever handed out (kept in its state), so a deleted user's UID is not
    reused while unused ones remain. Enumeration gives a fast first pass; each candidate is then confirmed with a
    direct lookup, which also covers NSS sources that do not enumerate (sssd without `enumerate`).
    """
    if not 0 < low <= high:
        raise ValueError(f"invalid UID range {low}-{high}")
    start = low if high_water is None or high_water >= high else max(low, high_water + 1)
    busy = _home_owners(home_root)
    busy.update(e.pw_uid for e in pwd.getpwall())
    busy.update(g.gr_gid for g in grp.getgrall())
    for candidate in itertools.chain(range(start, high + 1), range(low, start)):
        if candidate in busy or _uid_taken(candidate) or _gid_taken(candidate):
            continue
        return candidate
    raise UidRangeExhausted(
        f"no available UID found in range {low}-{high} (each must be free as UID and GID and own nothing in "
        f"{home_root}); delete unused JIT users or widen the range"
    )


def _tool(name: str) -> str:
    path = proc.which(name, (f"/usr/sbin/{name}", f"/sbin/{name}"))
    if path is None:
        raise AgentError(f"{name} was not found in /usr/sbin or /sbin: install shadow-utils (Debian: passwd)")
    return path


def _planned_tool(name: str) -> str:
    """The tool's path for a plan, even on a host that lacks it (a dry run must not fail for that)."""
    return proc.which(name, (f"/usr/sbin/{name}", f"/sbin/{name}")) or f"/usr/sbin/{name}"


def _check_name(name: str) -> None:
    if not is_user_name(name):
        raise DataError(f"invalid user name {name[:40]!r}: must match {USER_NAME_RE}")


def check_new_account_name(name: str) -> None:
    """AccountRefused unless the agent may create an account called `name` (core.new_accounts: no leading "_",
    no service account name). Only creation is judged so: adopted accounts keep the names they have."""
    _check_name(name)
    refusal = new_account_refusal(name)
    if refusal is not None:
        raise AccountRefused(refusal)


def _creation_conflict(name: str, uid: int, home_root: str) -> str | None:
    if user_exists_in_nss(name):
        return f"user {name} already exists"
    if _group_exists(name):
        return (
            f"a group named {name} already exists; refusing to put the new user into a group the agent did not create"
        )
    if _uid_taken(uid):
        return f"UID {uid} is already in use"
    if _gid_taken(uid):
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
            os.fchmod(fd, HOME_MODE)
    finally:
        os.close(fd)


def _creation_argvs(name: str, uid: int, shell: str, home_root: str, tool: Callable[[str], str]) -> list[list[str]]:
    """The commands that create `name`, after every check they need (conflicts, the name, the shell)."""
    _check_name(name)
    if not Path(shell).is_absolute():
        raise DataError(f"shell {shell!r} must be an absolute path")
    argvs = [
        [tool("groupadd"), "-g", str(uid), name],
        [tool("useradd"), "-m", "-u", str(uid), "-g", str(uid), "-s", shell, "-p", NO_PASSWORD_FIELD, name],
    ]
    conflict = _creation_conflict(name, uid, home_root)
    if conflict is not None:
        raise AccountConflict(f"cannot create user {name}: {conflict}")
    check_new_account_name(name)  # after the conflicts: "user root already exists" says more than "reserved"
    return argvs


def planned_create_user(
    name: str, *, uid: int, shell: str = DEFAULT_SHELL, home_root: str = HOME_ROOT
) -> list[list[str]]:
    """The commands create_user would run, through the same checks (a dry run): nothing is created."""
    return _creation_argvs(name, uid, shell, home_root, _planned_tool)


def create_user(
    name: str, *, uid: int, shell: str = DEFAULT_SHELL, home_root: str = HOME_ROOT
) -> tuple[UserRecord, list[list[str]]]:
    """Create `name` with UID = GID = `uid`, its own group, a home, `shell` and password "*".

    Returns the record as NSS shows it and the commands run. Refuses (AccountConflict) when the name, UID, GID,
    group name or home is taken, and (AccountRefused) a name a new account may not have; rolls back a failed
    useradd.
    """
    argvs = _creation_argvs(name, uid, shell, home_root, _tool)
    try:
        proc.run(argvs[0], timeout=TOOL_TIMEOUT)
    except proc.CommandFailed as exc:
        if exc.result.returncode in (EXIT_NAME_IN_USE, EXIT_ID_IN_USE):  # lost a race with another writer
            raise AccountConflict(f"cannot create user {name}: {exc}") from exc
        raise
    try:
        proc.run(argvs[1], timeout=TOOL_TIMEOUT)
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
