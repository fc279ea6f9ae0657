"""core.new_accounts: the names a NEW account may have, and the same rule through `p0-ssh-agent command` in the
sandbox (real useradd): `_p0svc` and `postgres` are refused with nothing changed, while an adopted account called
`_...` keeps working (adoptUsers keeps its own rules)."""

from __future__ import annotations

import pwd
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p0_ssh_agent.core.new_accounts import (
    GO_AGENT_USER_NAME_RE,
    SERVICE_ACCOUNT_PREFIXES,
    SERVICE_ACCOUNTS,
    new_account_refusal,
)
from p0_ssh_agent.core.requests import RESERVED_USER_NAMES, USER_NAME_RE, parse_request
from provisioning_support import AgentCli, authorized_keys, changed, host_state, make_keys, write_config
from sandbox.fixtures import Sandbox, unique_user_name

GO_PREFIX = "invalid username format: must match ^[a-z][-a-z0-9_]*$"


def test_a_leading_underscore_is_refused_with_the_go_agents_message_first() -> None:
    refusal = new_account_refusal("_p0svc")
    assert refusal is not None
    assert refusal.startswith(GO_PREFIX + " (")
    assert '"_p0svc"' in refusal and "must start with a lowercase letter" in refusal


@pytest.mark.parametrize("name", ["postgres", "mysql", "nobody", "sshd", "messagebus", "systemd-oom",
                                  "systemd-anything-new", "redis", "nginx"])  # fmt: skip
def test_service_account_names_are_reserved_with_a_reason(name: str) -> None:
    refusal = new_account_refusal(name)
    assert refusal is not None
    assert refusal.startswith(f"invalid userName: refusing to create {name}: the name is reserved for the service")
    assert "choose another name" in refusal


@pytest.mark.parametrize("name", ["alice", "aaron-keisler_p0", "p0t0123456789", "a", "postgresql-user", "systemd"])
def test_ordinary_names_may_be_created(name: str) -> None:
    assert new_account_refusal(name) is None


def test_every_listed_name_is_one_a_request_could_carry() -> None:
    """An entry the parser or the Go pattern would refuse anyway protects nothing: the list must not rot."""
    syntax, go = re.compile(USER_NAME_RE), re.compile(GO_AGENT_USER_NAME_RE)
    for name, reason in SERVICE_ACCOUNTS.items():
        assert syntax.fullmatch(name) and go.fullmatch(name), name
        assert reason and name not in RESERVED_USER_NAMES, name  # the base reserved list has its own reason
    assert all(go.fullmatch(prefix.rstrip("-")) for prefix in SERVICE_ACCOUNT_PREFIXES)


@given(st.from_regex(r"[a-z][a-z0-9_-]{0,31}", fullmatch=True))
def test_the_rule_is_the_go_pattern_plus_the_reserved_lists(name: str) -> None:
    prefixed = name.startswith(tuple(SERVICE_ACCOUNT_PREFIXES))
    reserved = name in SERVICE_ACCOUNTS or name in RESERVED_USER_NAMES or prefixed
    assert (new_account_refusal(name) is not None) == reserved


def test_parsing_still_admits_the_names_adopted_accounts_may_have() -> None:
    """The request parser keeps USER_NAME_RE: a key for an adopted `_backup` or `postgres` is not refused there."""
    for name in ("_backup", "postgres"):
        request = parse_request("provisionUser", {"userName": name, "action": "grant", "requestId": "r1"})
        assert request.user == name  # type: ignore[union-attr]


# --- through `p0-ssh-agent command` in the sandbox ------------------------------------------------------------------


@pytest.fixture
def cli(tmp_path: Path) -> AgentCli:
    return AgentCli(write_config(tmp_path, make_keys(tmp_path)))


def absent(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return True
    return False


@pytest.mark.sandbox
@pytest.mark.parametrize("pick", ["_p0svc", "service-1", "service-2", "systemd-p0"])
def test_the_backend_cannot_create_a_reserved_or_underscore_account(
    sandbox: Sandbox, cli: AgentCli, tmp_path: Path, pick: str
) -> None:
    # Service names that do not exist here (the sandbox's /etc is the machine's: it may have postgres already, and
    # an existing system account is refused by another rule).
    services = [name for name in SERVICE_ACCOUNTS if absent(name)]
    name = services[int(pick[-1]) - 1] if pick.startswith("service-") else pick
    assert absent(name)
    before = host_state(tmp_path / "state")
    for dry_run in (True, False):
        answer = cli.command("provisionUser", name, request_id="req-1", dry_run=dry_run)
        assert not answer.success, answer
        assert name in answer.error
        assert answer.error.startswith(GO_PREFIX if name.startswith("_") else "invalid userName"), answer.error
    assert changed(before, host_state(tmp_path / "state")) == []
    with pytest.raises(KeyError):
        pwd.getpwnam(name)


@pytest.mark.sandbox
def test_an_adopted_underscore_account_is_still_managed(
    sandbox: Sandbox, tmp_path: Path, user_keypair: tuple[Path, str]
) -> None:
    name = "_" + unique_user_name()
    sandbox.useradd(name)
    try:
        cli = AgentCli(write_config(tmp_path, make_keys(tmp_path), adopt_users=(name,)))
        granted = cli.command("provisionUser", name, request_id="req-1")
        assert granted.success and granted.message == "User already exists", granted
        assert cli.command("provisionAuthorizedKeys", name, request_id="req-1", public_key=user_keypair[1]).success
        assert b"# RequestID: req-1" in authorized_keys(name).read_bytes()
    finally:
        sandbox.userdel(name)
