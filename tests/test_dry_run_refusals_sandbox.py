"""Issue 14 item 7, through `p0-ssh-agent command` in the namespace sandbox: a dry run refuses what a real run
refuses, with the same answer.

* A key grant for an account that does not exist fails for real; it used to succeed in a dry run ("does not exist
  yet (provisionUser creates it)"). Both now fail with the same error.
* A sudo grant on a host without /etc/sudoers.d: both modes are refused with 412 and a message that says sudo is
  not usable and how to fix it (a dry run answered 500, a bare "cannot edit ... does not exist").
* A dry-run key grant for an account that exists still prints the plan and changes nothing (it moved here from
  tests/test_cli.py, which has no account to grant to outside the sandbox).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from provisioning_support import DROPIN, AgentCli, authorized_keys, make_keys, tree_digest, write_config
from sandbox.fixtures import Sandbox, make_keypair, unique_user_name

pytestmark = pytest.mark.sandbox
SUDOERS_D = Path("/etc/sudoers.d")


@pytest.fixture
def cli(sandbox: Sandbox, tmp_path: Path) -> AgentCli:
    return AgentCli(write_config(tmp_path, make_keys(tmp_path)))


@pytest.fixture
def without_sudoers_d(sandbox: Sandbox, tmp_path: Path) -> Iterator[None]:
    """The sandbox's /etc/sudoers.d moved away (sudo installed without its drop-in directory), put back after."""
    aside = Path("/etc/.sudoers.d-aside")
    SUDOERS_D.rename(aside)
    try:
        yield
    finally:
        aside.rename(SUDOERS_D)


def host_and_ledger(tmp_path: Path) -> dict[str, str]:
    """/etc and the state directory but its lock files (a real run takes the user's lock before it is refused)."""
    digest = tree_digest(Path("/etc"), tmp_path / "state")
    return {path: value for path, value in digest.items() if "/state/locks/" not in path}


def test_a_key_grant_for_a_missing_account_is_refused_alike_in_a_dry_run(cli: AgentCli, tmp_path: Path) -> None:
    _, public = make_keypair(tmp_path)
    name = unique_user_name()
    before = tree_digest(Path("/etc"), Path("/home"), tmp_path / "state")
    dry = cli.command("provisionAuthorizedKeys", name, public_key=public, request_id="k1", dry_run=True)
    real = cli.command("provisionAuthorizedKeys", name, public_key=public, request_id="k1")
    assert not dry.success and not real.success, (dry, real)
    assert dry.error == real.error == f"user {name} not found: user: unknown user {name}"
    assert dry.result.get("http_status") == real.result.get("http_status")
    assert "DRY-RUN" not in dry.message
    assert tree_digest(Path("/etc"), Path("/home"), tmp_path / "state") == before


@pytest.mark.usefixtures("without_sudoers_d")
def test_a_sudo_grant_without_sudoers_d_is_a_412_in_both_modes(cli: AgentCli, tmp_path: Path) -> None:
    name = unique_user_name()
    assert cli.command("provisionUser", name, request_id="u1").success
    before = host_and_ledger(tmp_path)
    answers = [cli.command("provisionSudo", name, sudo=True, request_id="s1", dry_run=dry) for dry in (True, False)]
    for answer in answers:
        assert not answer.success and answer.result.get("http_status") == 412, answer
        assert answer.error.startswith("cannot use /etc/sudoers.d: No such file or directory; is sudo installed?")
        assert "install -d -m 750 /etc/sudoers.d" in answer.error
    assert answers[0].error == answers[1].error
    assert host_and_ledger(tmp_path) == before  # the real refusal left no trace either
    assert not DROPIN.exists()


def test_a_dry_run_key_grant_for_an_existing_account_prints_the_plan_and_changes_nothing(
    cli: AgentCli, tmp_path: Path
) -> None:
    _, public = make_keypair(tmp_path)
    name = unique_user_name()
    assert cli.command("provisionUser", name, request_id="u1").success
    before = tree_digest(Path("/etc"), Path("/home"), tmp_path / "state")
    answer = cli.command("provisionAuthorizedKeys", name, public_key=public, request_id="k1", dry_run=True)
    assert answer.success, answer
    assert answer.message.startswith("DRY-RUN: ")
    assert public in answer.output and "k1" in answer.output
    assert tree_digest(Path("/etc"), Path("/home"), tmp_path / "state") == before
    assert not authorized_keys(name).exists()
