"""Local accounts: look up, judge, allocate a UID (the changes themselves, useradd and co.: host/account_changes.py).

Every change goes through the shadow tools by absolute path (no shell, no sudo), and every answer comes from NSS
(`pwd`/`grp`), which is what sshd and sudo consult too: a user is only reported as created once NSS shows it with
the expected UID (peers.md §5 item 15). The Go agent's gaps this closes (upstream-protocol.md §12 items 5, 20, 21):

* UIDs are checked as both UID and GID, and against the owners of existing home directories (§12 item 20);
* an existing group or home directory with the new user's name is refused, never joined or inherited (but for the
  group the agent's own creation left when killed before useradd: GID = the UID the ledger recorded, no member);
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
import functools
import grp
import itertools
import os
import pwd
from collections.abc import Callable, Collection
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.core.new_accounts import new_account_refusal
from p0_ssh_agent.core.requests import RESERVED_USER_NAMES, USER_NAME_RE, is_user_name
from p0_ssh_agent.errors import AgentError, DataError

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


@dataclass(frozen=True)
class GroupRecord:
    name: str
    gid: int
    members: tuple[str, ...]  # its member list and every account whose primary group it is, sorted


def lookup_group(name: str) -> GroupRecord | None:
    """The group as NSS reports it, with every member it has (listed, or by primary GID), or None.

    The primary members need the whole passwd database (getpwall; an NSS source that does not enumerate shows
    none): callers ask only about a group left without its account (an interrupted creation's)."""
    try:
        entry = grp.getgrnam(name)
    except KeyError:
        return None
    primary = {user.pw_name for user in pwd.getpwall() if user.pw_gid == entry.gr_gid}
    return GroupRecord(entry.gr_name, entry.gr_gid, tuple(sorted(set(entry.gr_mem) | primary)))


GROUP_LIST_CEILING = 65536  # NGROUPS_MAX on Linux: a larger answer is not a group list


def group_ids(user: str, gid: int) -> list[int]:
    """The user's groups as a login gets them (NSS initgroups, `gid` included): os.getgrouplist, but without the
    GIL. CPython holds the GIL through getgrouplist(3), and with `systemd` in nsswitch.conf's group line that
    call walks systemd-userdb's directories or asks its varlink service (~100 system calls): the profile of 50
    parallel key grants found a sixth of all GIL time there, every other thread waiting. ctypes releases the GIL
    around the foreign call; where libc has no getgrouplist, os.getgrouplist stands in."""
    if "\x00" in user:
        raise ValueError("embedded null character in user name")  # as os.getgrouplist; C would cut the name there
    call = _libc_getgrouplist()
    if call is None:
        return os.getgrouplist(user, gid)
    import ctypes  # noqa: PLC0415 - loaded by the first caller, not by the idle daemon

    wanted = 64
    while True:
        found = (ctypes.c_uint32 * wanted)()
        count = ctypes.c_int(wanted)
        if call(user.encode(), gid, found, ctypes.byref(count)) >= 0:
            return list(found[: count.value])
        if count.value <= wanted:
            wanted *= 2  # an implementation that does not say how many it needs
        else:
            wanted = count.value
        if wanted > GROUP_LIST_CEILING:
            raise OSError(f"getgrouplist({user!r}) asks room for {wanted} groups, over {GROUP_LIST_CEILING}")


def group_names_by_id(user: str, gid: int) -> dict[int, str | None]:
    """The user's groups by GID, the primary `gid` first, then in group_ids' order, each with its NSS name (None:
    a GID without one). An account whose group list cannot be read (OSError) is judged on its primary group."""
    try:
        gids = group_ids(user, gid)
    except OSError:
        gids = [gid]
    names: dict[int, str | None] = {}
    for number in (gid, *gids):
        if number not in names:
            try:
                names[number] = grp.getgrgid(number).gr_name
            except KeyError:
                names[number] = None
    return names


@functools.cache
def _libc_getgrouplist() -> Callable[..., int] | None:
    import ctypes  # noqa: PLC0415 - see group_ids

    try:
        call = ctypes.CDLL(None).getgrouplist
    except (OSError, AttributeError):
        return None
    call.argtypes = [ctypes.c_char_p, ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32), ctypes.POINTER(ctypes.c_int)]
    call.restype = ctypes.c_int
    return call


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
    """UID_MIN from login.defs (the first UID of ordinary users), or 1000 when it is missing or unreadable.

    Asked twice per request (its facts, then their check under the lock), so the value is kept per path with the
    file's identity (device, inode, size, mtime, ctime): a stat instead of reading and splitting ~300 lines, and
    an edit (in place or by rename) is read at once (but one in place, of the same size, within one timestamp
    tick of the previous read: the change a stat cannot see, as for the ledger's version)."""
    try:
        found = Path(login_defs).stat()
    except OSError:
        return DEFAULT_UID_MIN
    identity = (found.st_dev, found.st_ino, found.st_size, found.st_mtime_ns, found.st_ctime_ns)
    cached = _UID_MIN_CACHE.get(login_defs)
    if cached is not None and cached[0] == identity:
        return cached[1]
    try:
        text = Path(login_defs).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return DEFAULT_UID_MIN
    value = _parse_uid_min(text)
    _UID_MIN_CACHE[login_defs] = (identity, value)
    return value


# path -> (the file's identity when read, its UID_MIN): uid_min's cache (a dict: its updates need no lock).
_UID_MIN_CACHE: dict[str, tuple[tuple[int, int, int, int, int], int]] = {}


def _parse_uid_min(text: str) -> int:
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
