"""The agent killed between `groupadd -g UID NAME` and `useradd` (tests/test_crash_points.py, provisionUser grant):
what the retry of the grant, or a revoke, makes of the group it left (issue 14 item 8).

Through the public path (run_change, real groupadd/useradd/groupdel in the namespace sandbox). The crash is made as
the crash-point test makes it: a forked agent armed (host/crashpoints.py) to die with SIGKILL just before useradd,
so the ledger holds the intent (name and UID, recorded ahead) and the host holds the group, GID = that UID, with no
member. That group, and only that one, is the agent's own half-made work: the retried grant puts the user into it
with the recorded UID, and a revoke removes it. A group of the name with another GID, with a member, or with no
intent in the ledger is someone else's and stays refused, and untouched.
"""

from __future__ import annotations

import contextlib
import grp
import os
import signal
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host import account_changes, crashpoints
from p0_ssh_agent.host.accounts import AccountConflict, _gid_taken
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import load_ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import Outcome, run_change
from sandbox.fixtures import Sandbox, pwd_entry, unique_user_name

pytestmark = pytest.mark.sandbox

GROUPADD = "/usr/sbin/groupadd"
GROUPDEL = "/usr/sbin/groupdel"
USERMOD = "/usr/sbin/usermod"
REFUSED = "refusing to put the new user into a group the agent did not create"


@dataclass
class Agent:
    state: Path
    revoke_mode: str = "delete"

    def engine(self, *, dry_run: bool = False) -> Engine:
        config = AgentConfig(state_dir=self.state, user_revoke_mode=self.revoke_mode)
        return Engine.for_run(config, self.state, dry_run=dry_run, audit_trail=AuditTrail.off())

    def user(self, action: str, name: str, *, dry_run: bool = False) -> Outcome:
        request = parse_change("provisionUser", {"userName": name, "requestId": "req-1", "action": action})
        return run_change(self.engine(dry_run=dry_run), request)

    def result(self, action: str, name: str) -> CommandResult:
        return self.user(action, name).result


def _group(name: str) -> grp.struct_group | None:
    try:
        return grp.getgrnam(name)
    except KeyError:
        return None


def _steps_of_a_grant(agent: Agent, sandbox: Sandbox) -> list[str]:
    """The effect steps of an uncrashed provisionUser grant on a fresh state directory (arm(0) only counts)."""
    name = unique_user_name()
    try:
        status, steps = _in_child(agent, name, 0)
        assert os.waitstatus_to_exitcode(status) == 0, steps
        return steps
    finally:
        sandbox.userdel(name)


def _in_child(agent: Agent, name: str, at_step: int) -> tuple[int, list[str]]:
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the agent: only the grant runs here
        os.close(read_end)
        code = 1
        try:
            crashpoints.arm(at_step)
            code = 0 if agent.result("grant", name).success else 1
        finally:
            os.write(write_end, "\n".join(crashpoints.taken()).encode())
            os._exit(code)
    os.close(write_end)
    with os.fdopen(read_end, "rb") as pipe:
        report = pipe.read().decode()
    _pid, status = os.waitpid(pid, 0)
    return status, report.split("\n") if report else []


@pytest.fixture
def crashed(sandbox: Sandbox, tmp_path: Path) -> Iterator[tuple[Agent, str, int]]:
    """An agent killed just before the useradd of a grant for a new user: (the agent, the name, the recorded UID)."""
    counting = Agent(tmp_path / "counting")
    steps = _steps_of_a_grant(counting, sandbox)
    useradd = next(k for k, step in enumerate(steps, 1) if step.startswith("run /usr/sbin/useradd"))
    assert steps[useradd - 2].startswith("run /usr/sbin/groupadd"), steps
    agent, name = Agent(tmp_path / "state"), unique_user_name()
    status, _steps = _in_child(agent, name, useradd)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL
    entry = load_ledger(agent.state).users[name]
    group = _group(name)
    assert pwd_entry(name) is None and not entry.adopted
    assert group is not None and group.gr_gid == entry.uid and group.gr_mem == []  # what the crash leaves
    try:
        yield agent, name, entry.uid
    finally:
        if pwd_entry(name) is not None:
            sandbox.userdel(name)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            sandbox.run(GROUPDEL, name)


def test_the_retried_grant_puts_the_user_into_the_group_it_left_with_the_recorded_uid(
    crashed: tuple[Agent, str, int],
) -> None:
    agent, name, uid = crashed
    high_water = load_ledger(agent.state).uid_high_water
    described = agent.user("grant", name, dry_run=True)
    assert described.result.success, described.result.error
    commands = described.description.text()
    assert "useradd" in commands and "groupadd" not in commands, commands

    result = agent.result("grant", name)
    assert result.success, result.error

    entry = pwd_entry(name)
    assert entry is not None and (entry.pw_uid, entry.pw_gid) == (uid, uid)
    assert grp.getgrgid(entry.pw_gid).gr_name == name
    ledger = load_ledger(agent.state)
    assert ledger.users[name].uid == uid and not ledger.users[name].adopted
    assert ledger.uid_high_water == high_water, "a fresh UID was allocated"
    assert Path(entry.pw_dir).stat().st_uid == uid
    again = agent.result("grant", name)
    assert again.success, again.error
    assert pwd_entry(name) == entry


@pytest.mark.parametrize("mode", ["delete", "lock"])
def test_a_revoke_after_the_crash_removes_the_group_it_left_and_forgets_the_intent(
    crashed: tuple[Agent, str, int], mode: str
) -> None:
    agent, name, _uid = crashed
    agent.revoke_mode = mode
    described = agent.user("revoke", name, dry_run=True)
    assert f"groupdel {name}" in described.description.text()
    assert _group(name) is not None, "a dry run removed the group"

    result = agent.result("revoke", name)
    assert result.success, result.error

    assert _group(name) is None
    assert name not in load_ledger(agent.state).users
    fresh = agent.result("grant", name)  # the name is free again: a new account, made as any other
    assert fresh.success, fresh.error
    assert pwd_entry(name) is not None


def _replace_with_another_gid(sandbox: Sandbox, name: str, uid: int) -> None:
    sandbox.run(GROUPDEL, name)
    other = next(gid for gid in range(uid + 100, uid + 1000) if not _gid_taken(gid))
    sandbox.run(GROUPADD, "-g", str(other), name)


def _add_a_member(sandbox: Sandbox, name: str, member: str) -> None:
    sandbox.useradd(member)
    sandbox.run(USERMOD, "-a", "-G", name, member)


@pytest.mark.parametrize("change", ["another-gid", "a-member"])
def test_a_group_of_the_name_that_is_not_the_one_it_left_stays_refused_and_untouched(
    crashed: tuple[Agent, str, int], sandbox: Sandbox, change: str
) -> None:
    agent, name, uid = crashed
    member = unique_user_name()
    try:
        if change == "another-gid":
            _replace_with_another_gid(sandbox, name, uid)
        else:
            _add_a_member(sandbox, name, member)
        before = _group(name)
        intent = load_ledger(agent.state).users

        result = agent.result("grant", name)
        assert not result.success and REFUSED in str(result.error), result
        assert pwd_entry(name) is None and _group(name) == before
        # The intent stays as it was (the UID the refused attempt allocated is burnt: the high-water mark, by design).
        assert load_ledger(agent.state).users == intent, "a refused grant changed the ledger's accounts"

        revoked = agent.result("revoke", name)  # the intent goes; someone else's group stays
        assert revoked.success, revoked.error
        assert _group(name) == before
        assert name not in load_ledger(agent.state).users
    finally:
        if pwd_entry(member) is not None:
            sandbox.userdel(member)


def test_a_group_of_the_name_with_no_intent_in_the_ledger_stays_refused(sandbox: Sandbox, tmp_path: Path) -> None:
    """The same group as a crash leaves (GID = the UID a grant would be given, no member), made by hand: with no
    intent in the ledger it is not the agent's."""
    agent, name = Agent(tmp_path / "state"), unique_user_name()
    probe = unique_user_name()
    try:
        assert agent.result("grant", probe).success  # learns the next UID: the one after probe's
        gid = load_ledger(agent.state).users[probe].uid + 1
        sandbox.run(GROUPADD, "-g", str(gid), name)

        result = agent.result("grant", name)
        assert not result.success and REFUSED in str(result.error), result
        assert pwd_entry(name) is None and _group(name) is not None
        assert name not in load_ledger(agent.state).users
        assert agent.result("revoke", name).success
        assert _group(name) is not None, "a revoke removed a group the agent never made"
    finally:
        for user in (probe, name):
            if pwd_entry(user) is not None:
                sandbox.userdel(user)
        with contextlib.suppress(KeyError):
            grp.getgrnam(name)
            sandbox.run(GROUPDEL, name)


def test_the_host_layer_checks_the_group_again_at_the_effect(crashed: tuple[Agent, str, int], sandbox: Sandbox) -> None:
    """The facts said the group was the agent's; by the time useradd or groupdel runs, it is not: refused there."""
    _agent, name, uid = crashed
    member = unique_user_name()
    try:
        _add_a_member(sandbox, name, member)
        with pytest.raises(AccountConflict, match="has members"):
            account_changes.create_user(name, uid=uid, leftover_group=True)
        with pytest.raises(AccountConflict, match="has members"):
            account_changes.delete_leftover_group(name, gid=uid)
        assert pwd_entry(name) is None and _group(name) is not None
        sandbox.userdel(member)
        with pytest.raises(AccountConflict, match=f"not the {uid + 1}"):
            account_changes.delete_leftover_group(name, gid=uid + 1)
        assert account_changes.delete_leftover_group(name, gid=uid) == [[GROUPDEL, name]]
        assert _group(name) is None
        assert account_changes.delete_leftover_group(name, gid=uid) == []  # gone already: not an error
    finally:
        if pwd_entry(member) is not None:
            sandbox.userdel(member)
