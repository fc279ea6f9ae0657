"""host.uidkill with real processes: kill(-1, SIGKILL) sent as a throw-away UID (needs root; no account file is
touched, a UID needs no passwd entry to own a process). The cases that could go wrong for the whole machine (a
child that keeps its capabilities) run in a PID namespace of their own, so the worst they can reach is that
namespace."""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.host import uidkill
from p0_ssh_agent.host.sessions import parse_status

SETPRIV = shutil.which("setpriv")
PRLIMIT = shutil.which("prlimit")
UNSHARE = shutil.which("unshare")
PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or None in (SETPRIV, PRLIMIT, UNSHARE),
    reason="needs root, setpriv, prlimit and unshare to start processes as other UIDs",
)

# A fork chain as in the review: each generation forks the next and exits, ignoring SIGTERM; bounded by its own
# lifetime (and by prlimit where it runs).
CHAIN = """
import os, signal, time
signal.signal(signal.SIGTERM, signal.SIG_IGN)
stop = time.time() + 120
while time.time() < stop:
    try:
        if os.fork():
            os._exit(0)
    except OSError:
        pass
"""


def processes_of(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                state, uids = parse_status((entry / "status").read_text())
            except OSError:
                continue
            if uid in uids and state != "Z":
                pids.append(int(entry.name))
    return pids


def seen_alive(uid: int, scans: int = 20) -> list[int]:
    """Every PID of uid seen in `scans` scans ~10 ms apart: one scan can miss a chain between generations."""
    seen: set[int] = set()
    for _ in range(scans):
        seen.update(processes_of(uid))
        time.sleep(0.01)
    return sorted(seen)


def settled(uid: int) -> list[int]:
    """What is left of uid once the processes that kill(-1) reached have finished dying, seen over 20 scans.

    kill(-1) returns once SIGKILL is pending in every process it reaches; each still has to be scheduled to exit, so
    right afterwards a scan can show processes in state R with SIGKILL pending. Those are waited for (a readiness
    guard, not a timing assertion); a survivor would keep forking and show up again in the scans after."""
    for _ in range(1000):
        if not processes_of(uid):
            break
        time.sleep(0.01)
    return seen_alive(uid)


class Starter:
    def __init__(self) -> None:
        self.uids: list[int] = []
        self.children: list[subprocess.Popen[bytes]] = []

    def as_uid(self, uid: int, *argv: str, nproc: int = 64) -> subprocess.Popen[bytes]:
        assert SETPRIV is not None and PRLIMIT is not None
        if uid not in self.uids:
            self.uids.append(uid)
        ids = ["--reuid", str(uid), "--regid", str(uid), "--clear-groups"]
        child = subprocess.Popen([PRLIMIT, f"--nproc={nproc}", "--", SETPRIV, *ids, "--", *argv])
        self.children.append(child)
        return child

    def chain(self, uid: int) -> None:
        """A fork chain as uid, running once this returns: its first process exits as soon as it has forked."""
        self.as_uid(uid, PYTHON, "-I", "-S", "-c", CHAIN).wait(timeout=60)

    def wait_for(self, uid: int, count: int) -> None:
        for _ in range(300):  # a readiness guard, not a timing assertion
            if len(seen_alive(uid, scans=3)) >= count:
                return
        raise AssertionError(f"fewer than {count} processes of UID {uid} came up")

    def cleanup(self) -> None:
        for uid in self.uids:
            for _ in range(100):
                if not seen_alive(uid):
                    break
                uidkill.kill_all_as(uid)
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def start() -> Iterator[Starter]:
    starter = Starter()
    yield starter
    starter.cleanup()


_TESTS_SO_FAR = itertools.count()


@pytest.fixture
def uids() -> tuple[int, int]:
    """Two UIDs of this test's own. Not shared with an earlier test in the run: its ended processes may still be
    zombies waiting for their reaper, and they count against RLIMIT_NPROC (the process-limit test, run after the
    fork-chain tests, failed under load for that reason)."""
    slot = next(_TESTS_SO_FAR) % 10
    base = 4_200_000 + (os.getpid() % 100_000) * 20 + slot * 2  # apart from test_host_sessions.py's 3,000,000-4,000,000
    assert not processes_of(base) and not processes_of(base + 1)
    return base, base + 1


def test_a_fork_chain_is_ended_and_other_uids_are_not(start: Starter, uids: tuple[int, int]) -> None:
    target, bystander = uids
    for _ in range(3):
        start.chain(target)
    other = start.as_uid(bystander, "/bin/sleep", "1000")
    start.wait_for(bystander, 1)

    assert uidkill.kill_all_as(target) is None

    assert settled(target) == []
    assert other.poll() is None


def test_a_user_at_its_process_limit_is_still_reached(start: Starter, uids: tuple[int, int]) -> None:
    """The fork-bomb case: the user at RLIMIT_NPROC, and the agent's own RLIMIT_NPROC as low as it goes. A helper
    exec'd after the UID switch would fail here with EAGAIN; the child that does not exec does not care."""
    target, _ = uids
    limit = 8
    for _ in range(limit):
        start.as_uid(target, "/bin/sleep", "1000", nproc=limit)
    start.wait_for(target, limit)
    probe = "import sys; from p0_ssh_agent.host import uidkill; print(uidkill.kill_all_as(int(sys.argv[1])))"
    assert PRLIMIT is not None
    done = subprocess.run(
        [PRLIMIT, "--nproc=1", "--", sys.executable, "-c", probe, str(target)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stdout) == (0, "None\n"), done.stderr
    assert settled(target) == []


def test_without_cap_setuid_nothing_is_sent(start: Starter, uids: tuple[int, int]) -> None:
    """Root whose bounding set lacks CAP_SETUID/CAP_SETGID (a unit without them) gets a reason, not a silent miss."""
    target, _ = uids
    victim = start.as_uid(target, "/bin/sleep", "1000")
    start.wait_for(target, 1)
    probe = "import sys; from p0_ssh_agent.host import uidkill; print(uidkill.kill_all_as(int(sys.argv[1])))"
    assert SETPRIV is not None
    argv = [SETPRIV, "--bounding-set", "-setuid,-setgid", "--", sys.executable, "-c", probe, str(target)]
    done = subprocess.run(argv, capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "setresuid/setresgid refused (the agent needs CAP_SETUID and CAP_SETGID)"
    assert victim.poll() is None


def test_capabilities_kept_across_the_switch_refuse_the_kill() -> None:
    """With SECBIT_NO_SETUID_FIXUP the child keeps CAP_KILL after setresuid, and kill(-1) would end every process
    it can see. The child must notice and send nothing. Contained: its own PID namespace, with a root bystander
    that a kill(-1) with CAP_KILL would end."""
    assert UNSHARE is not None and SETPRIV is not None
    probe = (
        "import subprocess, sys, time\n"
        "from p0_ssh_agent.host import uidkill\n"
        "bystander = subprocess.Popen(['/bin/sleep', '1000'])\n"
        "reason = uidkill.kill_all_as(4_199_999)\n"
        "time.sleep(0.2)\n"
        "print(reason)\n"
        "print('bystander', 'alive' if bystander.poll() is None else 'killed')\n"
        "bystander.kill()\n"
    )
    argv = [UNSHARE, "--pid", "--fork", "--mount-proc", "--", SETPRIV, "--securebits", "+no_setuid_fixup", "--",
            sys.executable, "-c", probe]  # fmt: skip
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [
        "capabilities survived the switch to the user (SecureBits?), so nothing was sent",
        "bystander alive",
    ]


@pytest.mark.parametrize("uid", [0, -1, 2**32 - 1])
def test_uids_that_would_leave_the_child_root_are_refused(uid: int) -> None:
    with pytest.raises(ValueError, match="cannot be switched to"):
        uidkill.kill_all_as(uid)
