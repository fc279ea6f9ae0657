"""Faults on the host: each fails the request with a clear error and leaves every file as it was.

Run in the namespace sandbox, where mounts are private: a full disk is a tiny tmpfs over ~/.ssh, a read-only /etc
or /home is a read-only remount of the sandbox's bind mount, a missing visudo is a non-executable file bound over
it. Every mount is undone in a finally block.
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host.accounts import lookup_user
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import load_ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from reliability.figures import record
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox

KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc b@test"
MOUNT, UMOUNT = "/usr/bin/mount", "/usr/bin/umount"
DROPIN = Path("/etc/sudoers.d/p0-ssh-agent")


def run(engine: Engine, command: str, **fields: object) -> CommandResult:
    data: dict[str, object] = {"command": command, "action": "grant", "requestId": "fault-1", **fields}
    return run_change(engine, parse_change(command, data)).result


@pytest.fixture
def engine(sandbox: Sandbox, tmp_path: Path) -> Engine:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return Engine.on_host(AgentConfig(state_dir=state), state, audit_trail=AuditTrail.off())


@contextlib.contextmanager
def mounted(*argv: str, target: str) -> Iterator[None]:
    subprocess.run([MOUNT, *argv], check=True)
    try:
        yield
    finally:
        subprocess.run([UMOUNT, target], check=True)


@contextlib.contextmanager
def read_only(path: str) -> Iterator[None]:
    subprocess.run([MOUNT, "-o", "remount,bind,ro", path], check=True)
    try:
        yield
    finally:
        subprocess.run([MOUNT, "-o", "remount,bind,rw", path], check=True)


def snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in directory.iterdir() if p.is_file()}


def test_full_disk_fails_the_grant_and_keeps_the_old_file(engine: Engine) -> None:
    user = unique_user_name()
    assert run(engine, "provisionUser", userName=user).success
    assert run(engine, "provisionAuthorizedKeys", userName=user, publicKey=KEY_A).success
    entry = pwd.getpwnam(user)
    ssh = Path(entry.pw_dir) / ".ssh"
    before = (ssh / "authorized_keys").read_bytes()
    options = f"size=12k,mode=0700,uid={entry.pw_uid},gid={entry.pw_gid}"
    with mounted("-t", "tmpfs", "-o", options, "p0-full", str(ssh), target=str(ssh)):
        (ssh / "authorized_keys").write_bytes(before)
        os.chown(ssh / "authorized_keys", entry.pw_uid, entry.pw_gid)
        (ssh / "authorized_keys").chmod(0o600)
        with contextlib.suppress(OSError), (ssh / "filler").open("wb") as filler:
            filler.write(b"x" * 64 * 1024)  # fills the tmpfs up to its last page
        (ssh / "filler").chmod(0o600)
        os.chown(ssh / "filler", entry.pw_uid, entry.pw_gid)
        contents = snapshot(ssh)

        result = run(engine, "provisionAuthorizedKeys", userName=user, publicKey=KEY_B, requestId="fault-2")

        assert not result.success
        assert "No space left on device" in result.error and "authorized_keys" in result.error
        assert snapshot(ssh) == contents  # the old file, and no temp file left behind
    assert b"fault-2" not in (ssh / "authorized_keys").read_bytes()
    record(fault="full disk under ~/.ssh")


def test_read_only_etc_fails_sudo_and_useradd_cleanly(engine: Engine, sandbox: Sandbox) -> None:
    user = unique_user_name()
    assert run(engine, "provisionUser", userName=user).success
    etc_before = {p: p.read_bytes() for p in (Path("/etc/passwd"), Path("/etc/group"), Path("/etc/shadow"))}
    with read_only("/etc"):
        sudo = run(engine, "provisionSudo", userName=user, sudo=True)
        other = unique_user_name()
        create = run(engine, "provisionUser", userName=other)
    assert not sudo.success and "Read-only file system" in sudo.error
    assert not DROPIN.exists() or b"fault-1" not in DROPIN.read_bytes()
    assert not create.success and lookup_user(other) is None
    assert {p: p.read_bytes() for p in etc_before} == etc_before
    assert other not in load_ledger(engine.state_dir).users
    record(fault="read-only /etc (sudo grant and useradd)")


def test_missing_visudo_refuses_sudo_and_changes_nothing(engine: Engine, tmp_path: Path) -> None:
    user = unique_user_name()
    assert run(engine, "provisionUser", userName=user).success
    stub = tmp_path / "not-visudo"
    stub.write_text("")
    stub.chmod(0o644)  # not executable: to the agent, visudo is missing
    with mounted("--bind", str(stub), "/usr/sbin/visudo", target="/usr/sbin/visudo"):
        result = run(engine, "provisionSudo", userName=user, sudo=True)
    assert not result.success and "visudo" in result.error
    assert not DROPIN.exists() or b"fault-1" not in DROPIN.read_bytes()
    record(fault="visudo missing")


def test_useradd_failing_halfway_is_rolled_back(engine: Engine) -> None:
    user = unique_user_name()
    # useradd writes /etc/passwd, /etc/group and /etc/shadow first, then fails to create the home directory.
    with read_only("/home"):
        result = run(engine, "provisionUser", userName=user)
    assert not result.success
    assert lookup_user(user) is None
    with pytest.raises(KeyError):
        grp.getgrnam(user)
    assert user not in load_ledger(engine.state_dir).users
    # And the next attempt, with the fault gone, works.
    assert run(engine, "provisionUser", userName=user).success
    record(fault="useradd failing halfway (read-only /home)")
