"""Agent access for the operator, on real accounts (run with
`tests/sandbox/enter .venv/bin/pytest -q tests/test_access_ops_sandbox.py`): doctor's verdict on each account in
agentAccessUsers made with useradd, usermod and groupadd, and its fix; doctor run whole, changing nothing; the
namespace probe as root; and `command --dry-run` of ssh_* commands that the gate allows, describing what would run
without running it or using up the cosignature. The refusals without an account are in tests/test_access_ops.py.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest

from access_tokens import AUDIENCE, HOST, issuer_id, key, ucan
from p0_ssh_agent.agent_access.access_model import Grant
from p0_ssh_agent.agent_access.line import REPLAY_FILE
from p0_ssh_agent.agent_access.minting import mint_cosignature, trust_file_json
from p0_ssh_agent.agent_access.operations import parse_operation
from p0_ssh_agent.cli import main
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.diagnostics.access_checks import check_access_accounts, check_confinement
from p0_ssh_agent.diagnostics.checks import collect
from p0_ssh_agent.diagnostics.findings import Finding
from sandbox.fixtures import USERADD, USERMOD, Sandbox, new_account, unique_user_name

POLICY = (
    'permit (principal, action in [Action::"/ssh/file/read", Action::"/ssh/exec"], resource)\n'
    f'  when {{ resource.host == "{HOST}" }};\n'
    'forbid (principal, action == Action::"/ssh/exec", resource) when { !context.cosigner };\n'
)


def verdicts(*names: str) -> dict[str, Finding]:
    return {finding.name.removeprefix("access account "): finding for finding in check_access_accounts(names)}


@pytest.mark.sandbox
def test_doctor_judges_each_listed_account_and_says_the_fix(
    sandbox: Sandbox, made_accounts: list[str], added_groups: list[str]
) -> None:
    sandbox.ensure_group("docker", added_groups)
    normal = new_account(sandbox, made_accounts)
    in_sudo = new_account(sandbox, made_accounts, "-G", "sudo")
    primary_docker = new_account(sandbox, made_accounts, "-g", "docker")
    nologin = new_account(sandbox, made_accounts)
    sandbox.run(USERMOD, "-s", "/usr/sbin/nologin", nologin)
    expired = new_account(sandbox, made_accounts)
    sandbox.run(USERMOD, "--expiredate", "1", expired)
    system = unique_user_name()
    sandbox.run(USERADD, "--system", "-s", "/bin/bash", system)
    made_accounts.append(system)
    found = verdicts(normal, in_sudo, primary_docker, nologin, expired, system, "root", "p0t-missing")
    assert found[normal].level == "ok" and found[normal].detail.startswith("UID ")
    assert found[in_sudo].level == "warn" and "root-equivalent group: sudo" in found[in_sudo].detail
    assert f"gpasswd -d {in_sudo} sudo" in found[in_sudo].fix
    assert f"usermod -g {primary_docker} {primary_docker} (its primary group is docker)" in found[primary_docker].fix
    assert found[nologin].level == "warn" and f"usermod -s /bin/bash {nologin}" in found[nologin].fix
    assert found[expired].level == "warn" and f"usermod --expiredate '' {expired}" in found[expired].fix
    assert found[system].level == "warn" and "system account" in found[system].detail
    assert f"remove {system} from agentAccessUsers" in found[system].fix
    assert found["root"].level == "warn" and "is root" in found["root"].detail
    assert found["p0t-missing"].level == "warn" and "useradd -m p0t-missing" in found["p0t-missing"].fix
    sandbox.run(USERMOD, "--expiredate", "", expired)  # fixed as the finding says: ok now
    assert verdicts(expired)[expired].level == "ok"


@pytest.mark.sandbox
def test_doctor_as_root_probes_the_namespace_it_would_confine_in(sandbox: Sandbox) -> None:
    found = check_confinement("namespace")
    assert found.level == "ok", found
    assert "a PID namespace per operation can be made" in found.detail


def digest(*roots: Path) -> dict[str, str]:
    sums: dict[str, str] = {}
    for root in roots:
        for path in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if path.is_file() and not path.is_symlink():
                sums[str(path)] = hashlib.sha256(path.read_bytes()).hexdigest()
    return sums


@pytest.mark.sandbox
def test_doctor_with_agent_access_on_changes_nothing(
    sandbox: Sandbox, made_accounts: list[str], tmp_path: Path
) -> None:
    name = new_account(sandbox, made_accounts)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    (state / REPLAY_FILE).write_text("0123abcd")  # a torn claim: the daemon repairs it, doctor must not
    (state / REPLAY_FILE).chmod(0o600)
    config = replace(
        AgentConfig(state_dir=state),
        agent_access=True,
        agent_access_users=(name,),
        agent_access_policy_file=tmp_path / "absent.cedar",
        agent_access_keys_file=tmp_path / "absent.json",
    )
    watched = (Path("/etc/passwd"), Path("/etc/shadow"), Path("/etc/group"), Path("/home"), state)
    before = digest(*watched)
    found = {f.name: f for f in collect(config, {}, offline=True)}
    assert digest(*watched) == before
    assert found[f"access account {name}"].level == "ok"
    assert found["access replay cache"].level == "ok" and "0 cosignature(s)" in found["access replay cache"].detail
    assert found["access trust"].level == "warn" and found["access policy"].level == "warn"


# --- `command --dry-run`: allowed by the gate, described, nothing run --------------------------------------------


def setup_host(tmp_path: Path, account: str) -> Path:
    policy, keys = tmp_path / "agent-access.cedar", tmp_path / "agent-access-keys.json"
    policy.write_text(POLICY)
    keys.write_text(
        trust_file_json(
            [(issuer_id("EdDSA"), "EdDSA", key("issuer", "EdDSA"))], [("alice", "ES256", key("alice", "ES256"))]
        )
    )
    for path in (policy, keys):
        path.chmod(0o644)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"orgId: acme\nhostId: web-1\nkeyPath: {tmp_path / 'keys'}\nstateDir: {tmp_path / 'state'}\n"
        f"hostname: {HOST}\nagentAccess: true\nagentAccessUsers: [{account}]\n"
        f"agentAccessPolicyFile: {policy}\nagentAccessKeysFile: {keys}\n"
    )
    return config


def dry_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Path, body: Mapping[str, object]
) -> tuple[int, str, dict[str, object]]:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    code = main(
        ["command", "--config", str(config), "--command", str(body["command"]), "--dry-run", "--body", str(request)]
    )
    out = capsys.readouterr().out
    return code, out, json.loads(out.partition("Execution Result:\n")[2])


@pytest.mark.sandbox
def test_an_allowed_request_is_described_and_nothing_runs(
    sandbox: Sandbox, made_accounts: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    name = new_account(sandbox, made_accounts)
    prefix = f"/srv/{name}"
    config = setup_host(tmp_path, name)
    now = int(time.time())
    token = ucan(grants=(Grant("ssh/*", HOST, name, prefix),), now=now)
    read = {"command": "ssh_file_read", "requestId": "r-1", "username": name, "path": f"{prefix}/a.txt", "ucan": token}
    code, out, result = dry_run(tmp_path, capsys, config, read)
    assert code == 0, result
    assert result["message"] == f"DRY-RUN: Would execute ssh_file_read for user {name}"
    plan = result["result"]
    assert isinstance(plan, dict) and plan["dry_run"] is True and plan["account"] == name and plan["prefix"] == prefix
    assert plan["confinement"] in ("systemd", "namespace")
    assert token not in out
    outside = {**read, "requestId": "r-2", "path": f"{prefix}2/a.txt"}  # a string-prefix sibling, not beneath
    code, _, result = dry_run(tmp_path, capsys, config, outside)
    assert code == 1 and result["result"] == {"kind": "outside_capability"}
    exec_body = {"command": "ssh_exec", "requestId": "r-3", "username": name, "argv": ["/usr/bin/id"], "ucan": token}
    code, _, result = dry_run(tmp_path, capsys, config, exec_body)
    assert code == 1 and result["result"] == {"kind": "step_up_required"}
    operation = parse_operation("ssh_exec", exec_body)
    cosignature = mint_cosignature(
        key("alice", "ES256"),
        algorithm="ES256",
        key_id="alice",
        op=operation,
        audience=AUDIENCE,
        ucan_token=token,
        now=now,
    )
    code, out, result = dry_run(tmp_path, capsys, config, {**exec_body, "cosignature": cosignature})
    assert code == 0, result
    plan = result["result"]
    assert isinstance(plan, dict) and plan["cosigner"] is True and plan["argv"] == ["/usr/bin/id"]
    assert cosignature not in out and "no cosignature was used" in str(result["output"])
    assert not (tmp_path / "state").exists()  # no replay cache written, no state directory made
    assert not Path(prefix).exists()  # nothing ran
