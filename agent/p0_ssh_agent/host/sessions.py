"""End every session and process of a user (`provisionSession` revoke, upstream-protocol.md §6.5).

The Go agent ran `systemctl kill user-<name>.slice` (logind names slices by UID, so this missed) and then
`pkill -u` (§12 item 14). Here:

1. If logind runs (systemd booted and `loginctl` installed): `loginctl terminate-user <uid>`, which ends the
   user's sessions and user manager the way logind tracks them.
2. Always afterwards, natively: scan /proc for processes any of whose real, effective, saved or filesystem UIDs is
   the user's, send SIGTERM, wait up to `grace_seconds`, SIGKILL what is left, and scan again. This catches what
   logind does not track (processes outside sessions, hosts without logind).

Signals go through a pidfd opened before the process is checked a second time, so a PID that is reused between
the scan and the signal is never hit. PID 1, this process, and any process holding UID 0 in any of its UID slots
(a setuid program the user started, sshd's privileged half) are never signalled; UIDs below 1000 and "nobody"
are refused outright, because ending every process of a system account takes a service down.

Synchronous (it sleeps while waiting): async callers run it in a worker thread.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.errors import PermissionProblem
from p0_ssh_agent.host import proc

MIN_UID = 1000
NOBODY_UID = 65534
POLL_SECONDS = 0.05
KILL_ROUNDS = 3  # a process that forks while being killed gets its children caught on the next round
LOGINCTL_CANDIDATES = ("/usr/bin/loginctl", "/bin/loginctl")
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")  # exists only when systemd is PID 1 (sd_booted)


@dataclass(frozen=True)
class SessionResult:
    method: str  # "loginctl" or "signals"
    found: int  # processes of the user when we started
    remaining: int  # processes of the user when we finished
    message: str


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


def _is_target(pid: int, uid: int, proc_root: Path) -> bool:
    if pid in (1, os.getpid()):
        return False
    status = _status(pid, proc_root)
    if status is None:
        return False
    state, uids = status
    # A zombie is already dead (only its parent can reap it); UID 0 anywhere means the process can act as root.
    return state != "Z" and uid in uids and 0 not in uids


def user_processes(uid: int, proc_root: Path = Path("/proc")) -> list[int]:
    """PIDs of live processes that run with `uid` in any UID slot, minus the ones we never signal."""
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
        signal.pidfd_send_signal(pidfd, sig)
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)
    return True


def _wait_until_gone(uid: int, deadline: float, proc_root: Path) -> list[int]:
    while True:
        alive = user_processes(uid, proc_root)
        if not alive or time.monotonic() >= deadline:
            return alive
        time.sleep(POLL_SECONDS)


def logind_available() -> str | None:
    """loginctl's path when systemd (and so logind) manages this host, else None."""
    if not SYSTEMD_RUNTIME_DIR.is_dir():
        return None
    return proc.which("loginctl", LOGINCTL_CANDIDATES)


def _check_uid(uid: int) -> None:
    if uid < MIN_UID or uid == NOBODY_UID:
        raise PermissionProblem(
            f"refusing to end the sessions of UID {uid}: below {MIN_UID} or nobody, a system account whose "
            "processes are services"
        )


def terminate_user_sessions(
    uid: int,
    *,
    grace_seconds: float = 2.0,
    name: str | None = None,
    loginctl: str | None = None,
    use_logind: bool | None = None,
    proc_root: Path = Path("/proc"),
) -> SessionResult:
    """End every session and process of `uid`; `name` only labels the messages (upstream's strings, §6.5).

    `use_logind` None detects logind (`logind_available`); `loginctl` overrides the tool's path. If loginctl fails,
    the native sweep still runs, so the result never depends on logind alone.
    """
    _check_uid(uid)
    label = name or str(uid)
    found = len(user_processes(uid, proc_root))
    method = "signals"
    if use_logind is None:
        tool = loginctl or logind_available()
    else:
        tool = (loginctl or proc.which("loginctl", LOGINCTL_CANDIDATES)) if use_logind else None
    if tool is not None:
        result = proc.run([tool, "terminate-user", str(uid)], timeout=30, check=False)
        if result.returncode == 0:
            method = "loginctl"
            _wait_until_gone(uid, time.monotonic() + grace_seconds, proc_root)
    if found == 0:
        message = (
            f"Successfully terminated user slice for {label}"
            if method == "loginctl"
            else f"No active processes found for user {label}"
        )
        return SessionResult(method, 0, len(user_processes(uid, proc_root)), message)

    for pid in user_processes(uid, proc_root):
        _send(pid, uid, signal.SIGTERM, proc_root)
    alive = _wait_until_gone(uid, time.monotonic() + grace_seconds, proc_root)
    for _ in range(KILL_ROUNDS):
        if not alive:
            break
        for pid in alive:
            _send(pid, uid, signal.SIGKILL, proc_root)
        alive = _wait_until_gone(uid, time.monotonic() + 1.0, proc_root)
    if alive:
        message = f"Termination signals sent to {found} processes for user {label}"
    else:
        message = f"Successfully terminated {found} processes for user {label}"
    return SessionResult(method, found, len(alive), message)
