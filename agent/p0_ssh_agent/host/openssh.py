"""OpenSSH's `expiry-time=` option: which form the local sshd reads, and the stamps for a grant's lifetime.

sshd(8) reads `expiry-time="timespec"` in authorized_keys since OpenSSH 7.7, and a trailing Z (UTC) since 9.1. On
9.1 and later we write UTC; on 7.7 - 9.0 the same instant in the system time zone, which is how those versions
read a stamp without Z; older or unknown versions get no option (the agent's sweep alone expires the grant). The
version is read once (`sshd -V`, else `ssh -V`) and cached for the life of the process.

Used by provisioning/authorized_keys.py when it writes a line, and by provisioning/reconcile.py to check one.
"""

from __future__ import annotations

import functools
import re
from datetime import UTC, datetime, timedelta
from typing import Literal

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc

log = get_logger(__name__)

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
SSH_CANDIDATES = ("/usr/bin/ssh", "/usr/local/bin/ssh", "/bin/ssh")
EXPIRY_OPTION_SINCE = (7, 7)  # sshd(8) expiry-time= first appeared in OpenSSH 7.7
EXPIRY_UTC_SINCE = (9, 1)  # a trailing Z (UTC) in timespecs: OpenSSH 9.1
_VERSION = re.compile(r"OpenSSH_(\d+)\.(\d+)", re.ASCII)

ExpirySupport = Literal["utc", "local", "none"]


# --- the OpenSSH version ---------------------------------------------------------------------------------------


def parse_openssh_version(text: str) -> tuple[int, int] | None:
    """(major, minor) from `sshd -V` / `ssh -V` output such as "OpenSSH_9.2p1 Debian-2, OpenSSL 3.0"."""
    found = _VERSION.search(text)
    return (int(found[1]), int(found[2])) if found else None


def support_for(version: tuple[int, int] | None) -> ExpirySupport:
    if version is None or version < EXPIRY_OPTION_SINCE:
        return "none"
    return "utc" if version >= EXPIRY_UTC_SINCE else "local"


@functools.cache
def openssh_version() -> tuple[int, int] | None:
    """The local OpenSSH version, read once. sshd before 9.x has no -V, but prints its version in the usage text
    it writes for an unknown option, so stderr is read either way; ssh -V is the fallback."""
    for name, candidates in (("sshd", SSHD_CANDIDATES), ("ssh", SSH_CANDIDATES)):
        program = proc.which(name, candidates)
        if program is None:
            continue
        try:
            result = proc.run([program, "-V"], timeout=10, check=False)
        except AgentError:
            continue
        version = parse_openssh_version(result.stderr + result.stdout)
        if version is not None:
            return version
    return None


def expiry_support() -> ExpirySupport:
    support = support_for(openssh_version())
    if support == "none":
        _warn_no_expiry_option()
    return support


@functools.cache
def _warn_no_expiry_option() -> None:
    log.warning(
        "expiry_option_unsupported",
        openssh=openssh_version(),
        note="OpenSSH older than 7.7 or not found: keys are written without expiry-time=; the sweep alone expires them",
    )


# --- times -----------------------------------------------------------------------------------------------------


def parse_time(stamp: str) -> datetime:
    """A ledger time ("2026-01-02T03:04:05Z") as an aware datetime; ValueError if it is not one."""
    parsed = datetime.fromisoformat(stamp)
    if parsed.tzinfo is None:
        raise ValueError(f"time without a time zone: {stamp!r}")
    return parsed.astimezone(UTC)


def grant_time(stamp: str) -> datetime:
    """A ledger granted_at as a datetime. The ledger's reader only checks that it is a string: an unreadable time
    counts as long ago, so the grant expires at once instead of living forever."""
    try:
        return parse_time(stamp)
    except ValueError:
        return datetime.fromtimestamp(0, UTC)


def expires_at(granted_at: str, max_grant_seconds: int) -> datetime:
    return grant_time(granted_at) + timedelta(seconds=max_grant_seconds)


def expiry_stamp(when: datetime, support: ExpirySupport) -> str | None:
    """The expiry-time= value for `when` (rounded down to the second: sshd then refuses it no later than we do)."""
    if support == "none":
        return None
    if support == "utc":
        return when.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")
    return when.astimezone().strftime("%Y%m%d%H%M%S")  # the system time zone, as sshd < 9.1 reads it


def stamp_time(stamp: str) -> datetime:
    """The instant an expiry-time= stamp names (the inverse of expiry_stamp)."""
    if stamp.endswith("Z"):
        return datetime.strptime(stamp, "%Y%m%d%H%M%SZ").replace(tzinfo=UTC)
    return datetime.strptime(stamp, "%Y%m%d%H%M%S").astimezone(UTC)


def grant_stamp(granted_at: str, max_grant_seconds: int | None) -> str | None:
    """What provisioning/authorized_keys.py writes into a line granted at `granted_at` (None: no option)."""
    if max_grant_seconds is None:
        return None
    return expiry_stamp(expires_at(granted_at, max_grant_seconds), expiry_support())
