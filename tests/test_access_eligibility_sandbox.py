"""agent_access/eligibility.py: which accounts agent access may run as, whatever the policy says.

The sandbox tests make real accounts with useradd, usermod and groupadd (run them with
`tests/sandbox/enter .venv/bin/pytest -q tests/test_access_eligibility_sandbox.py`): a normal account is allowed;
root, a system account, an expired account, a nologin shell, members of sudo and docker (also as the primary
group) and an account not listed are refused. The pure rules and the shadow reading run in the unit tier too.
"""

from __future__ import annotations

import grp
import os
from dataclasses import replace
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from p0_ssh_agent.agent_access.access_model import RefusalKind, TargetAccount
from p0_ssh_agent.agent_access.eligibility import ROOT_EQUIVALENT_GROUPS, read_account, refusal_for
from sandbox.fixtures import USERADD, USERMOD, Sandbox, new_account, unique_user_name

NORMAL = TargetAccount("deploy", 1001, 1001, "/home/deploy", "/bin/bash", ("deploy",), locked=False, system=False)


def kind(account: TargetAccount | None, name: str = "deploy", listed: tuple[str, ...] = ("deploy",)) -> str | None:
    refusal = refusal_for(account, name=name, listed=listed)
    return None if refusal is None else refusal.kind.value


# --- the pure rules ---------------------------------------------------------------------------------------------


def test_the_rules_in_their_order() -> None:
    assert kind(NORMAL) is None
    assert kind(NORMAL, listed=()) == RefusalKind.DISABLED
    assert kind(NORMAL, listed=("web",)) == RefusalKind.DISABLED
    assert kind(None) == RefusalKind.ACCOUNT
    assert kind(None, listed=()) == RefusalKind.DISABLED  # not listed is said first: it says nothing of the host
    assert kind(replace(NORMAL, uid=0)) == RefusalKind.ACCOUNT
    root = replace(NORMAL, name="root", uid=0, gid=0, groups=("root",), system=True)
    refusal = refusal_for(root, name="root", listed=("root",))
    assert refusal is not None and "is root" in refusal.message  # listed or not, root is never allowed
    assert kind(replace(NORMAL, system=True)) == RefusalKind.ACCOUNT
    assert kind(replace(NORMAL, locked=True)) == RefusalKind.ACCOUNT
    for group in ROOT_EQUIVALENT_GROUPS:
        refusal = refusal_for(replace(NORMAL, groups=("deploy", group)), name="deploy", listed=("deploy",))
        assert refusal is not None and refusal.kind is RefusalKind.ACCOUNT and group in refusal.message
    assert kind(replace(NORMAL, groups=("deploy", "www-data", "users", "incus"))) is None


def test_the_root_equivalent_groups_include_the_issues_and_each_says_why() -> None:
    assert {"sudo", "wheel", "adm", "docker", "lxd", "disk"} <= ROOT_EQUIVALENT_GROUPS.keys()
    assert all(reason for reason in ROOT_EQUIVALENT_GROUPS.values())


def test_shadow_expiry_is_read_from_the_file(tmp_path: Path) -> None:
    """root exists on every host, so its passwd entry is real; the shadow file is this test's."""
    shadow = tmp_path / "shadow"
    cases = {"": False, "1": True, "0": False, "99999": False, "junk": False}
    for expire, locked in cases.items():
        shadow.write_text(f"daemon:*:19000:0:99999:7:::\nroot:!:19000:0:99999:7::{expire}:\n")
        account = read_account("root", shadow=str(shadow))
        assert account is not None and account.locked is locked, expire
    shadow.write_text("rootx:*:1:0:99999:7::1:\n")  # another account's line, sharing the name's first letters
    account = read_account("root", shadow=str(shadow))
    assert account is not None and not account.locked


def test_an_unreadable_shadow_is_not_a_lock_but_is_said(tmp_path: Path) -> None:
    with capture_logs() as logs:
        account = read_account("root", shadow=str(tmp_path / "missing"))
    assert account is not None and not account.locked
    assert [entry["event"] for entry in logs] == ["shadow_unreadable"]
    assert logs[0]["treated_as"] == "not expired"
    link = tmp_path / "link"
    link.symlink_to("/etc/shadow")
    with capture_logs() as logs:
        read_account("root", shadow=str(link))
    assert [entry["event"] for entry in logs] == ["shadow_unreadable"]  # never followed


def test_names_nss_does_not_know_are_none() -> None:
    assert read_account("p0-no-such-account") is None
    assert read_account("root\x00x") is None


# --- real accounts in the sandbox ---------------------------------------------------------------------------------


def judged(name: str, listed: tuple[str, ...] | None = None) -> tuple[str | None, str]:
    refusal = refusal_for(read_account(name), name=name, listed=(name,) if listed is None else listed)
    return (None, "") if refusal is None else (refusal.kind.value, refusal.message)


@pytest.mark.sandbox
def test_a_normal_account_is_allowed_and_read_whole(sandbox: Sandbox, made_accounts: list[str]) -> None:
    name = new_account(sandbox, made_accounts, "-s", "/bin/bash")
    account = read_account(name)
    assert account is not None
    assert (account.name, account.shell, account.home, account.locked, account.system) == (
        name, "/bin/bash", f"/home/{name}", False, False,
    )  # fmt: skip
    assert account.uid >= 1000 and account.groups[0] == grp.getgrgid(account.gid).gr_name
    assert judged(name) == (None, "")
    # A key-only account keeps useradd's "!" password field: that is not a lock.
    key_only = new_account(sandbox, made_accounts, "-s", "/bin/bash", key_login=False)
    assert judged(key_only) == (None, "")


@pytest.mark.sandbox
def test_an_account_not_listed_is_disabled(sandbox: Sandbox, made_accounts: list[str]) -> None:
    name = new_account(sandbox, made_accounts)
    assert judged(name, listed=("someone-else",))[0] == RefusalKind.DISABLED
    assert judged(name, listed=())[0] == RefusalKind.DISABLED


@pytest.mark.sandbox
def test_root_is_refused(sandbox: Sandbox) -> None:
    account = read_account("root")
    assert account is not None and account.uid == 0 and "root" in account.groups
    refused, message = judged("root")
    assert refused == RefusalKind.ACCOUNT and "is root" in message


@pytest.mark.sandbox
def test_a_system_account_is_refused(sandbox: Sandbox, made_accounts: list[str]) -> None:
    name = unique_user_name()
    sandbox.run(USERADD, "--system", "-s", "/bin/bash", name)
    made_accounts.append(name)
    account = read_account(name)
    assert account is not None and account.system and account.uid < 1000
    refused, message = judged(name)
    assert refused == RefusalKind.ACCOUNT and "system account" in message
    daemon = read_account("daemon")
    assert daemon is not None and daemon.system


@pytest.mark.sandbox
def test_an_expired_account_is_refused(sandbox: Sandbox, made_accounts: list[str]) -> None:
    name = new_account(sandbox, made_accounts, "-s", "/bin/bash")
    assert judged(name) == (None, "")
    sandbox.run(USERMOD, "--expiredate", "1", name)
    refused, message = judged(name)
    assert refused == RefusalKind.ACCOUNT and "locked" in message
    sandbox.run(USERMOD, "--expiredate", "", name)  # cleared: allowed again
    assert judged(name) == (None, "")


@pytest.mark.sandbox
@pytest.mark.parametrize("shell", ["/usr/sbin/nologin", "/bin/false"])
def test_a_shell_that_refuses_logins_is_refused(sandbox: Sandbox, made_accounts: list[str], shell: str) -> None:
    name = new_account(sandbox, made_accounts, "-s", shell)
    account = read_account(name)
    assert account is not None and account.locked and account.shell == shell
    assert judged(name)[0] == RefusalKind.ACCOUNT


@pytest.mark.sandbox
@pytest.mark.parametrize("group", ["sudo", "docker"])
def test_members_of_root_equivalent_groups_are_refused(
    sandbox: Sandbox, made_accounts: list[str], added_groups: list[str], group: str
) -> None:
    sandbox.ensure_group(group, added_groups)
    supplementary = new_account(sandbox, made_accounts, "-s", "/bin/bash", "-G", group)
    primary = new_account(sandbox, made_accounts, "-s", "/bin/bash", "-N", "-g", group)  # only its primary group
    for name in (supplementary, primary):
        account = read_account(name)
        assert account is not None and group in account.groups, name
        refused, message = judged(name)
        assert refused == RefusalKind.ACCOUNT and f"root-equivalent group: {group}" in message
    assert os.getgrouplist(primary, grp.getgrnam(group).gr_gid) == [grp.getgrnam(group).gr_gid]
