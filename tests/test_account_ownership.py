"""Issue 14 item 1: lock state and existence change only for accounts the ledger says the agent created.

Through `p0-ssh-agent command` and `p0-ssh-agent adopt` with real useradd/usermod/userdel in the namespace sandbox:
an account that merely looks like one of P0's Go agent's (UID = GID in 65536-90000, a group of its name) but was
made by hand is not the agent's; an adoptUsers account gets keys and sudo rules only, never a lock, an unlock or
userdel; and the Go agent's real accounts are adopted (keys and sudo only too) by an admin's explicit command, on
the evidence of their rule in the root-owned /etc/sudoers-p0. Outside the sandbox every test here is skipped.
"""

from __future__ import annotations

import json
import pwd
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from provisioning_support import AgentCli, changed, host_state, make_keys, shadow_entry, write_config
from sandbox.fixtures import USERMOD, Sandbox, Sshd, unique_user_name

pytestmark = pytest.mark.sandbox

GROUPADD = "/usr/sbin/groupadd"
LEGACY = Path("/etc/sudoers-p0")
MakeCli = Callable[..., AgentCli]


@pytest.fixture
def make_cli(sandbox: Sandbox, tmp_path: Path) -> MakeCli:
    keys = make_keys(tmp_path)

    def make(*, adopt_users: tuple[str, ...] = (), user_revoke_mode: str | None = None) -> AgentCli:
        name = f"config-{len(list(tmp_path.glob('config-*')))}.yaml"
        config = write_config(tmp_path, keys, adopt_users=adopt_users, user_revoke_mode=user_revoke_mode, name=name)
        return AgentCli(config)

    return make


@pytest.fixture
def accounts(sandbox: Sandbox) -> Iterator[list[str]]:
    """Names the test made: deleted afterwards, whatever the agent did to them."""
    made: list[str] = []
    yield made
    for name in made:
        if _exists(name):
            sandbox.userdel(name)


@pytest.fixture
def make_lookalike(sandbox: Sandbox, accounts: list[str]) -> Callable[[], str]:
    return lambda: go_agent_lookalike(sandbox, accounts)


@pytest.fixture
def legacy_file() -> Iterator[Path]:
    """/etc/sudoers-p0 as the Go agent left it (root-owned, 0440), removed afterwards."""
    yield LEGACY
    LEGACY.unlink(missing_ok=True)


def _exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


_next_uid = [88000]


def go_agent_lookalike(sandbox: Sandbox, made: list[str]) -> str:
    """An account shaped like the Go agent's (UID = GID in its range, a group of its name), made by hand."""
    name = unique_user_name()
    while True:
        uid = _next_uid[0] = _next_uid[0] + 1
        try:
            pwd.getpwuid(uid)
        except KeyError:
            break
    sandbox.run(GROUPADD, "-g", str(uid), name)
    sandbox.run("/usr/sbin/useradd", "-m", "-u", str(uid), "-g", str(uid), "-s", "/bin/bash", name)
    sandbox.run(USERMOD, "-p", "*", name)  # as the Go agent left it: key logins work
    made.append(name)
    return name


def lock_by_hand(sandbox: Sandbox, name: str) -> list[str]:
    sandbox.run(USERMOD, "-L", "-e", "1", name)
    entry = shadow_entry(name)
    assert entry[1].startswith("!") and entry[7] == "1", entry
    return entry


def ledger_account(cli: AgentCli, name: str) -> object:
    path = cli.config.parent / "state" / "ledger" / "users" / f"{name}.json"
    if not path.exists():
        return None
    return json.loads(path.read_text())["account"]


# --- accounts the agent did not create ------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["lock", "delete"])
def test_a_hand_made_go_agent_lookalike_is_never_locked_or_deleted_by_a_revoke(
    sandbox: Sandbox, make_cli: MakeCli, accounts: list[str], mode: str
) -> None:
    name = go_agent_lookalike(sandbox, accounts)
    cli = make_cli(user_revoke_mode=mode)
    shadow = shadow_entry(name)
    ledger = cli.config.parent / "state" / "ledger"
    before = host_state(ledger)
    answer = cli.command("provisionUser", name, action="revoke", request_id="req-G1")
    assert answer.success, answer  # nothing of ours to take away: the backend's retries stay quiet
    assert _exists(name) and shadow_entry(name) == shadow
    # Nothing in /etc, /home or the ledger (not even an adoption); a revoke takes the user's lock, whose file stays.
    assert changed(before, host_state(ledger)) == []


def test_a_hand_made_go_agent_lookalike_is_not_unlocked_by_a_grant(
    sandbox: Sandbox, make_cli: MakeCli, accounts: list[str]
) -> None:
    name = go_agent_lookalike(sandbox, accounts)
    locked = lock_by_hand(sandbox, name)
    cli = make_cli()
    answer = cli.command("provisionUser", name, request_id="req-G2")
    assert not answer.success and f"refusing to manage {name}" in answer.error, answer
    assert "p0-ssh-agent adopt" in answer.error, answer  # the way out for a host migrating from the Go agent
    assert shadow_entry(name) == locked
    assert ledger_account(cli, name) is None


@pytest.mark.parametrize("mode", ["lock", "delete"])
def test_an_adopt_users_account_is_never_locked_unlocked_or_deleted(
    sandbox: Sandbox, make_cli: MakeCli, accounts: list[str], user_keypair: tuple[Path, str], mode: str
) -> None:
    name = unique_user_name()
    sandbox.useradd(name)
    accounts.append(name)
    cli = make_cli(adopt_users=(name,), user_revoke_mode=mode)
    shadow = shadow_entry(name)
    assert cli.command("provisionUser", name, request_id="req-A1").success
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-A1", public_key=user_keypair[1]).success
    assert shadow_entry(name) == shadow
    # Its grants go on revoke (their own commands); the account itself stays exactly as it was.
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-A1").success
    revoked = cli.command("provisionUser", name, action="revoke", request_id="req-A1")
    assert revoked.success and "adopted" in revoked.message, revoked
    assert _exists(name) and shadow_entry(name) == shadow
    assert ledger_account(cli, name) is not None  # still adopted: the agent may grant it keys again


def test_an_admins_lock_on_an_adopted_account_survives_a_grant(
    sandbox: Sandbox, make_cli: MakeCli, accounts: list[str], user_keypair: tuple[Path, str]
) -> None:
    name = unique_user_name()
    sandbox.useradd(name)
    accounts.append(name)
    cli = make_cli(adopt_users=(name,))
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-L1", public_key=user_keypair[1]).success
    locked = lock_by_hand(sandbox, name)
    answer = cli.command("provisionUser", name, request_id="req-L2")
    assert answer.success and answer.message == "User already exists", answer
    assert shadow_entry(name) == locked


# --- adopting the Go agent's accounts --------------------------------------------------------------------------


def test_adopt_lists_and_adopts_a_go_agent_account_with_its_sudoers_p0_rule_and_refuses_one_without(
    make_cli: MakeCli, make_lookalike: Callable[[], str], legacy_file: Path, sshd: Sshd, user_keypair: tuple[Path, str]
) -> None:
    made_by_go = make_lookalike()
    hand_made = make_lookalike()
    legacy_file.write_text(f"# RequestID: go-7\n{made_by_go} ALL=(ALL) NOPASSWD: ALL\n")
    legacy_file.chmod(0o440)
    cli = make_cli(user_revoke_mode="delete")

    listed = cli.adopt("--list")
    assert listed.returncode == 0, listed
    lines = {line.split()[0]: line for line in listed.stdout.splitlines() if line.split()}
    assert made_by_go in lines and "/etc/sudoers-p0" in lines[made_by_go] and "go-7" in lines[made_by_go], listed
    assert hand_made in lines and "no evidence" in lines[hand_made], listed
    assert ledger_account(cli, made_by_go) is None  # listing changes nothing

    refused = cli.adopt(hand_made)
    assert refused.returncode != 0 and hand_made in refused.stderr + refused.stdout, refused
    assert ledger_account(cli, hand_made) is None

    adopted = cli.adopt(made_by_go)
    assert adopted.returncode == 0, adopted
    assert ledger_account(cli, made_by_go) == {
        "uid": pwd.getpwnam(made_by_go).pw_uid,
        "created_at": ledger_account(cli, made_by_go)["created_at"],  # type: ignore[index]
        "adopted": True,
    }
    assert cli.adopt(made_by_go).returncode == 0  # again: already adopted, nothing to do

    # Adopted: keys and sudo rules only. A key grant works; a revoke in delete mode leaves the account.
    key, public = user_keypair
    assert cli.command("provisionAuthorizedKeys", made_by_go, request_id="req-M1", public_key=public).success
    assert sshd.ssh(made_by_go, key, "true").returncode == 0
    shadow = shadow_entry(made_by_go)
    assert cli.command("provisionAuthorizedKeys", made_by_go, action="revoke", request_id="req-M1").success
    assert cli.command("provisionUser", made_by_go, action="revoke", request_id="req-M1").success
    assert _exists(made_by_go) and shadow_entry(made_by_go) == shadow
