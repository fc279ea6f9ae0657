"""Issue 14 item 5: expiry and revocation end access, even through a key line the JIT user added themselves.

During a grant the user owns ~/.ssh/authorized_keys and may append a key of their own. Removing the agent's marked
pair alone leaves that key working; so when a revoke takes a created account's last grant (a key revoke, the
expiry sweep, `revoke-all`), the account is locked and its sessions ended (provisioning/access_ends.py). With
`userRevokeMode: keep` (the Go agent's behaviour) it is not, and `doctor` and `status` say so.

Real useradd/usermod and a real sshd (UsePAM no) in the namespace sandbox; skipped outside it.
"""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.expiry import sweep
from p0_ssh_agent.provisioning.pipeline import run_change
from provisioning_support import AGENT, AgentCli, authorized_keys, make_keys, shadow_entry, write_config
from sandbox.fixtures import CHILD_ENV, Sandbox, Sshd, make_keypair, unique_user_name
from test_provisioning_e2e import logs_in

pytestmark = pytest.mark.sandbox


@pytest.fixture(scope="module")
def agent_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("agent"))


def cli_for(tmp_path: Path, agent_keys: Path, mode: str | None = None) -> AgentCli:
    return AgentCli(write_config(tmp_path, agent_keys, user_revoke_mode=mode))


def granted_with_own_key(cli: AgentCli, sshd: Sshd, tmp_path: Path) -> tuple[str, Path, Path]:
    """A JIT user with the agent's key granted and a key line of their own appended: both log in."""
    name = unique_user_name()
    granted_key, granted_public = make_keypair(tmp_path / "granted")
    own_key, own_public = make_keypair(tmp_path / "own")
    assert cli.command("provisionUser", name, request_id="req-1").success
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-1", public_key=granted_public).success
    append_own_key(name, own_public)
    assert logs_in(sshd, name, granted_key) and logs_in(sshd, name, own_key)
    return name, granted_key, own_key


def append_own_key(name: str, public: str) -> None:
    """What the user can do in a file they own: append a line the agent never wrote (ownership stays theirs)."""
    with authorized_keys(name).open("a") as file:
        file.write(public.strip() + "\n")


def locked(name: str) -> bool:
    fields = shadow_entry(name)
    return fields[1].startswith("!") and fields[7] == "1"


@pytest.fixture
def keyless_dirs(tmp_path: Path) -> Path:
    for sub in ("granted", "own"):
        (tmp_path / sub).mkdir()
    return tmp_path


def test_a_key_revoke_ends_the_users_own_key_too(
    sandbox: Sandbox, sshd: Sshd, keyless_dirs: Path, agent_keys: Path
) -> None:
    cli = cli_for(keyless_dirs, agent_keys)  # userRevokeMode lock, the default
    name, granted_key, own_key = granted_with_own_key(cli, sshd, keyless_dirs)
    revoked = cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-1")
    assert revoked.success, revoked
    assert not logs_in(sshd, name, granted_key)
    assert not logs_in(sshd, name, own_key)  # the line the user added is still in the file, the account is locked
    assert "no grant left" in revoked.output and locked(name)
    # A later key grant alone (no provisionUser grant first) unlocks the created account again.
    _again, again_public = make_keypair(keyless_dirs / "granted", name="again")
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-2", public_key=again_public).success
    assert not locked(name) and logs_in(sshd, name, _again)


def test_a_revoke_that_leaves_a_sudo_grant_keeps_the_account_open(
    sandbox: Sandbox, sshd: Sshd, keyless_dirs: Path, agent_keys: Path
) -> None:
    cli = cli_for(keyless_dirs, agent_keys)
    name, _granted_key, own_key = granted_with_own_key(cli, sshd, keyless_dirs)
    assert cli.command("provisionSudo", name, request_id="req-2", sudo=True).success
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-1").success
    assert not locked(name) and logs_in(sshd, name, own_key)  # req-2 is a live grant still
    revoked = cli.command("provisionSudo", name, action="revoke", request_id="req-2")
    assert revoked.success, revoked
    assert not logs_in(sshd, name, own_key) and locked(name)


def test_the_expiry_sweep_ends_the_users_own_key_too(
    sandbox: Sandbox, sshd: Sshd, keyless_dirs: Path, agent_keys: Path
) -> None:
    state = keyless_dirs / "state"
    state.mkdir(mode=0o700)
    engine = Engine.on_host(AgentConfig(state_dir=state, max_grant_seconds=3600), state, audit_trail=AuditTrail.off())
    name = unique_user_name()
    granted_key, granted_public = make_keypair(keyless_dirs / "granted")
    own_key, own_public = make_keypair(keyless_dirs / "own")
    for command, fields in (("provisionUser", {}), ("provisionAuthorizedKeys", {"publicKey": granted_public})):
        data = {"command": command, "action": "grant", "requestId": "exp-1", "userName": name, **fields}
        assert run_change(engine, parse_change(command, data)).result.success
    append_own_key(name, own_public)
    assert logs_in(sshd, name, own_key)
    report = sweep(engine, datetime.now(UTC) + timedelta(hours=2))
    assert [g.request_id for g in report.revoked] == ["exp-1"] and not report.failed
    assert not logs_in(sshd, name, own_key) and not logs_in(sshd, name, granted_key) and locked(name)


def test_revoke_all_ends_the_users_own_key_too(
    sandbox: Sandbox, sshd: Sshd, keyless_dirs: Path, agent_keys: Path
) -> None:
    cli = cli_for(keyless_dirs, agent_keys)
    name, _granted_key, own_key = granted_with_own_key(cli, sshd, keyless_dirs)
    done = cli.revoke_all()
    assert done.returncode == 0, done.stdout + done.stderr
    assert not logs_in(sshd, name, own_key) and locked(name)


def test_keep_mode_leaves_the_users_own_key_and_doctor_and_status_say_so(
    sandbox: Sandbox, sshd: Sshd, keyless_dirs: Path, agent_keys: Path
) -> None:
    cli = cli_for(keyless_dirs, agent_keys, mode="keep")
    name, granted_key, own_key = granted_with_own_key(cli, sshd, keyless_dirs)
    revoked = cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-1")
    assert revoked.success and "no grant left" not in revoked.output
    assert not locked(name)
    assert not logs_in(sshd, name, granted_key)
    assert logs_in(sshd, name, own_key)  # the Go agent's behaviour, chosen: and said plainly below
    said = "keys a JIT user added to their own ~/.ssh/authorized_keys survive"
    for argv in (["doctor", "--offline"], ["status"]):
        done = subprocess.run(
            [str(AGENT), *argv, "--config", str(cli.config)],
            capture_output=True,
            text=True,
            env=CHILD_ENV,
            timeout=120,
            check=False,
        )
        assert said in done.stdout, (argv, done.stdout, done.stderr)
