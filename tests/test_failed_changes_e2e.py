"""Changes that fail, and revokes for accounts the agent does not manage, through `p0-ssh-agent command` in the
namespace sandbox (real useradd, real visudo, real files). Issue 14 ("Hardening II") items 2 and 3.

Item 3: every failure the agent sees leaves the ledger as it was. A grant records itself before its effect (so a
crash in between leaves a harmless extra record); when the effect then fails, for any reason, the applier undoes
what the plan recorded ahead of it. Before, only a grant refused as unsafe was forgotten again: a UNIX socket at
~/.ssh/authorized_keys (ENXIO on open) kept the key's record, and a later provisionUser revoke answered "still
holds 1 other grant; account kept"; an adopted account's failed grant kept its adoption record.

Item 2: a key revoke for an account the agent does not manage (a plain useradd account) whose ~/.ssh and
authorized_keys are root-owned used to succeed and hand both to the user (0700/0600, user-owned). It now removes
only the request's own marked pair and leaves owner and mode as they are, and writes nothing when the file holds
nothing of the request's.
"""

from __future__ import annotations

import contextlib
import os
import socket
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.host.ledger import load_ledger
from provisioning_support import DROPIN, VISUDO, AgentCli, authorized_keys, make_keys, write_config
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"
OWN_LINE = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc admin@host\n"
MOUNT, UMOUNT = "/usr/bin/mount", "/usr/bin/umount"


def ledger_files(state_dir: Path) -> dict[str, bytes]:
    """Every user's ledger record as bytes (a user without one: no key), and the host record as read (a first
    commit writes it, whatever follows): "as it was" means the records byte for byte."""
    users = state_dir / "ledger" / "users"
    records = {path.name: path.read_bytes() for path in sorted(users.glob("*.json"))} if users.exists() else {}
    high_water = load_ledger(state_dir).uid_high_water if state_dir.exists() else 0
    return {**records, "uid_high_water": str(high_water).encode()}


@contextlib.contextmanager
def socket_at(path: Path, uid: int, gid: int) -> Iterator[None]:
    """A UNIX socket bound at `path`, owned by the user: opening it fails with ENXIO (not an unsafe-path refusal)."""
    path.parent.mkdir(mode=0o700, exist_ok=True)
    os.chown(path.parent, uid, gid)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
        listener.bind(str(path))
        os.chown(path, uid, gid)
        try:
            yield
        finally:
            path.unlink()


@contextlib.contextmanager
def visudo_rejecting_everything(tmp_path: Path) -> Iterator[None]:
    stub = tmp_path / "rejecting-visudo"
    stub.write_text("#!/bin/sh\necho 'syntax error (stub)' >&2\nexit 1\n")
    stub.chmod(0o755)
    subprocess.run([MOUNT, "--bind", str(stub), VISUDO], check=True)
    try:
        yield
    finally:
        subprocess.run([UMOUNT, VISUDO], check=True)


@pytest.fixture
def cli(sandbox: Sandbox, tmp_path: Path) -> AgentCli:
    return AgentCli(write_config(tmp_path, make_keys(tmp_path)))


# --- item 3: a failed grant leaves no trace in the ledger ----------------------------------------------------------


@pytest.mark.parametrize("command", ["provisionAuthorizedKeys", "provisionCAKeys"])
def test_a_grant_whose_write_fails_leaves_the_ledger_as_it_was(cli: AgentCli, tmp_path: Path, command: str) -> None:
    state_dir = tmp_path / "state"
    name = unique_user_name()
    assert cli.command("provisionUser", name, request_id="req-U").success
    entry = Path("/home", name).stat()
    before = ledger_files(state_dir)

    is_ca = command == "provisionCAKeys"
    with socket_at(authorized_keys(name), entry.st_uid, entry.st_gid):
        failed = cli.command(
            command, name, request_id="req-K", public_key=None if is_ca else KEY, ca_public_key=KEY if is_ca else None
        )
    assert not failed.success
    assert "No such device or address" in failed.error and "authorized_keys" in failed.error, failed

    assert ledger_files(state_dir) == before
    assert "req-K" not in load_ledger(state_dir).keys.get(name, {})
    # The failed grant is no grant: the account's own revoke is not kept back by it.
    revoked = cli.command("provisionUser", name, action="revoke", request_id="req-U")
    assert revoked.success and "other grant" not in revoked.message, revoked
    assert revoked.message.startswith(f"User {name} locked and expired"), revoked


def test_a_repeated_grant_that_fails_keeps_what_the_earlier_grant_recorded(cli: AgentCli, tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    name = unique_user_name()
    assert cli.command("provisionUser", name, request_id="req-U").success
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-K", public_key=KEY).success
    before = ledger_files(state_dir)
    entry = Path("/home", name).stat()
    authorized_keys(name).unlink()
    with socket_at(authorized_keys(name), entry.st_uid, entry.st_gid):
        failed = cli.command("provisionAuthorizedKeys", name, request_id="req-K", public_key=KEY)
    assert not failed.success and "No such device or address" in failed.error, failed
    assert ledger_files(state_dir) == before
    assert "req-K" in load_ledger(state_dir).keys[name]


def test_an_adopted_accounts_failed_key_grant_does_not_adopt_it(sandbox: Sandbox, tmp_path: Path) -> None:
    name = unique_user_name()
    entry = sandbox.useradd(name)
    cli = AgentCli(write_config(tmp_path, make_keys(tmp_path), adopt_users=(name,)))
    state_dir = tmp_path / "state"
    before = ledger_files(state_dir)
    with socket_at(authorized_keys(name), entry.pw_uid, entry.pw_gid):
        failed = cli.command("provisionAuthorizedKeys", name, request_id="req-A", public_key=KEY)
    assert not failed.success and "No such device or address" in failed.error, failed
    assert ledger_files(state_dir) == before
    assert name not in load_ledger(state_dir).users


def test_an_adopted_accounts_sudo_grant_that_visudo_rejects_leaves_the_ledger_as_it_was(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    name = unique_user_name()
    sandbox.useradd(name)
    cli = AgentCli(write_config(tmp_path, make_keys(tmp_path), adopt_users=(name,)))
    state_dir = tmp_path / "state"
    before, dropin = ledger_files(state_dir), DROPIN.read_bytes() if DROPIN.exists() else None
    with visudo_rejecting_everything(tmp_path):
        failed = cli.command("provisionSudo", name, request_id="req-S", sudo=True)
    assert not failed.success, failed
    assert ledger_files(state_dir) == before
    assert name not in load_ledger(state_dir).users and "req-S" not in load_ledger(state_dir).sudo
    assert (DROPIN.read_bytes() if DROPIN.exists() else None) == dropin


# --- item 2: a revoke for an account the agent does not manage --------------------------------------------------


def root_owned_ssh(name: str, content: bytes) -> tuple[Path, Path]:
    """~name/.ssh root:root 0755 and authorized_keys root:root 0644 holding `content`, as an admin (or the Go
    agent) may have left them."""
    ssh_dir = Path("/home", name, ".ssh")
    ssh_dir.mkdir()
    ssh_dir.chmod(0o755)
    keys = ssh_dir / "authorized_keys"
    keys.write_bytes(content)
    keys.chmod(0o644)
    return ssh_dir, keys


def owner_and_mode(path: Path) -> tuple[int, int, int]:
    info = path.lstat()
    return info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)


def test_a_revoke_for_an_unmanaged_account_with_nothing_of_ours_writes_nothing(cli: AgentCli, sandbox: Sandbox) -> None:
    name = unique_user_name()
    sandbox.useradd(name)
    ssh_dir, keys = root_owned_ssh(name, OWN_LINE)
    inode = keys.stat().st_ino
    revoked = cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-X")
    assert revoked.success, revoked
    assert owner_and_mode(ssh_dir) == (0, 0, 0o755)
    assert owner_and_mode(keys) == (0, 0, 0o644)
    assert keys.read_bytes() == OWN_LINE and keys.stat().st_ino == inode  # not even rewritten


def test_a_revoke_for_an_unmanaged_account_removes_only_its_pair_and_keeps_owner_and_mode(
    cli: AgentCli, sandbox: Sandbox
) -> None:
    name = unique_user_name()
    sandbox.useradd(name)
    # A pair P0's Go agent added for req-G, between the admin's own lines.
    ours = b"# RequestID: req-G\n" + KEY.encode() + b"\n"
    ssh_dir, keys = root_owned_ssh(name, OWN_LINE + ours + OWN_LINE.replace(b"admin", b"backup"))
    for command in ("provisionAuthorizedKeys", "provisionCAKeys"):  # the CA revoke finds no CA line: no write
        revoked = cli.command(command, name, action="revoke", request_id="req-G")
        assert revoked.success, revoked
        assert owner_and_mode(ssh_dir) == (0, 0, 0o755)
        assert owner_and_mode(keys) == (0, 0, 0o644)
    assert keys.read_bytes() == OWN_LINE + OWN_LINE.replace(b"admin", b"backup")
