"""End every session and process of a user (`provisionSession` revoke, upstream-protocol.md §6.5).

The Go agent ran `systemctl kill user-<name>.slice` (logind names slices by UID, so this missed) and then
`pkill -u` (§12 item 14). Here:

1. If logind runs (systemd booted and `loginctl` installed): `loginctl terminate-user <uid>`, which ends the
   user's sessions and user manager the way logind tracks them. An extra, never the basis: a cron or at job, or a
   daemon's child running as the user, is outside the user's slice.
2. SIGTERM to every process of the user that a /proc scan finds, and up to `grace_seconds` to exit.
3. SIGKILL rounds until a scan finds nothing, for at most `kill_seconds`: each round sends SIGKILL through a pidfd
   to what the scan sees, and then kill(-1, SIGKILL) from a child that has become the user (host.uidkill). The
   second is what a fork chain cannot outrun (issue 11 item 5): a process that forks and exits faster than a
   scan reads /proc is never where the scan saw it, but kill(-1) is atomic against fork. The first reaches what
   kill(-1) as the user may not: a process holding the user's UID only in its effective or filesystem slot.

The result says what is left: `survivors` are the PIDs a scan still found at the deadline. A revoke that leaves any,
or that could not send kill(-1) as the user at all (no CAP_SETUID), is not a success, because a scan alone cannot
see a fork chain.

"A process of the user" is a live process whose real or saved UID is the user's (what the user may signal itself,
and what `userdel` calls busy), or that has the user's UID in any slot and root's in none. PID 1 and this process
are never signalled; a root process that only borrows the user's effective UID (ruid and suid 0) is not the
user's. Signals sent by root go through a pidfd opened before the process is checked a second time, so a PID
reused between the scan and the signal is never hit. UIDs below 1000 and "nobody" are refused outright, because
ending every process of a system account takes a service down.

Synchronous (it sleeps while waiting): async callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from p0_ssh_agent.core import messages
from p0_ssh_agent.errors import PermissionProblem
from p0_ssh_agent.host import crashpoints, proc, uidkill

MIN_UID = 1000
NOBODY_UID = 65534
POLL_SECONDS = 0.05
GRACE_SECONDS = 2.0
KILL_SECONDS = 5.0  # SIGKILL rounds end within this; what is left then is reported, not waited for
SETTLE_SECONDS = 0.2  # a round's wait for killed processes to finish exiting before the next round
LOGINCTL_CANDIDATES = ("/usr/bin/loginctl", "/bin/loginctl")
SYSTEMCTL_CANDIDATES = ("/usr/bin/systemctl", "/bin/systemctl")
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")  # exists only when systemd is PID 1 (sd_booted)


@dataclass(frozen=True)
class SessionResult:
    method: str  # "loginctl" or "signals"
    found: int  # processes of the user when we started
    survivors: tuple[int, ...]  # processes of the user a scan still found when we finished
    message: str  # the answer: upstream's success message, or what is left and why
    unkillable: str | None = None  # why kill(-1) could not be sent as the user, if it could not

    @property
    def remaining(self) -> int:
        return len(self.survivors)

    @property
    def ended(self) -> bool:
        """Whether the user's processes are provably gone: nothing left, and kill(-1) was sent as the user."""
        return not self.survivors and self.unkillable is None


class ProcessTable(Protocol):
    """What ending a user's processes needs from the host (a protocol so the deadline path can be tested)."""

    def pids(self, uid: int) -> list[int]:
        """The processes of the user now (see the module docstring)."""
        ...

    def signal(self, pid: int, uid: int, sig: signal.Signals) -> bool:
        """Send sig to pid if it is still a process of uid; whether it was sent."""
        ...

    def kill_all_as(self, uid: int) -> str | None:
        """kill(-1, SIGKILL) as the user; None when sent, else why not."""
        ...


def parse_status(text: str) -> tuple[str, tuple[int, ...]]:
    """(state letter, UIDs real/effective/saved/fs) from the text of /proc/<pid>/status."""
    state = ""
    uids: tuple[int, ...] = ()
    for line in text.splitlines():
        if line.startswith("State:"):
            state = line.split()[1] if len(line.split()) > 1 else ""
        elif line.startswith("Uid:"):
            uids = tuple(int(field) for field in line.split()[1:])
    return state, uids


def _status(pid: int, proc_root: Path) -> tuple[str, tuple[int, ...]] | None:
    try:
        return parse_status((proc_root / str(pid) / "status").read_text(encoding="ascii", errors="replace"))
    except (OSError, ValueError):
        return None  # gone already, or unreadable: nothing we can (or need to) signal


def is_users(uid: int, state: str, uids: tuple[int, ...]) -> bool:
    """Whether a process with this state and these UIDs (real, effective, saved, fs) is one of uid's."""
    if state == "Z" or len(uids) < 3:
        return False  # a zombie is already dead (only its parent can reap it)
    real, _effective, saved = uids[:3]
    # Real or saved: the user may signal it (a setuid program the user started, too), and userdel calls it busy.
    # Any other slot only without root: a root process acting as the user for a moment is not the user's.
    return uid in (real, saved) or (uid in uids and 0 not in uids)


def _is_target(pid: int, uid: int, proc_root: Path) -> bool:
    if pid in (1, os.getpid()):
        return False
    status = _status(pid, proc_root)
    return status is not None and is_users(uid, *status)


def user_processes(uid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of live processes of `uid` (see is_users), minus PID 1 and this process."""
    pids: list[int] = []
    with contextlib.suppress(OSError), os.scandir(proc_root) as entries:
        for entry in entries:
            if entry.name.isdigit() and _is_target(int(entry.name), uid, proc_root):
                pids.append(int(entry.name))
    return sorted(pids)


def _send(pid: int, uid: int, sig: signal.Signals, proc_root: Path) -> bool:
    """Signal pid if it is still one of uid's processes; the pidfd pins the process across the re-check."""
    try:
        pidfd = os.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        if not _is_target(pid, uid, proc_root):
            return False
        crashpoints.step(f"signal {sig.name} to pid {pid}")
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
    return True


@dataclass(frozen=True)
class HostProcesses:
    """The real process table: /proc, pidfds, and kill(-1) from a child that becomes the user."""

    proc_root: Path = Path("/proc")

    def pids(self, uid: int) -> list[int]:
        return user_processes(uid, self.proc_root)

    def signal(self, pid: int, uid: int, sig: signal.Signals) -> bool:
        return _send(pid, uid, sig, self.proc_root)

    def kill_all_as(self, uid: int) -> str | None:
        return uidkill.kill_all_as(uid)


def _wait_until_gone(table: ProcessTable, uid: int, deadline: float) -> list[int]:
    while True:
        alive = table.pids(uid)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_SECONDS)


def _kill_until_gone(table: ProcessTable, uid: int, seconds: float) -> tuple[list[int], str | None]:
    """SIGKILL rounds until a scan after a kill(-1) finds nothing, or the deadline: (survivors, why kill(-1) was
    not sent). Always at least one round, even when the scans saw nothing: a fork chain hides from scans."""
    deadline = time.monotonic() + seconds
    while True:
        for pid in table.pids(uid):
            table.signal(pid, uid, signal.SIGKILL)
        unkillable = table.kill_all_as(uid)
        alive = _wait_until_gone(table, uid, min(deadline, time.monotonic() + SETTLE_SECONDS))
        if unkillable in uidkill.PERMANENT:
            # The agent lacks CAP_SETUID or keeps capabilities across the switch: later rounds cannot send it
            # either. The pidfd SIGKILLs may still end what the scans see; give them the deadline, then report.
            return _wait_until_gone(table, uid, deadline), unkillable
        if (not alive and unkillable is None) or time.monotonic() >= deadline:
            return alive, unkillable


def logind_available() -> str | None:
    """loginctl's path when systemd (and so logind) manages this host, else None."""
    if not SYSTEMD_RUNTIME_DIR.is_dir():
        return None
    return proc.which("loginctl", LOGINCTL_CANDIDATES)


def _check_uid(uid: int) -> None:
    if uid < MIN_UID or uid == NOBODY_UID or uid > uidkill.MAX_UID:
        raise PermissionProblem(
            f"refusing to end the sessions of UID {uid}: below {MIN_UID}, nobody or not a UID, a system account "
            "whose processes are services"
        )


def terminate_user_sessions(
    uid: int,
    *,
    grace_seconds: float = GRACE_SECONDS,
    kill_seconds: float = KILL_SECONDS,
    name: str | None = None,
    loginctl: str | None = None,
    use_logind: bool | None = None,
    processes: ProcessTable | None = None,
) -> SessionResult:
    """End every session and process of `uid`; `name` only labels the messages (upstream's strings, §6.5).

    `use_logind` None detects logind (`logind_available`); `loginctl` overrides the tool's path. If loginctl fails,
    the native sweep still runs, so the result never depends on logind alone. Check `ended` on the result: a
    survivor is reported, not raised.
    """
    _check_uid(uid)
    table = processes if processes is not None else HostProcesses()
    label = name or str(uid)
    found = len(table.pids(uid))
    method = "signals"
    if use_logind is None:
        tool = loginctl or logind_available()
    else:
        tool = (loginctl or proc.which("loginctl", LOGINCTL_CANDIDATES)) if use_logind else None
    if tool is not None:
        result = proc.run([tool, "terminate-user", str(uid)], timeout=30, check=False)
        if result.returncode == 0:
            method = "loginctl"
            _wait_until_gone(table, uid, time.monotonic() + grace_seconds)
    visible = table.pids(uid)
    for pid in visible:
        table.signal(pid, uid, signal.SIGTERM)
    if visible:
        _wait_until_gone(table, uid, time.monotonic() + grace_seconds)
    survivors, unkillable = _kill_until_gone(table, uid, kill_seconds)
    if survivors or unkillable is not None:
        message = messages.processes_survived(label, tuple(survivors), kill_seconds, unkillable)
    elif found == 0:
        message = messages.slice_terminated(label) if method == "loginctl" else messages.no_active_processes(label)
    else:
        message = messages.processes_terminated(found, label)
    return SessionResult(method, found, tuple(survivors), message, unkillable)
