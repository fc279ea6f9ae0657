"""Which accounts an agent-access operation may run as: read_account (NSS and /etc/shadow) and refusal_for (pure).

These rules hold whatever the agent-access policy says (the gate applies them before the UCAN and the policy):
the account must be listed in agentAccessUsers, exist, and not be root, a system account, locked, or a member of
a root-equivalent group. The worker runs as the account with NoNewPrivileges=yes, so a sudo rule the account holds
(a P0 grant, say) is not usable from it; a group membership is: it needs no privilege to use. Hence the groups.
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Collection

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.agent_access.access_model import Refusal, RefusalKind, TargetAccount
from p0_ssh_agent.core.messages import token
from p0_ssh_agent.core.requests import RESERVED_USER_NAMES
from p0_ssh_agent.host.accounts import NOBODY_UID, group_names_by_id, uid_min
from p0_ssh_agent.host.plainfile import FileTooLarge, read_at_most

log = get_logger(__name__)

SHADOW = "/etc/shadow"
LOGIN_DEFS = "/etc/login.defs"
MAX_SHADOW_BYTES = 16 * 1024 * 1024  # ~100,000 accounts; a bigger file is treated as unreadable, never cut
SECONDS_PER_DAY = 86400
# A login shell that refuses every login: the administrator locked the account (or it is a service's).
NOLOGIN_SHELLS = frozenset({"nologin", "false"})

# A member of one of these groups can become root, or read what root guards, without any privilege of its own.
ROOT_EQUIVALENT_GROUPS: dict[str, str] = {
    "root": "GID 0 owns root's files and directories; group-writable ones are root's to change",
    "sudo": "sudo rules name it (Debian, Ubuntu): sudo to root",
    "wheel": "sudo rules and su's pam_wheel name it (RHEL, Fedora, SUSE): sudo or su to root",
    "admin": "Ubuntu's sudo group before 12.04; old sudoers still grant it root",
    "adm": "reads every log in /var/log: logs carry secrets and tokens (the issue names it)",
    "staff": "Debian: writes /usr/local, whose bin/ comes before /usr/bin in root's PATH",
    "docker": "the Docker socket runs a privileged container that mounts /",
    "lxd": "the LXD socket runs a privileged container that mounts /",
    "incus-admin": "Incus's full-access socket, like lxd ('incus' alone is confined to its projects: not listed)",
    "microk8s": "the MicroK8s cluster admin: a privileged pod mounts /",
    "disk": "raw block devices: read or write any file system beneath its permissions",
    "shadow": "reads /etc/shadow: every password hash",
    "kmem": "/dev/mem, /dev/kmem and /dev/port: the kernel's memory",
    "libvirt": "libvirtd's socket: a guest given the host's disk, or a hook run as root",
    "systemd-journal": "reads every journal, as adm reads /var/log",
}


def read_account(name: str, *, shadow: str = SHADOW, login_defs: str = LOGIN_DEFS) -> TargetAccount | None:
    """The account `name` as NSS and shadow describe it now, or None when NSS has no such account."""
    try:
        entry = pwd.getpwnam(name)
    except (KeyError, ValueError):  # ValueError: a NUL in the name
        return None
    return TargetAccount(
        name=entry.pw_name,
        uid=entry.pw_uid,
        gid=entry.pw_gid,
        home=entry.pw_dir,
        shell=entry.pw_shell,
        groups=_group_names(entry.pw_name, entry.pw_gid),
        locked=_expired(entry.pw_name, shadow) or entry.pw_shell.rsplit("/", 1)[-1] in NOLOGIN_SHELLS,
        system=(
            entry.pw_uid < uid_min(login_defs)
            or entry.pw_uid == NOBODY_UID
            or entry.pw_name in RESERVED_USER_NAMES
            or entry.pw_name.startswith("systemd-")
        ),
    )


def refusal_for(account: TargetAccount | None, *, name: str, listed: Collection[str]) -> Refusal | None:
    """Why agent access may not run as `name` (the account read_account found, or None), or None if it may."""
    shown = token(name)
    if name not in listed:
        return Refusal(RefusalKind.DISABLED, f"agent access is not enabled for {shown}: not in agentAccessUsers")
    if account is None:
        return Refusal(RefusalKind.ACCOUNT, f"account {shown} does not exist on this host")
    if account.uid == 0 or name == "root":
        return Refusal(RefusalKind.ACCOUNT, f"account {shown} is root: agent access never runs as root")
    if account.system:
        return Refusal(
            RefusalKind.ACCOUNT,
            f"account {shown} is a system account (UID {account.uid}: below UID_MIN, nobody or a reserved name)",
        )
    if account.locked:
        return Refusal(RefusalKind.ACCOUNT, f"account {shown} is locked (expired, or its shell refuses logins)")
    equivalent = sorted(set(account.groups) & ROOT_EQUIVALENT_GROUPS.keys())
    if equivalent:
        return Refusal(
            RefusalKind.ACCOUNT,
            f"account {shown} is in a root-equivalent group: {', '.join(equivalent)} "
            f"({ROOT_EQUIVALENT_GROUPS[equivalent[0]]})",
        )
    return None


def _group_names(name: str, gid: int) -> tuple[str, ...]:
    """Every group the account is in (NSS's initgroups: what a login, and systemd's User=, would get), its primary
    group first, by name (a GID without a name as its number)."""
    names: list[str] = []
    for number, group_name in group_names_by_id(name, gid).items():
        shown = group_name if group_name is not None else str(number)
        if shown not in names:
            names.append(shown)
    return tuple(names)


def _expired(name: str, shadow: str) -> bool:
    """Whether shadow's account expiry (its 8th field, days since 1970) has passed, as shadow-utils' isexpired
    judges it: a value above 0 that today has reached. Only the expiry counts: a "!" or "*" password field is not
    a lock here, since key-only accounts have one (useradd leaves "!", the agent writes "*"), and password ageing
    concerns passwords, which agent access never uses.

    The file is read whole and bounded. If it cannot be read the account is taken as not expired (a nologin
    shell still locks it), and the log says so: refusing every account would turn a permissions slip into an
    outage of the feature, and the other rules (the UCAN, the policy, the list of accounts) still hold."""
    try:
        fd = os.open(shadow, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        try:
            data = read_at_most(fd, MAX_SHADOW_BYTES, shadow)
        finally:
            os.close(fd)
    except (OSError, FileTooLarge) as exc:
        log.warning("shadow_unreadable", path=shadow, user=name, error=str(exc), treated_as="not expired")
        return False
    prefix = name.encode() + b":"
    for line in data.splitlines():
        if line.startswith(prefix):
            fields = line.split(b":")
            expire = fields[7] if len(fields) > 7 else b""
            if not expire.isdigit():
                return False  # empty: never expires
            return int(expire) > 0 and int(time.time()) // SECONDS_PER_DAY >= int(expire)
    return False  # not in /etc/shadow (an account from LDAP or sssd): its expiry is its directory's to enforce
