"""The local policy on a real host (namespace sandbox: real useradd, visudo, sudo and sshd): a denied grant answers
403 naming the policy and changes nothing in /etc, /home or the state directory; revokes pass whatever the policy
says; facts come from the real accounts (managed, groups); a broken policy stops `start` with exit 78 and
file:line, and a SIGHUP with a broken policy keeps the old one."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import trio

from p0_ssh_agent.adapters.sdnotify import Notifier
from p0_ssh_agent.config import AgentConfig, load_config
from p0_ssh_agent.core.local_policy import PolicyError
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.policy_file import builtin_text
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.provisioning.pipeline import Pipeline, build_pipeline
from p0_ssh_agent.runtime.supervisor import Supervisor, prepare
from provisioning_support import AGENT, DROPIN, AgentCli, changed, host_state, make_keys, write_config
from sandbox.fixtures import CHILD_ENV, Sandbox, make_keypair, unique_user_name
from test_audit import JournalSink

pytestmark = pytest.mark.sandbox
STARTERS = Path(__file__).resolve().parent.parent / "docs" / "policies"


def config_with_policy(directory: Path, policy_text: str) -> Path:
    policy = directory / "policy.cedar"
    policy.write_text(policy_text)
    policy.chmod(0o644)
    config = write_config(directory, make_keys(directory / "agent"))
    with config.open("a") as out:
        out.write(f"policyFile: {policy}\n")
    return config


def test_a_denied_grant_answers_403_and_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_with_policy(tmp_path, builtin_text() + (STARTERS / "no-sudo.cedar").read_text())
    cli = AgentCli(config)
    name = unique_user_name()
    _, public = make_keypair(tmp_path)
    assert cli.command("provisionUser", name, request_id="req-P1").success
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-P1", public_key=public).success
    state = tmp_path / "state"
    before = host_state(state)

    denied = cli.command("provisionSudo", name, request_id="req-P1", sudo=True)
    assert denied.result["http_status"] == 403
    assert denied.result["error"] == (
        f"provisionSudo for user {name} denied by the local policy ({tmp_path / 'policy.cedar'}): "
        "forbidden by no-sudo-on-this-host"
    )
    as_root = cli.command("provisionSudo", name, request_id="req-P2", run_as="root")
    assert as_root.result["http_status"] == 403 and "p0-forbid-run-as-root" in str(as_root.result["error"])
    root = cli.command("provisionAuthorizedKeys", "root", request_id="req-P3", public_key=public)
    assert not root.success  # refused even before the policy: root is never a valid target
    assert changed(before, host_state(state)) == []
    assert not DROPIN.exists()

    # Revokes are never evaluated: the key goes even though this policy forbids sudo and would deny nothing else.
    revoked = cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-P1")
    assert revoked.success, revoked.result
    assert cli.command("provisionUser", name, action="revoke", request_id="req-P1").success


def test_facts_come_from_the_real_account(sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_with_policy(tmp_path, builtin_text() + (STARTERS / "sudo-group.cedar").read_text())
    cli = AgentCli(config)
    name = unique_user_name()
    assert cli.command("provisionUser", name, request_id="req-G1").success
    outsider = cli.command("provisionSudo", name, request_id="req-G1", sudo=True)
    assert outsider.result["http_status"] == 403 and "sudo-only-for-p0-admins" in str(outsider.result["error"])
    sandbox.run("/usr/sbin/groupadd", "-f", "p0-admins")
    sandbox.run("/usr/sbin/usermod", "-aG", "p0-admins", name)
    member = cli.command("provisionSudo", name, request_id="req-G1", sudo=True)
    assert member.success, member.result
    assert f"{name} ALL=(ALL) NOPASSWD: ALL" in DROPIN.read_text()
    assert cli.command("provisionSudo", name, action="revoke", request_id="req-G1").success
    assert cli.command("provisionUser", name, action="revoke", request_id="req-G1").success

    stranger = unique_user_name()  # an account the agent did not create: no permit matches
    sandbox.useradd(stranger)
    try:
        _, public = make_keypair(tmp_path, "stranger")
        refused = cli.command("provisionAuthorizedKeys", stranger, request_id="req-G2", public_key=public)
        assert refused.result["http_status"] == 403 and "default-deny" in str(refused.result["error"])
    finally:
        sandbox.userdel(stranger)


def test_start_refuses_a_broken_policy_with_78_and_the_line(sandbox: Sandbox, tmp_path: Path) -> None:
    config = config_with_policy(tmp_path, builtin_text() + "\nforbid (principal, action, resource) whn { true };\n")
    line = len(builtin_text().splitlines()) + 2
    done = subprocess.run(
        [str(AGENT), "start", "--config", str(config)],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78
    assert f"{tmp_path / 'policy.cedar'}:{line}: invalid policy condition: whn" in done.stderr


async def test_sighup_with_a_broken_policy_keeps_the_old_one(sandbox: Sandbox, tmp_path: Path) -> None:
    config_path = config_with_policy(tmp_path, builtin_text() + (STARTERS / "no-sudo.cedar").read_text())
    env = {"P0_SSH_AGENT_JOURNAL_SOCKET": ""}  # the supervisor's audit trail: not into the host's journal

    supervisor = Supervisor.create(
        prepare(load_config(config_path, env=env), env),
        reload_config=lambda: load_config(config_path, env=env),
        pipeline_factory=build_pipeline,
        notifier=Notifier(env),
        env=env,
    )

    def policy_ids() -> set[str]:
        pipeline = supervisor.worker.pipeline
        return set(pipeline.context.policy.lines)  # type: ignore[attr-defined]

    assert "no-sudo-on-this-host" in policy_ids()
    (tmp_path / "policy.cedar").write_text("forbid (principal, action, resource) whn { true };\n")
    await supervisor.reload()
    assert "no-sudo-on-this-host" in policy_ids()  # the broken file did not replace the working policy
    assert "policy.cedar:1: invalid policy condition" in supervisor.status_text

    (tmp_path / "policy.cedar").write_text(builtin_text())
    await supervisor.reload()
    assert "no-sudo-on-this-host" not in policy_ids() and "p0-forbid-root" in policy_ids()
    await trio.lowlevel.checkpoint()


async def test_building_a_supervisor_has_no_side_effects_create_loads_the_policy(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    """__init__ only wires parts together: it neither loads a policy nor opens journald's socket. `create` loads
    the policy (a broken one raises before anything runs) and `run` opens the socket."""
    config_path = config_with_policy(tmp_path, "forbid (principal, action, resource) whn { true };\n")
    sink = JournalSink(tmp_path)
    env = {"P0_SSH_AGENT_JOURNAL_SOCKET": str(sink.path)}
    prepared = prepare(load_config(config_path, env=env), env)
    built: list[object] = []

    def factory(config: AgentConfig, state_dir: Path, trail: AuditTrail) -> Pipeline:
        built.append(config)
        return build_pipeline(config, state_dir, trail)

    trail = AuditTrail.from_config(prepared.config, env)
    placeholder = Pipeline(ExecutionContext(prepared.config, prepared.state_dir, False, audit_trail=trail))
    supervisor = Supervisor(
        prepared,
        pipeline=placeholder,
        audit_trail=trail,
        reload_config=lambda: load_config(config_path, env=env),
        pipeline_factory=factory,
        notifier=Notifier(env),
        env=env,
    )
    assert built == [] and trail._journal is None  # nothing loaded, nothing opened
    assert supervisor.worker.pipeline is placeholder
    with pytest.raises(PolicyError, match="invalid policy condition"):
        Supervisor.create(
            prepared,
            reload_config=lambda: load_config(config_path, env=env),
            pipeline_factory=factory,
            notifier=Notifier(env),
            env=env,
        )
    assert len(built) == 1
    sink.close()
