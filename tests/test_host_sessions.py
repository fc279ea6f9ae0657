"""host.sessions with real processes: `sleep` started under throw-away UIDs with setpriv (needs root, touches no
account file: a UID does not need a passwd entry to own a process). The ssh-session case is in the sandbox tests."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.errors import PermissionProblem
from p0_ssh_agent.host.sessions import parse_status, terminate_user_sessions, user_processes

SETPRIV = shutil.which("setpriv")
PYTHON = "/usr/bin/python3"
pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or SETPRIV is None, reason="needs root and setpriv to start processes as other UIDs"
)


class Spawner:
    """Starts `sleep` as a given UID and reaps everything at the end, whatever the test did."""

    def __init__(self) -> None:
        self.children: list[subprocess.Popen[bytes]] = []

    def start(self, uid: int, *, ignore_term: bool = False, euid: int | None = None) -> subprocess.Popen[bytes]:
        assert SETPRIV is not None
        ids = ["--reuid", str(uid)] if euid is None else ["--ruid", str(uid), "--euid", str(euid)]
        command = ["/bin/sh", "-c", "trap '' TERM; exec sleep 1000"] if ignore_term else ["/bin/sleep", "1000"]
        child = subprocess.Popen([SETPRIV, *ids, "--regid", str(uid), "--clear-groups", *command])
        self.children.append(child)
        self._wait_started(child.pid, uid)
        return child

    def start_python(self, code: str, uid: int) -> subprocess.Popen[bytes]:
        """Python code run by root; it is ready once /proc shows `uid` in one of its UID slots."""
        child = subprocess.Popen([PYTHON, "-I", "-S", "-c", code])
        self.children.append(child)
        for _ in range(1000):  # a guard of about 10 s, not a timing assertion
            if uid in parse_status(Path(f"/proc/{child.pid}/status").read_text())[1]:
                return child
            time.sleep(0.01)
        raise AssertionError(f"process {child.pid} never took UID {uid}")

    @staticmethod
    def _wait_started(pid: int, uid: int) -> None:
        # setpriv changes UIDs, then execs: wait until /proc shows the new UID, or the test would race setpriv.
        for _ in range(1000):  # a guard of about 10 s, not a timing assertion
            _state, uids = parse_status(Path(f"/proc/{pid}/status").read_text())
            # argv[0], not the whole command line: `sh -c "trap '' TERM; exec sleep"` names sleep before its
            # trap is set, and a SIGTERM then would kill the shell the test means to be stubborn.
            program = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")[0]
            if uid in uids and program.endswith(b"sleep"):
                return
            time.sleep(0.01)
        raise AssertionError(f"process {pid} never ran as UID {uid}")

    def cleanup(self) -> None:
        for child in self.children:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def spawner() -> Iterator[Spawner]:
    spawner = Spawner()
    yield spawner
    spawner.cleanup()


@pytest.fixture
def uids() -> tuple[int, int]:
    """Two UIDs no real account or process on this machine uses."""
    base = 3_000_000 + (os.getpid() % 500_000) * 2
    assert not user_processes(base) and not user_processes(base + 1)
    return base, base + 1


def alive(child: subprocess.Popen[bytes]) -> bool:
    return child.poll() is None


def test_parse_status() -> None:
    text = "Name:\tsleep\nState:\tS (sleeping)\nTgid:\t42\nUid:\t1001\t1002\t1003\t1004\nGid:\t5\t5\t5\t5\n"
    assert parse_status(text) == ("S", (1001, 1002, 1003, 1004))
    assert parse_status("State:\tZ (zombie)\nUid:\t0\t0\t0\t0\n") == ("Z", (0, 0, 0, 0))
    assert parse_status("") == ("", ())
    state, own = parse_status(Path("/proc/self/status").read_text())
    assert state in ("R", "S") and own[0] == os.getuid()


def test_terminates_all_processes_of_the_uid_and_nothing_else(spawner: Spawner, uids: tuple[int, int]) -> None:
    target, bystander = uids
    victims = [spawner.start(target) for _ in range(3)]
    other = spawner.start(bystander)
    assert len(user_processes(target)) == 3
    result = terminate_user_sessions(target, name="p0alice", use_logind=False)
    assert result.method == "signals"
    assert (result.found, result.remaining) == (3, 0)
    assert result.message == "Successfully terminated 3 processes for user p0alice"
    for victim in victims:
        victim.wait()
        assert victim.returncode == -15  # SIGTERM was enough
    assert alive(other)
    assert user_processes(target) == []


def test_processes_ignoring_sigterm_are_killed(spawner: Spawner, uids: tuple[int, int]) -> None:
    target, _ = uids
    stubborn = spawner.start(target, ignore_term=True)
    result = terminate_user_sessions(target, grace_seconds=0.3, use_logind=False)
    stubborn.wait()
    assert stubborn.returncode == -9
    assert (result.found, result.remaining) == (1, 0)
    assert result.message == f"Successfully terminated 1 processes for user {target}"


def test_setuid_programs_the_user_started_are_ended(spawner: Spawner, uids: tuple[int, int]) -> None:
    """Real UID the user's, effective root (passwd, su): the user may signal it, and userdel calls it busy."""
    target, _ = uids
    setuid_like = spawner.start(target, euid=0)
    result = terminate_user_sessions(target, use_logind=False)
    setuid_like.wait()
    assert (result.found, result.remaining, result.ended) == (1, 0, True)


def test_root_borrowing_the_users_uid_is_never_signalled(spawner: Spawner, uids: tuple[int, int]) -> None:
    """Real and saved UID root, effective the user's (sshd reading authorized_keys): root's, not the user's."""
    target, _ = uids
    borrower = spawner.start_python(f"import os, time; os.setresuid(0, {target}, 0); time.sleep(1000)", target)
    result = terminate_user_sessions(target, use_logind=False)
    assert alive(borrower)
    assert result.found == 0 and result.ended
    assert result.message == f"No active processes found for user {target}"


def test_nothing_to_do(uids: tuple[int, int]) -> None:
    result = terminate_user_sessions(uids[0], name="nobody-here", use_logind=False)
    assert result == terminate_user_sessions(uids[0], name="nobody-here", use_logind=False)
    assert result.message == "No active processes found for user nobody-here"
    assert (result.method, result.found, result.remaining) == ("signals", 0, 0)


@pytest.mark.parametrize("uid", [0, 1, 999, 65534])
def test_system_uids_are_refused(uid: int) -> None:
    with pytest.raises(PermissionProblem, match=f"UID {uid}"):
        terminate_user_sessions(uid, use_logind=False)


def test_failing_loginctl_falls_back_to_signals(tmp_path: Path, spawner: Spawner, uids: tuple[int, int]) -> None:
    target, _ = uids
    calls = tmp_path / "calls"
    loginctl = tmp_path / "loginctl"
    loginctl.write_text(f'#!/bin/sh\necho "$@" >> {calls}\necho "Failed to connect to bus" >&2\nexit 1\n')
    loginctl.chmod(0o755)
    victim = spawner.start(target)
    result = terminate_user_sessions(target, loginctl=str(loginctl), use_logind=True)
    victim.wait()
    assert calls.read_text() == f"terminate-user {target}\n"
    assert result.method == "signals"
    assert (result.found, result.remaining) == (1, 0)


def test_working_loginctl_is_reported_and_survivors_still_swept(
    tmp_path: Path, spawner: Spawner, uids: tuple[int, int]
) -> None:
    """logind ends what it tracks; a process outside any session (here: all of them) is still ended natively."""
    target, _ = uids
    loginctl = tmp_path / "loginctl"
    loginctl.write_text("#!/bin/sh\nexit 0\n")
    loginctl.chmod(0o755)
    victim = spawner.start(target)
    result = terminate_user_sessions(target, grace_seconds=0.1, loginctl=str(loginctl), use_logind=True)
    victim.wait()
    assert result.method == "loginctl"
    assert (result.found, result.remaining) == (1, 0)
    empty = terminate_user_sessions(target, loginctl=str(loginctl), use_logind=True)
    assert empty.message == f"Successfully terminated user slice for {target}"
