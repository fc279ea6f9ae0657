"""Provisioning end to end through `p0-ssh-agent command`, checked the way a person logging in would meet it.

Real useradd/usermod/userdel, visudo, sudo and sshd (UsePAM no) inside the namespace sandbox (issue 4's bar):
every grant is proven by an `ssh` login or a `sudo -n` over ssh, every revoke by the same login being refused,
and every refusal by fingerprints of /etc, /home and the agent's state directory that do not move.
Outside the sandbox every test here is skipped.
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioning_support import (
    DROPIN,
    AgentCli,
    authorized_keys,
    changed,
    host_state,
    make_keys,
    shadow_entry,
    tree_digest,
    visudo_ok,
    write_config,
)
from sandbox.fixtures import CHILD_ENV, SSH, Sandbox, Sshd, TestCA, make_keypair, unique_user_name

pytestmark = pytest.mark.sandbox

USER_EXISTS = "User already exists"
REVOKE_HANDLED = "User access revocation handled by other provisioning functions"

MakeCli = Callable[..., AgentCli]


@pytest.fixture(scope="module")
def agent_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("agent"))


@pytest.fixture
def make_cli(tmp_path: Path, agent_keys: Path) -> MakeCli:
    """AgentCli for a config in tmp_path (state directory tmp_path/state), with optional adoptUsers/userRevokeMode."""

    def make(*, adopt_users: tuple[str, ...] = (), user_revoke_mode: str | None = None) -> AgentCli:
        name = f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        path = write_config(tmp_path, agent_keys, adopt_users=adopt_users, user_revoke_mode=user_revoke_mode, name=name)
        return AgentCli(path)

    return make


@pytest.fixture
def cli(sandbox: Sandbox, make_cli: MakeCli) -> AgentCli:
    return make_cli()


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    return tmp_path / "state"


def logs_in(sshd: Sshd, user: str, key: Path, cert: Path | None = None) -> bool:
    """Whether `ssh` gets in as `user` (and the shell runs as that user); 255 is ssh's own failure: refused."""
    result = sshd.ssh(user, key, "id", "-un", cert=cert)
    if result.returncode == 0:
        assert result.stdout.strip() == user
        return True
    assert result.returncode == 255, result.stderr
    return False


def grant_user(cli: AgentCli, name: str, request_id: str = "req-1") -> int:
    answer = cli.command("provisionUser", name, request_id=request_id)
    assert answer.success, answer
    return pwd.getpwnam(name).pw_uid


def grant_key(cli: AgentCli, name: str, public: str, request_id: str = "req-1") -> None:
    answer = cli.command("provisionAuthorizedKeys", name, request_id=request_id, public_key=public)
    assert answer.success, answer


def new_user_with_key(cli: AgentCli, public: str, request_id: str = "req-1") -> str:
    name = unique_user_name()
    grant_user(cli, name, request_id)
    grant_key(cli, name, public, request_id)
    return name


# --- users and keys ---------------------------------------------------------------------------------------------


def test_user_and_key_grant_gives_a_login_with_exact_account_and_file(
    cli: AgentCli, sshd: Sshd, user_keypair: tuple[Path, str], state_dir: Path
) -> None:
    key, public = user_keypair
    name = unique_user_name()
    created = cli.command("provisionUser", name, request_id="req-A1")
    assert created.success, created
    entry = pwd.getpwnam(name)
    assert created.message == f"User {name} created successfully with UID {entry.pw_uid}"
    assert 65536 <= entry.pw_uid <= 90000 and entry.pw_gid == entry.pw_uid
    assert grp.getgrgid(entry.pw_gid).gr_name == name
    assert entry.pw_shell == "/bin/bash" and entry.pw_dir == f"/home/{name}"
    assert shadow_entry(name)[1] == "*"  # key logins work without PAM, no password login

    added = cli.command("provisionAuthorizedKeys", name, request_id="req-A1", public_key=public)
    assert added.success and added.message == f"SSH public key added to /home/{name}/.ssh/authorized_keys successfully"
    for path, mode in ((Path(entry.pw_dir), 0o700), (Path(entry.pw_dir, ".ssh"), 0o700)):
        info = path.lstat()
        assert stat.S_ISDIR(info.st_mode) and stat.S_IMODE(info.st_mode) == mode, path
        assert (info.st_uid, info.st_gid) == (entry.pw_uid, entry.pw_gid), path
    keys = authorized_keys(name).lstat()
    assert stat.S_ISREG(keys.st_mode) and stat.S_IMODE(keys.st_mode) == 0o600
    assert (keys.st_uid, keys.st_gid) == (entry.pw_uid, entry.pw_gid)
    assert authorized_keys(name).read_bytes() == f"# RequestID: req-A1\n{public}\n".encode()
    assert logs_in(sshd, name, key)

    before = host_state(state_dir)
    again_user = cli.command("provisionUser", name, request_id="req-A1")
    again_key = cli.command("provisionAuthorizedKeys", name, request_id="req-A1", public_key=public)
    assert again_user.success and again_user.message == USER_EXISTS
    assert again_key.success and again_key.message == added.message
    assert changed(before, host_state(state_dir)) == []
    assert logs_in(sshd, name, key)


def test_key_revoke_refuses_the_login_and_keeps_the_users_own_lines_byte_for_byte(
    cli: AgentCli, sshd: Sshd, tmp_path: Path
) -> None:
    granted_key, granted = make_keypair(tmp_path, "granted")
    own_key, own = make_keypair(tmp_path, "own")
    _, later = make_keypair(tmp_path, "later")
    name = unique_user_name()
    grant_user(cli, name)
    entry = pwd.getpwnam(name)
    ssh_dir = Path(entry.pw_dir, ".ssh")
    ssh_dir.mkdir(mode=0o700)
    os.chown(ssh_dir, entry.pw_uid, entry.pw_gid)
    own_lines = f"# my laptop\n{own}\n\n".encode()
    authorized_keys(name).write_bytes(own_lines)
    os.chown(authorized_keys(name), entry.pw_uid, entry.pw_gid)
    authorized_keys(name).chmod(0o600)

    # Issue 14 item 5: the last live grant's revoke locks the account, which would refuse the user's own key too.
    # A sudo grant of another request keeps a live grant, so this test still sees the user's lines work.
    assert cli.command("provisionSudo", name, request_id="req-S1", sudo=True).success
    grant_key(cli, name, granted, "req-K1")
    # The user adds lines after ours, the last one without a final newline.
    with authorized_keys(name).open("ab") as file:
        file.write(f"# added later\n{later}".encode())
    assert logs_in(sshd, name, granted_key) and logs_in(sshd, name, own_key)

    revoked = cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-K1")
    assert (
        revoked.success
        and revoked.message == f"SSH public key removed from /home/{name}/.ssh/authorized_keys successfully"
    )
    assert authorized_keys(name).read_bytes() == own_lines + f"# added later\n{later}".encode()
    assert not logs_in(sshd, name, granted_key)
    assert logs_in(sshd, name, own_key)
    # A retried revoke (the backend retries on timeouts) succeeds and changes nothing.
    before = authorized_keys(name).read_bytes()
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-K1").success
    assert authorized_keys(name).read_bytes() == before


def test_grant_then_revoke_on_a_file_without_final_newline_restores_it_exactly(
    cli: AgentCli, sshd: Sshd, tmp_path: Path
) -> None:
    granted_key, granted = make_keypair(tmp_path, "granted")
    own_key, own = make_keypair(tmp_path, "own")
    name = unique_user_name()
    grant_user(cli, name)
    # Issue 14 item 5: a live grant of another request (sudo) keeps the account open after the key revokes.
    assert cli.command("provisionSudo", name, request_id="req-S0", sudo=True).success
    grant_key(cli, name, granted, "req-N0")  # creates ~/.ssh as the agent makes it
    original = f"{own}".encode()  # one line, no final newline
    authorized_keys(name).write_bytes(original)
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-N0").success
    assert authorized_keys(name).read_bytes() == original

    grant_key(cli, name, granted, "req-N1")
    assert logs_in(sshd, name, granted_key) and logs_in(sshd, name, own_key)
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-N1").success
    assert authorized_keys(name).read_bytes() == original
    assert not logs_in(sshd, name, granted_key)
    assert logs_in(sshd, name, own_key)


def test_legacy_go_agent_file_revokes_exactly_its_pairs(cli: AgentCli, sshd: Sshd, tmp_path: Path) -> None:
    """The Go agent wrote no blank lines, so its sed revoke ate every line after the marker; and it appended to a
    file without a final newline, gluing the marker to the user's line. Both must revoke exactly the pair."""
    keys = {label: make_keypair(tmp_path, label) for label in ("own", "go1", "mine", "go2", "tail", "go3")}
    name = unique_user_name()
    grant_user(cli, name)
    grant_key(cli, name, keys["go2"][1], "go-setup")  # the agent makes ~/.ssh; the file is replaced below
    legacy = (
        f"{keys['own'][1]}\n"
        f"# RequestID: go-1\n{keys['go1'][1]}\n"
        f"{keys['mine'][1]}\n"  # the user's key, added after the grant: upstream's revoke deleted it too
        f"# RequestID: go-2\n{keys['go2'][1]}\n"
        f"{keys['tail'][1]}# RequestID: go-3\n{keys['go3'][1]}\n"  # marker glued to a line without newline
    )
    authorized_keys(name).write_text(legacy)
    assert all(logs_in(sshd, name, keys[label][0]) for label in ("own", "go1", "mine", "go2", "tail", "go3"))

    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="go-1").success
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="go-3").success
    assert authorized_keys(name).read_text() == (
        f"{keys['own'][1]}\n{keys['mine'][1]}\n# RequestID: go-2\n{keys['go2'][1]}\n{keys['tail'][1]}\n"
    )
    assert not logs_in(sshd, name, keys["go1"][0]) and not logs_in(sshd, name, keys["go3"][0])
    assert all(logs_in(sshd, name, keys[label][0]) for label in ("own", "mine", "go2", "tail"))


# --- CA keys ------------------------------------------------------------------------------------------------------


def test_ca_grant_admits_certificates_for_the_user_only_and_revoke_removes_only_the_ca_line(
    cli: AgentCli, sshd: Sshd, test_ca: TestCA, tmp_path: Path
) -> None:
    plain_key, plain = make_keypair(tmp_path, "plain")
    # Neither key is in the file: only a certificate can let them in (ssh also picks up <key>-cert.pub by itself).
    cert_key, _ = make_keypair(tmp_path, "certified")
    wrong_key, _ = make_keypair(tmp_path, "wrong")
    name = unique_user_name()
    grant_user(cli, name, "req-C1")
    grant_key(cli, name, plain, "req-C1")
    ca = cli.command("provisionCAKeys", name, request_id="req-C1", ca_public_key=test_ca.public_line)
    ca_entry = f'cert-authority,principals="{name}" {test_ca.public_line}'
    assert ca.success and ca.message == (
        f"CA public key added to /home/{name}/.ssh/authorized_keys successfully with {ca_entry}"
    )
    both = f"# RequestID: req-C1\n{plain}\n# RequestID: req-C1\n{ca_entry}\n"
    assert authorized_keys(name).read_text() == both

    certificate = test_ca.sign(cert_key.with_name("certified.pub"), name)
    other_principal = test_ca.sign(wrong_key.with_name("wrong.pub"), "someone-else")
    assert logs_in(sshd, name, cert_key, cert=certificate)
    assert not logs_in(sshd, name, wrong_key, cert=other_principal)

    revoked = cli.command("provisionCAKeys", name, action="revoke", request_id="req-C1")
    assert (
        revoked.success
        and revoked.message == f"CA public key removed from /home/{name}/.ssh/authorized_keys successfully"
    )
    assert authorized_keys(name).read_text() == f"# RequestID: req-C1\n{plain}\n"
    assert not logs_in(sshd, name, cert_key, cert=certificate)
    assert logs_in(sshd, name, plain_key)


# --- sudo -----------------------------------------------------------------------------------------------------------


def sudo_over_ssh(sshd: Sshd, user: str, key: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    result = sshd.ssh(user, key, "/usr/bin/sudo", "-n", *argv)
    assert result.returncode != 255, f"the login itself failed: {result.stderr}"
    return result


def assert_dropin_sound() -> None:
    info = DROPIN.lstat()
    assert stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) == 0o440
    assert (info.st_uid, info.st_gid) == (0, 0)
    assert visudo_ok()


def test_sudo_grant_and_revoke_over_ssh(cli: AgentCli, sshd: Sshd, user_keypair: tuple[Path, str]) -> None:
    key, public = user_keypair
    name = new_user_with_key(cli, public, "req-S1")
    assert sudo_over_ssh(sshd, name, key, "true").returncode != 0  # no sudo before the grant

    granted = cli.command("provisionSudo", name, request_id="req-S1", sudo=True)
    assert granted.success and granted.message == (
        f"Sudo access granted successfully for rule: {name} ALL=(ALL) NOPASSWD: ALL"
    )
    assert_dropin_sound()
    assert sudo_over_ssh(sshd, name, key, "true").returncode == 0
    assert sudo_over_ssh(sshd, name, key, "id", "-u").stdout.strip() == "0"

    before = DROPIN.read_bytes()
    assert cli.command("provisionSudo", name, request_id="req-S1", sudo=True).success  # idempotent
    assert DROPIN.read_bytes() == before
    assert_dropin_sound()

    revoked = cli.command("provisionSudo", name, action="revoke", request_id="req-S1")
    assert revoked.success and revoked.message == "Sudo access revoked successfully for RequestID: req-S1"
    assert visudo_ok()
    assert not DROPIN.exists() or f"{name} " not in DROPIN.read_text()
    assert sudo_over_ssh(sshd, name, key, "true").returncode != 0
    assert logs_in(sshd, name, key)  # the login itself stays: only sudo went


def test_sudo_run_as_another_user_only(cli: AgentCli, sshd: Sshd, user_keypair: tuple[Path, str]) -> None:
    key, public = user_keypair
    name = new_user_with_key(cli, public, "req-R1")
    other = unique_user_name()
    grant_user(cli, other, "req-R0")

    granted = cli.command("provisionSudo", name, request_id="req-R1", sudo=True, run_as=other)
    assert granted.success and granted.message.endswith(f"{name} ALL=({other}) NOPASSWD: ALL")
    assert_dropin_sound()
    as_other = sudo_over_ssh(sshd, name, key, "-u", other, "id", "-un")
    assert as_other.returncode == 0 and as_other.stdout.strip() == other
    assert sudo_over_ssh(sshd, name, key, "true").returncode != 0  # not root

    assert cli.command("provisionSudo", name, action="revoke", request_id="req-R1").success
    assert visudo_ok()
    assert sudo_over_ssh(sshd, name, key, "-u", other, "true").returncode != 0


# --- provisionUser revoke modes -------------------------------------------------------------------------------------


def test_user_revoke_locks_and_a_regrant_unlocks(cli: AgentCli, sshd: Sshd, user_keypair: tuple[Path, str]) -> None:
    key, public = user_keypair
    name = new_user_with_key(cli, public, "req-L1")
    assert logs_in(sshd, name, key)

    revoked = cli.command("provisionUser", name, action="revoke", request_id="req-L1")
    assert revoked.success and revoked.message.startswith(f"User {name} locked and expired")
    fields = shadow_entry(name)
    assert fields[1].startswith("!") and fields[7] == "1"
    assert public in authorized_keys(name).read_text()  # the key is still there: the lock alone refuses it
    assert not logs_in(sshd, name, key)

    regrant = cli.command("provisionUser", name, request_id="req-L2")
    assert regrant.success and regrant.message == USER_EXISTS
    fields = shadow_entry(name)
    assert fields[1] == "*" and fields[7] == ""
    assert logs_in(sshd, name, key)


def test_user_revoke_delete_removes_account_group_and_home(
    sandbox: Sandbox, make_cli: MakeCli, sshd: Sshd, user_keypair: tuple[Path, str]
) -> None:
    key, public = user_keypair
    cli = make_cli(user_revoke_mode="delete")
    name = new_user_with_key(cli, public, "req-D1")
    assert logs_in(sshd, name, key)
    revoked = cli.command("provisionUser", name, action="revoke", request_id="req-D1")
    assert revoked.success and revoked.message.startswith(f"User {name} deleted")
    with pytest.raises(KeyError):
        pwd.getpwnam(name)
    with pytest.raises(KeyError):
        grp.getgrnam(name)
    assert not os.path.lexists(f"/home/{name}")
    again = cli.command("provisionUser", name, action="revoke", request_id="req-D1")
    assert again.success  # a retried revoke of a deleted user is still a success


def test_user_revoke_keep_changes_nothing(
    sandbox: Sandbox, make_cli: MakeCli, sshd: Sshd, user_keypair: tuple[Path, str], state_dir: Path
) -> None:
    key, public = user_keypair
    cli = make_cli(user_revoke_mode="keep")
    name = new_user_with_key(cli, public, "req-P1")
    before = host_state(state_dir)
    revoked = cli.command("provisionUser", name, action="revoke", request_id="req-P1")
    assert revoked.success and revoked.message == REVOKE_HANDLED
    assert changed(before, host_state(state_dir)) == []
    assert logs_in(sshd, name, key)


def test_user_with_a_grant_of_another_request_stays_active(cli: AgentCli, sshd: Sshd, tmp_path: Path) -> None:
    first_key, first = make_keypair(tmp_path, "first")
    second_key, second = make_keypair(tmp_path, "second")
    name = new_user_with_key(cli, first, "req-G1")
    grant_key(cli, name, second, "req-G2")
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-G1").success
    revoked = cli.command("provisionUser", name, action="revoke", request_id="req-G1")
    assert revoked.success and "still holds 1 other grant" in revoked.message
    assert not shadow_entry(name)[1].startswith("!") and shadow_entry(name)[7] == ""
    assert logs_in(sshd, name, second_key)
    assert not logs_in(sshd, name, first_key)


# --- sessions -------------------------------------------------------------------------------------------------------


def uid_processes(uid: int) -> list[int]:
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    pids.append(int(entry.name))
            except FileNotFoundError:
                continue
    return pids


def commands_of(pids: list[int]) -> list[bytes]:
    found = []
    for pid in pids:
        try:
            found.append(Path(f"/proc/{pid}/cmdline").read_bytes())
        except OSError:
            continue
    return found


@pytest.fixture
def background() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
        process.wait()


def test_session_revoke_ends_a_live_ssh_session(
    cli: AgentCli, sshd: Sshd, user_keypair: tuple[Path, str], background: list[subprocess.Popen[bytes]]
) -> None:
    key, public = user_keypair
    name = new_user_with_key(cli, public, "req-X1")
    uid = pwd.getpwnam(name).pw_uid
    session = subprocess.Popen(
        [SSH, "-p", str(sshd.port), "-i", str(key), "-o", "StrictHostKeyChecking=no",
         "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "LogLevel=ERROR", "-F", "/dev/null", "-l", name, "127.0.0.1", "--", "sleep 300"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=CHILD_ENV,
    )  # fmt: skip
    background.append(session)
    deadline = time.monotonic() + 30  # readiness wait for the login, not a timing assertion
    while not any(cmd.startswith(b"sleep\x00300\x00") for cmd in commands_of(uid_processes(uid))):
        assert session.poll() is None, "the ssh login failed"
        assert time.monotonic() < deadline, "the remote sleep never started"
        time.sleep(0.05)

    ended = cli.command("provisionSession", name, action="revoke", request_id="req-X1")
    assert ended.success, ended
    assert session.wait(timeout=30) != 0  # cut off: the remote sleep 300 never finished
    assert uid_processes(uid) == []


# --- ownership ------------------------------------------------------------------------------------------------------


def grant_everything(cli: AgentCli, name: str, public: str) -> list[str]:
    """provisionUser, provisionAuthorizedKeys and provisionSudo grants; the errors of those that failed."""
    answers = [
        cli.command("provisionUser", name, request_id="req-O1"),
        cli.command("provisionAuthorizedKeys", name, request_id="req-O1", public_key=public),
        cli.command("provisionSudo", name, request_id="req-O1", sudo=True),
    ]
    return [answer.error for answer in answers if not answer.success]


@pytest.mark.parametrize("name", ["root", "daemon"])
def test_system_accounts_are_refused_and_nothing_changes(
    cli: AgentCli, user_keypair: tuple[Path, str], state_dir: Path, name: str
) -> None:
    before = host_state(state_dir)
    errors = grant_everything(cli, name, user_keypair[1])
    assert len(errors) == 3
    for error in errors:
        assert "userName" in error and name in error, error
    assert changed(before, host_state(state_dir)) == []


def test_an_existing_user_is_refused_unless_adopted(
    sandbox: Sandbox, make_cli: MakeCli, sshd: Sshd, user_keypair: tuple[Path, str], state_dir: Path
) -> None:
    key, public = user_keypair
    name = unique_user_name()
    sandbox.useradd(name)
    cli = make_cli()
    before = host_state(state_dir)
    errors = grant_everything(cli, name, public)
    assert len(errors) == 3
    for error in errors:
        assert f"refusing to manage {name}" in error and "adoptUsers" in error, error
    assert changed(before, host_state(state_dir)) == []
    assert not logs_in(sshd, name, key)

    adopting = make_cli(adopt_users=(name,))
    assert grant_everything(adopting, name, public) == []
    assert logs_in(sshd, name, key)
    assert sudo_over_ssh(sshd, name, key, "true").returncode == 0
    # An adopted account loses its grants on revoke but is never locked: the agent did not create it.
    assert adopting.command("provisionSudo", name, action="revoke", request_id="req-O1").success
    assert adopting.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-O1").success
    assert not logs_in(sshd, name, key)


# --- symlinks -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["etc", "other-dir"])
def test_symlinked_ssh_dir_is_refused_and_nothing_outside_changes(
    cli: AgentCli, user_keypair: tuple[Path, str], state_dir: Path, tmp_path: Path, target: str
) -> None:
    public = user_keypair[1]
    name = unique_user_name()
    uid = grant_user(cli, name)
    if target == "etc":
        pointed = Path("/etc")
    else:  # a directory the user may own, e.g. a place they would like root to write in
        pointed = tmp_path / "elsewhere"
        pointed.mkdir()
        (pointed / "authorized_keys").write_text("# not the agent's to touch\n")
    link = Path(f"/home/{name}/.ssh")
    link.symlink_to(pointed)
    os.lchown(link, uid, uid)
    watched = (pointed, Path("/etc"), Path(f"/home/{name}"))
    before = tree_digest(*watched)
    ledger = tree_digest(state_dir / "ledger")

    for answer in (
        cli.command("provisionAuthorizedKeys", name, request_id="req-Y1", public_key=public),
        cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-Y1"),
    ):
        assert not answer.success and "symlink" in answer.error and ".ssh" in answer.error, answer
    assert changed(before, tree_digest(*watched)) == []
    # No grant recorded either: status, reconciliation and revoke-all would chase a key the host never held.
    assert changed(ledger, tree_digest(state_dir / "ledger")) == []
    assert link.is_symlink()
