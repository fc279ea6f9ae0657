"""kill(-1, SIGKILL) sent as a user: the one signal a fork chain cannot outrun (issue 11 item 5).

A process that forks and exits in a loop cannot be chased from /proc: by the time a scan has listed the newest PID
and read its status, that process is gone and its child is newer still. The kernel has one operation that is
atomic against fork: kill(-1, sig) walks the whole task list under tasklist_lock, and fork (copy_process) needs
that lock to make a child visible and gives up once a fatal signal is pending in the parent. So after one
kill(-1, SIGKILL) no process the sender may signal is alive: each fork either finished before the walk (the child
is hit too) or is cancelled by it.

Sent by root, kill(-1) would end every process on the host. So a child of the agent first becomes the user
(setgroups([]), setresgid, setresuid to the user in all three slots) and sends it from there. A process without
capabilities may signal exactly the processes whose real or saved UID is its real or effective UID (kill(2)):
what the user could kill itself, in the sender's PID namespace, PID 1 and the sender excepted. Before it sends,
the child checks that the switch really happened: getresuid() is the user's three times and its effective
capability set is empty. (`SecureBits=no-setuid-fixup` would otherwise keep CAP_KILL across setresuid, and kill(-1)
would end the host.)

Why a forked child that does not exec, rather than running /bin/kill as the user:

* exec after a UID switch fails with EAGAIN when the user is at its RLIMIT_NPROC (PF_NPROC_EXCEEDED), which is the
  fork-bomb case exactly; setresuid itself never fails for that reason;
* an exec'd helper spends a millisecond starting up as the user, dumpable again, where the user's own processes
  can signal or trace it; this child becomes non-dumpable at the switch and sends within microseconds of it;
* procps kill (Debian) and util-linux kill (RHEL) parse `-1` differently (procps 4.0.2 refuses `-s KILL -1`).

The child runs only system call wrappers and os._exit: it never returns into the agent's code, even on an
exception, and the parent kills it (it is root's to kill until the switch, the parent's child after) if it has not
exited within a deadline. Needs CAP_SETUID and CAP_SETGID: the unit's CapabilityBoundingSet lists them for this.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
import warnings

from p0_ssh_agent.host import crashpoints

# Python 3.12+ warns on every fork() in a process with threads (the daemon's worker threads), because a child that
# runs Python code may meet a lock another thread held. This child runs system call wrappers only, and a child that
# hangs anyway is killed at REAP_SECONDS; the warning would only be noise in the journal.
warnings.filterwarnings(
    "ignore", message=r"This process .* is multi-threaded", category=DeprecationWarning, module=__name__
)

KILLER_GID = 65534  # nogroup: the child opens nothing but its own /proc status, and signals are checked by UID only
REAP_SECONDS = 5.0
MAX_UID = 2**32 - 2  # (uid_t)-1 means "unchanged" to setresuid: the child would stay root

EXIT_SENT = 0
EXIT_CANNOT_SWITCH = 3
EXIT_STILL_PRIVILEGED = 4
EXIT_KILL_FAILED = 5
EXIT_CRASHED = 6
EXIT_SIGNALLED = 7

CANNOT_SWITCH = "setresuid/setresgid refused (the agent needs CAP_SETUID and CAP_SETGID)"
STILL_PRIVILEGED = "capabilities survived the switch to the user (SecureBits?), so nothing was sent"
_REASONS = {
    EXIT_CANNOT_SWITCH: CANNOT_SWITCH,
    EXIT_STILL_PRIVILEGED: STILL_PRIVILEGED,
    EXIT_KILL_FAILED: "kill(-1) failed",
    EXIT_CRASHED: "the child failed before it could send",
    EXIT_SIGNALLED: "the child was killed before it could report (by another process of the user?)",
}

# Configuration, not chance: retrying cannot help.
PERMANENT = frozenset({CANNOT_SWITCH, STILL_PRIVILEGED})


def _effective_capabilities() -> int | None:
    """CapEff of this process from /proc/self/status, or None if it cannot be read (then assume the worst)."""
    try:
        fd = os.open("/proc/self/status", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        text = os.read(fd, 65536)
    finally:
        os.close(fd)
    for line in text.splitlines():
        if line.startswith(b"CapEff:"):
            return int(line.split()[1], 16)
    return None


def _child(uid: int) -> int:
    """In the forked child: become uid, prove it, send kill(-1, SIGKILL). Returns the exit code."""
    try:
        os.setgroups([])
        os.setresgid(KILLER_GID, KILLER_GID, KILLER_GID)
        os.setresuid(uid, uid, uid)
    except OSError:
        return EXIT_CANNOT_SWITCH
    if os.getresuid() != (uid, uid, uid) or _effective_capabilities() != 0:
        return EXIT_STILL_PRIVILEGED
    try:
        os.kill(-1, signal.SIGKILL)
    except ProcessLookupError:
        pass  # ESRCH: no other process in reach, nothing was left to end
    except OSError:
        return EXIT_KILL_FAILED
    return EXIT_SENT


def _reap(pid: int, timeout: float) -> int:
    """The child's exit code; a child still running after `timeout` is killed (and reported as crashed)."""
    deadline = time.monotonic() + timeout
    pause = 0.0005
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status) if os.WIFEXITED(status) else EXIT_SIGNALLED
        if time.monotonic() >= deadline:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            return EXIT_CRASHED
        time.sleep(pause)
        pause = min(pause * 2, 0.05)


def kill_all_as(uid: int, *, timeout: float = REAP_SECONDS) -> str | None:
    """kill(-1, SIGKILL) from a child running as `uid`; None when it was sent, else why it was not.

    Callers refuse root and system UIDs first (sessions._check_uid); this checks the one value that would make the
    switch a no-op. Blocking: async callers run it in a worker thread.
    """
    if not 0 < uid <= MAX_UID:
        raise ValueError(f"kill_all_as: UID {uid} cannot be switched to")
    crashpoints.step(f"fork a child to kill(-1) as uid {uid}")
    pid = os.fork()
    if pid == 0:
        code = EXIT_CRASHED
        try:
            code = _child(uid)
        finally:
            os._exit(code)
    code = _reap(pid, timeout)
    return None if code == EXIT_SENT else _REASONS.get(code, f"the child exited with {code}")
