"""Agent access in the daemon's start-up and reload (runtime/supervisor.py, runtime/access_lane.py): its policy and
trust file load before READY=1 when agentAccess is on (a bad one is exit 78), a SIGHUP applies the kill switch, and a
reload with a bad file keeps the pipeline in force, saying why, as the main policy does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import trio

from access_tokens import key
from daemon_helpers import AGENT, BASE_ENV, keygen, write_config
from p0_ssh_agent.adapters.sdnotify import Notifier
from p0_ssh_agent.agent_access.access_policy import BUILTIN_ACCESS_SOURCE
from p0_ssh_agent.agent_access.line import AccessPipeline, own_places
from p0_ssh_agent.agent_access.minting import trust_file_json
from p0_ssh_agent.config import load_config
from p0_ssh_agent.core.local_policy import PolicyError
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.provisioning.lazy_pipeline import build_lazy_pipeline
from p0_ssh_agent.runtime.supervisor import Supervisor, prepare

ENV = {"P0_SSH_AGENT_JOURNAL_SOCKET": ""}
STARTERS = Path(__file__).resolve().parents[1] / "docs" / "policies" / "agent-access"


def access_config(directory: Path, *, enabled: bool = True) -> Path:
    """A configuration with agentAccess, a starter policy and a trust file with one issuer and one approver."""
    policy, keys = directory / "agent-access.cedar", directory / "agent-access-keys.json"
    policy.write_text((STARTERS / "ssh-host-pinned-read.cedar").read_text())
    keys.write_text(
        trust_file_json(
            [("did:web:issuer", "ES256", key("issuer", "ES256"))], [("alice", "ES256", key("alice", "ES256"))]
        )
    )
    for path in (policy, keys):
        path.chmod(0o644)
    return write_config(
        directory,
        "ws://127.0.0.1:9",
        directory / "keys",
        agentAccess=enabled,
        agentAccessUsers=["deploy"],
        agentAccessPolicyFile=str(policy),
        agentAccessKeysFile=str(keys),
        agentAccessConfinement="namespace",
        hostname="ops-01.example.com",
    )


def supervisor_for(config: Path) -> Supervisor:
    return Supervisor.create(
        prepare(load_config(config, env=ENV), ENV),
        reload_config=lambda: load_config(config, env=ENV),
        pipeline_factory=build_lazy_pipeline,
        notifier=Notifier(ENV),
        env=ENV,
    )


def set_switch(config: Path, enabled: bool) -> None:
    text = config.read_text().replace(f"agentAccess: {json.dumps(not enabled)}", f"agentAccess: {json.dumps(enabled)}")
    config.write_text(text)


async def test_the_switch_and_the_files_follow_each_reload(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    config = access_config(tmp_path)
    supervisor = supervisor_for(config)
    first = supervisor.worker.access_pipeline
    assert isinstance(first, AccessPipeline)
    assert first.settings.policy.source == str(tmp_path / "agent-access.cedar")
    assert first.settings.hostname == "ops-01.example.com" and first.settings.mode == "namespace"
    assert set(first.settings.trust.approvers) == {"alice"}

    (tmp_path / "agent-access.cedar").write_text("permit (principal, action, resource) whn { true };\n")
    await supervisor.reload()
    assert supervisor.worker.access_pipeline is first  # the broken policy did not replace the one in force
    assert "agent-access.cedar:1:" in supervisor.status_text

    (tmp_path / "agent-access.cedar").write_text((STARTERS / "ssh-sftp-upload.cedar").read_text())
    (tmp_path / "agent-access-keys.json").write_text('{"issuers": [{"id": "x"}]}\n')
    await supervisor.reload()
    assert supervisor.worker.access_pipeline is first  # nor did a broken trust file
    assert "agent-access-keys.json" in supervisor.status_text

    set_switch(config, False)  # the kill switch, with the trust file still broken: off needs neither file
    await supervisor.reload()
    assert supervisor.worker.access_pipeline is None

    access_config(tmp_path)  # good files again, and on
    await supervisor.reload()
    again = supervisor.worker.access_pipeline
    assert isinstance(again, AccessPipeline) and again is not first
    await trio.lowlevel.checkpoint()


def test_off_loads_nothing_and_missing_files_trust_and_permit_nothing(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    config = access_config(tmp_path, enabled=False)
    (tmp_path / "agent-access-keys.json").unlink()
    assert supervisor_for(config).worker.access_pipeline is None  # off: neither file is even read
    access_config(tmp_path)
    (tmp_path / "agent-access.cedar").unlink()
    (tmp_path / "agent-access-keys.json").unlink()
    pipeline = supervisor_for(config).worker.access_pipeline
    assert isinstance(pipeline, AccessPipeline) and pipeline.settings.policy.source == BUILTIN_ACCESS_SOURCE
    assert pipeline.settings.trust.issuers == {} and pipeline.settings.trust.approvers == {}


def test_creating_with_a_bad_file_raises_before_anything_runs(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    config = access_config(tmp_path)
    (tmp_path / "agent-access.cedar").write_text("forbid (principal, action, resource) whn { true };\n")
    with pytest.raises(PolicyError, match=r"agent-access\.cedar:1:"):
        supervisor_for(config)
    access_config(tmp_path)
    (tmp_path / "agent-access-keys.json").write_text('{"issuers": [], "approvers": [], "extra": 1}\n')
    with pytest.raises(ConfigError, match=r"agent-access-keys\.json: unknown member"):
        supervisor_for(config)


def test_start_exits_78_naming_the_bad_access_policy(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    config = access_config(tmp_path)
    (tmp_path / "agent-access.cedar").write_text('permit (principal, action == Action::"/ssh/nope", resource);\n')
    done = subprocess.run(
        [str(AGENT), "start", "--config", str(config)],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        timeout=60,
        check=False,
    )
    assert done.returncode == 78, done.stderr
    assert f"{tmp_path / 'agent-access.cedar'}:1:" in done.stderr


def test_the_agents_own_places_come_from_its_configuration(tmp_path: Path) -> None:
    keygen(tmp_path / "keys")
    loaded = load_config(access_config(tmp_path), env=ENV)
    directories, files = own_places(loaded, tmp_path / "state")
    assert str(tmp_path / "state") in directories and str(tmp_path / "keys") in directories
    assert str(tmp_path / "run") in directories and str(tmp_path) in directories  # the policies' directory
    assert str(tmp_path / "config.yaml") in files
