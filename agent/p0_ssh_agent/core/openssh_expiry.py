"""OpenSSH's `expiry-time=` option, pure: which form a given sshd version reads, and the stamps for a grant.

sshd(8) reads `expiry-time="timespec"` in authorized_keys since OpenSSH 7.7, and a trailing Z (UTC) since 9.1. On
9.1 and later we write UTC; on 7.7 - 9.0 the same instant in the system time zone, which is how those versions
read a stamp without Z; older or unknown versions get no option (the agent's sweep alone expires the grant).

Arithmetic only: the local version is probed by host/openssh.py (`sshd -V`, else `ssh -V`), which hands the
support it found to grant_stamp. Used by provisioning/authorized_keys.py (through host/openssh.py) when it writes a
line, and by provisioning/reconcile.py and provisioning/expiry.py to read one.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Literal

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
    """The expiry-time= form a version reads: "utc" (9.1+), "local" (7.7 - 9.0) or "none"."""
    if version is None or version < EXPIRY_OPTION_SINCE:
        return "none"
    return "utc" if version >= EXPIRY_UTC_SINCE else "local"


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


def grant_stamp(granted_at: str, max_grant_seconds: int | None, support: ExpirySupport) -> str | None:
    """The expiry-time= value for a line granted at `granted_at` under maxGrantSeconds (None: no option)."""
    if max_grant_seconds is None:
        return None
    return expiry_stamp(expires_at(granted_at, max_grant_seconds), support)
