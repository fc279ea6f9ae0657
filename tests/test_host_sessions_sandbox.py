"""host.sessions against a live ssh session and runuser'd processes of a real user, inside the namespace sandbox."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.host.account_changes import create_user
from p0_ssh_agent.host.accounts import UserRecord, allocate_uid
from p0_ssh_agent.host.sessions import terminate_user_sessions, user_processes
from sandbox.fixtures import CHILD_ENV, SSH, Sandbox, Sshd, unique_user_name

pytestmark = pytest.mark.sandbox
RUNUSER = "/usr/sbin/runuser"


class Processes:
    def __init__(self) -> None:
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: list[str]) -> subprocess.Popen[bytes]:
        # No pipes: a grandchild (runuser's sleep) would keep them open after its parent is killed, and reading
        # them to the end would then wait for the grandchild.
        child = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV
        )
        self.started.append(child)
        return child

    def stop_all(self) -> None:
        for child in self.started:
            if child.poll() is None:
                child.kill()
            child.wait()


@pytest.fixture
def processes() -> Iterator[Processes]:
    started = Processes()
    yield started
    started.stop_all()


def make_user() -> UserRecord:
    record, _ = create_user(unique_user_name(), uid=allocate_uid(high_water=None))
    assert record is not None
    return record


def wait_for(uid: int, count: int, what: str) -> None:
    for _ in range(3000):  # a readiness guard of about 30 s, not a timing assertion
        if len(user_processes(uid)) >= count:
            return
        time.sleep(0.01)
    raise AssertionError(f"{what}: only {user_processes(uid)} run as UID {uid}")


def ssh_session(sshd: Sshd, user: str, key: Path) -> list[str]:
    """The argv of an ssh login that keeps a remote `sleep` running: a live session for the user."""
    return [
        SSH,
        "-p", str(sshd.port),
        "-i", str(key),
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes",
        "-o", "LogLevel=ERROR",
        "-F", "/dev/null",
        "-l", user, "127.0.0.1", "--", "sleep 1000",
    ]  # fmt: skip


def test_terminate_ends_ssh_sessions_and_processes_but_spares_other_users(
    sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str], processes: Processes
) -> None:
    key, public = user_keypair
    target, bystander = make_user(), make_user()
    sandbox.install_key(target.name, public)
    session = processes.start(ssh_session(sshd, target.name, key))
    # sshd's unprivileged child and the remote shell's sleep run as the user once the login is through.
    wait_for(target.uid, 2, "the ssh session did not come up")
    before_runuser = len(user_processes(target.uid))
    runusers = [processes.start([RUNUSER, "-u", target.name, "--", "/bin/sleep", "1000"]) for _ in range(2)]
    other = processes.start([RUNUSER, "-u", bystander.name, "--", "/bin/sleep", "1000"])
    wait_for(target.uid, before_runuser + 2, "runuser did not start")
    wait_for(bystander.uid, 1, "the bystander's sleep did not start")

    result = terminate_user_sessions(target.uid, name=target.name)

    assert result.method == "signals"  # no systemd in the sandbox
    assert result.found == before_runuser + 2 and result.remaining == 0
    assert result.message == f"Successfully terminated {result.found} processes for user {target.name}"
    assert user_processes(target.uid) == []
    assert session.wait(timeout=30) != 0  # the connection was cut, the remote sleep never finished
    for runuser in runusers:
        assert runuser.wait(timeout=30) != 0
    try:
        assert other.poll() is None
        assert len(user_processes(bystander.uid)) == 1
    finally:
        terminate_user_sessions(bystander.uid, name=bystander.name)  # runuser's sleep is not our child
    assert other.wait(timeout=30) != 0


def test_terminate_with_nothing_running(sandbox: Sandbox) -> None:
    record = make_user()
    result = terminate_user_sessions(record.uid, name=record.name)
    assert result.message == f"No active processes found for user {record.name}"
