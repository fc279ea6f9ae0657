"""Agent access for the operator (unit tier): `command --dry-run` of ssh_* commands, `policy check` of the agent-access
files, doctor's agent-access section, and what `status` and the metrics say of it.

Real files in tmp_path, real keys and UCANs (tests/access_tokens.py), the real CLI in-process (`main`). What needs an
account agent access may run as (an allowed dry run, doctor's verdict on real useradd accounts) is in
tests/test_access_ops_sandbox.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prometheus_client.parser import text_string_to_metric_families

from access_tokens import ucan
from p0_ssh_agent.agent_access import confine
from p0_ssh_agent.agent_access.access_model import ACCESS_COMMANDS, RefusalKind
from p0_ssh_agent.agent_access.line import REPLAY_FILE
from p0_ssh_agent.agent_access.minting import did_key_ed25519, generate_key, trust_file_json
from p0_ssh_agent.agent_access.replay_cache import ReplayCache
from p0_ssh_agent.cli import main
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.diagnostics.access_checks import (
    check_access_accounts,
    check_access_policy,
    check_agent_access,
    check_confinement,
    check_replay_cache,
    check_trust_file,
)
from p0_ssh_agent.diagnostics.config_checks import check_access_switch
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.runtime import metrics as metrics_module
from p0_ssh_agent.runtime.health import Health
from p0_ssh_agent.runtime.jobs import JobKey
from p0_ssh_agent.runtime.metrics import ACCESS_RESULTS, Metrics, access_result, command_label

ROOT = Path(__file__).resolve().parent.parent
STARTERS = ROOT / "docs" / "policies" / "agent-access"
FRAGMENT = (
    'permit (principal, action in [Action::"/ssh/file/read", Action::"/ssh/dir/list"], resource)\n'
    '  when { resource.host == "ops-01.example.com" };\n'
    'forbid (principal, action == Action::"/ssh/exec", resource) when { !context.cosigner };\n'
)


def private_file(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o644)
    return path


def trust_text() -> str:
    issuer = Ed25519PrivateKey.generate()
    return trust_file_json([(did_key_ed25519(issuer), "EdDSA", issuer)], [("alice", "ES256", generate_key("ES256"))])


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """A registered configuration with agent access on for one account this machine does not have."""
    policy = private_file(tmp_path / "agent-access.cedar", FRAGMENT)
    keys = private_file(tmp_path / "agent-access-keys.json", trust_text())
    path = tmp_path / "config.yaml"
    path.write_text(
        f"orgId: acme\nhostId: web-1\nkeyPath: {tmp_path / 'keys'}\nstateDir: {tmp_path / 'state'}\n"
        f"hostname: ops-01.example.com\nagentAccess: true\nagentAccessUsers: [p0nosuchacct]\n"
        f"agentAccessPolicyFile: {policy}\nagentAccessKeysFile: {keys}\nagentAccessConfinement: namespace\n"
    )
    return path


def body_file(tmp_path: Path, body: Mapping[str, object], name: str = "body.json") -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(body))
    return path


def read_body(username: str = "p0nosuchacct") -> dict[str, object]:
    return {"requestId": "op-1", "username": username, "path": "/var/www/app/index.html", "ucan": ucan()}


def run_command(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, dict[str, object], dict[str, object]]:
    code = main(["command", *argv])
    out = capsys.readouterr().out
    request_text, _, result_text = out.removeprefix("Provisioning Request:\n").partition("Execution Result:\n")
    shown, result = json.loads(request_text), json.loads(result_text)
    shown["_printed"] = out
    return code, shown, result


def tree(root: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


# --- `command --command ssh_... --dry-run` ------------------------------------------------------------------------


def test_a_dry_run_by_hand_runs_the_gate_and_prints_no_secret(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = read_body()
    before = tree(tmp_path)
    argv = ["--config", str(config_file), "--command", "ssh_file_read", "--dry-run", "--body"]
    code, shown, result = run_command(capsys, *argv, str(body_file(tmp_path, body)))
    assert code == 1
    assert result["success"] is False and result["http_status"] == 403
    assert result["result"] == {"kind": RefusalKind.ACCOUNT.value}
    assert result["error"] == "account p0nosuchacct does not exist on this host"
    assert shown["command"] == "ssh_file_read" and shown["path"] == body["path"]
    token = str(body["ucan"])
    assert str(shown["ucan"]).startswith(f"<{len(token)} characters, sha256:")
    assert token not in str(shown.pop("_printed")) and token.split(".")[2] not in json.dumps(shown)
    assert tree(tmp_path) == {**before, "body.json": (tmp_path / "body.json").read_bytes()}  # no state directory


def test_flags_fill_in_the_body_and_each_refusal_is_the_gates(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = read_body()
    del body["requestId"], body["username"]
    argv = ["--config", str(config_file), "--command", "ssh_file_read", "--dry-run"]
    path = str(body_file(tmp_path, body))
    code, shown, result = run_command(capsys, *argv, "--body", path, "--username", "someone")
    assert code == 1 and str(shown["requestId"]).startswith("cmd-")  # derived from the account, as for P0's
    assert result["result"] == {"kind": "disabled"} and "not in agentAccessUsers" in str(result["error"])
    body["cosigner"] = True  # hostile members are the parser's: refused, naming the member
    code, _, result = run_command(capsys, *argv, "--body", str(body_file(tmp_path, body, "b2.json")), "--username", "x")
    assert code == 1 and result["result"] == {"kind": "invalid_request"} and "cosigner" in str(result["error"])
    code, _, result = run_command(capsys, *argv, "--body", path, "--username", "x", "--request-id", "a b")
    assert result["result"] == {"kind": "invalid_request"} and "requestId" in str(result["error"])


def test_with_agent_access_off_the_answer_is_the_daemons_403(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(config_file.read_text().replace("agentAccess: true", "agentAccess: false"))
    argv = ["--config", str(config_file), "--command", "ssh_dir_list", "--dry-run"]
    code, _, result = run_command(capsys, *argv, "--body", str(body_file(tmp_path, read_body())))
    assert code == 1 and result["error"] == "agent access is off (agentAccess: false)"
    assert result["result"] == {"kind": "disabled"}


def test_a_real_run_by_hand_is_refused_and_p0_flags_are_not_taken(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = str(body_file(tmp_path, read_body()))
    assert main(["command", "--config", str(config_file), "--command", "ssh_file_read", "--body", body]) == 64
    assert "only as a dry run" in capsys.readouterr().err
    argv = ["command", "--config", str(config_file), "--command", "ssh_file_read", "--dry-run", "--body", body]
    assert main([*argv, "--sudo", "--action", "revoke"]) == 64
    assert "--action, --sudo: not taken by ssh_file_read" in capsys.readouterr().err
    p0 = ["command", "--config", str(config_file), "--command", "listUsers", "--dry-run", "--body", body]
    assert main(p0) == 64 and "--body is for the agent-access" in capsys.readouterr().err
    not_json = tmp_path / "not.json"
    not_json.write_text("{\n nope")
    assert main([*argv[:-1], str(not_json)]) == 65
    assert f"{not_json}:2:2: not JSON" in capsys.readouterr().err


def test_dry_run_from_the_configuration_counts_as_a_dry_run(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(config_file.read_text() + "dryRun: true\n")
    argv = ["--config", str(config_file), "--command", "ssh_file_read", "--body", str(body_file(tmp_path, read_body()))]
    code, _, result = run_command(capsys, *argv)
    assert code == 1 and result["result"] == {"kind": RefusalKind.ACCOUNT.value}


# --- `policy check` and the agent-access files ----------------------------------------------------------------


def policy_check(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["policy", "check", *argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_policy_check_without_a_request_checks_the_files(config_file: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = policy_check(capsys, "--config", str(config_file))
    assert code == 0, out
    assert "1 permit, 1 forbid; permits /ssh/file/read, /ssh/dir/list" in out
    assert "1 issuer(s), 1 approver(s)" in out
    code, out, _ = policy_check(capsys, "--config", str(config_file), "--json")
    document = json.loads(out)["agentAccess"]
    assert document["permitted"] == ["/ssh/file/read", "/ssh/dir/list"]
    assert (document["issuers"], document["approvers"]) == (1, 1)


def test_policy_check_names_the_broken_files_line(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    broken = private_file(tmp_path / "broken.cedar", FRAGMENT + "permit (principal, action, resource) whn { true };\n")
    code, _, err = policy_check(capsys, "--config", str(config_file), "--access-policy", str(broken))
    assert code == 78 and f"{broken}:4:" in err
    keys = private_file(tmp_path / "keys.json", '{"issuers": [\n  {"id": "did:key:x", "alg": "none", "jwk": {}}\n]}')
    code, _, err = policy_check(capsys, "--config", str(config_file), "--access-keys", str(keys))
    assert code == 78 and f"{keys}:2: issuers[0]: alg must be one of" in err


def test_policy_check_checks_them_when_off_only_if_asked(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config_file.write_text(config_file.read_text().replace("agentAccess: true", "agentAccess: false"))
    keys = Path(str(config_file).replace("config.yaml", "agent-access-keys.json"))
    keys.write_text("{")
    code, out, _ = policy_check(capsys, "--config", str(config_file))
    assert code == 0 and "agent access is off" in out
    code, _, err = policy_check(capsys, "--config", str(config_file), "--agent-access")
    assert code == 78 and f"{keys}:1:2: the trust file is not valid JSON" in err


def test_policy_check_points_an_ssh_request_at_command_dry_run(
    tmp_path: Path, config_file: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    body = body_file(tmp_path, {"command": "ssh_exec", **read_body()})
    code, _, err = policy_check(capsys, "--config", str(config_file), str(body))
    assert code == 65 and "--dry-run --body" in err
    grant = {"command": "provisionUser", "userName": "p0polchk", "action": "grant", "requestId": "r1"}
    code, out, _ = policy_check(capsys, "--config", str(config_file), str(body_file(tmp_path, grant)))
    assert code == 0 and out.startswith("ALLOW") and "agent-access policy" in out  # the files, after the verdict


# --- doctor's agent-access section ------------------------------------------------------------------------------


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    return {finding.name: finding for finding in findings}


def test_doctor_off_is_one_ok_line(tmp_path: Path) -> None:
    found = check_agent_access(AgentConfig(), tmp_path)
    assert [(f.name, f.level) for f in found] == [("agent access", "ok")] and "off" in found[0].detail


def test_doctor_on_checks_every_part(tmp_path: Path) -> None:
    policy = private_file(tmp_path / "p.cedar", FRAGMENT)
    keys = private_file(tmp_path / "k.json", trust_text())
    config = replace(
        AgentConfig(),
        agent_access=True,
        agent_access_users=("p0nosuchacct", "root"),
        agent_access_policy_file=policy,
        agent_access_keys_file=keys,
        agent_access_confinement="namespace",
    )
    found = by_name(check_agent_access(config, tmp_path / "state"))
    assert found["agent access"].level == "ok" and "p0nosuchacct, root" in found["agent access"].detail
    missing, root = found["access account p0nosuchacct"], found["access account root"]
    assert missing.level == "warn" and "does not exist" in missing.detail and "useradd -m p0nosuchacct" in missing.fix
    assert root.level == "warn" and "is root" in root.detail and "remove root from agentAccessUsers" in root.fix
    assert (
        found["access policy"].level == "ok"
        and "permits /ssh/file/read, /ssh/dir/list" in found["access policy"].detail
    )
    assert found["access trust"].level == "ok" and "1 issuer(s), 1 approver(s)" in found["access trust"].detail
    assert found["access replay cache"].level == "ok" and "none yet" in found["access replay cache"].detail
    assert found["access confinement"].level in ("ok", "fail", "skip", "warn")  # warn: a host systemd runs


def test_doctor_says_when_nothing_can_be_permitted_or_verified(tmp_path: Path) -> None:
    nothing = check_access_policy(tmp_path / "absent.cedar")
    assert nothing.level == "warn" and "permits nothing" in nothing.detail and "policies/agent-access" in nothing.fix
    broken = check_access_policy(private_file(tmp_path / "b.cedar", "permit (principal, action, resource) whn {};"))
    assert broken.level == "fail" and f"{tmp_path / 'b.cedar'}:1:" in broken.detail
    none = check_trust_file(tmp_path / "absent.json")
    assert none.level == "warn" and "no file: every UCAN will be refused" in none.detail
    empty = check_trust_file(private_file(tmp_path / "e.json", '{"issuers": [], "approvers": []}'))
    assert empty.level == "warn" and "no issuers: every UCAN will be refused" in empty.detail
    bad = check_trust_file(private_file(tmp_path / "x.json", '{"issuers": {}}'))
    assert bad.level == "fail" and "issuers must be a list" in bad.detail
    assert check_access_accounts(())[0].level == "warn"


def test_doctor_reads_the_replay_cache_without_writing_it(tmp_path: Path) -> None:
    state = tmp_path / "state"
    now = int(time.time())
    assert ReplayCache(state / REPLAY_FILE).claim("jti-doctor-0001", now + 120, now)
    found = check_replay_cache(state)
    assert found.level == "ok" and "1 cosignature(s) remembered" in found.detail
    (state / REPLAY_FILE).write_text("garbage\n")
    (state / REPLAY_FILE).chmod(0o600)
    before = (state / REPLAY_FILE).read_bytes()
    unusable = check_replay_cache(state)
    assert unusable.level == "warn" and "every step-up fails" in unusable.detail
    assert f"remove {state / REPLAY_FILE}" in unusable.fix
    assert (state / REPLAY_FILE).read_bytes() == before


def test_doctor_probes_the_confinement_it_resolves_to() -> None:
    namespace = check_confinement("namespace")
    if os.geteuid() != 0:
        assert namespace.level == "skip" and namespace.fix == "run doctor as root"
    elif confine.SYSTEMD_RUNTIME_DIR.is_dir():  # a host systemd runs: the next test's warning
        assert namespace.level == "warn"
    else:  # root outside the sandbox: the probe really unshares (a container may forbid it: then it fails)
        assert namespace.level in ("ok", "fail") and namespace.detail.startswith("namespace (agentAccessConfinement)")
    auto = check_confinement("auto")
    assert auto.detail.startswith("auto resolves to ")
    systemd = check_confinement("systemd")
    if not Path("/run/systemd/system").is_dir():
        assert systemd.level == "fail"


def test_doctor_warns_that_forced_namespace_mode_fails_under_the_packaged_unit(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a systemd host the daemon runs in its unit, where RestrictNamespaces=yes refuses the worker's unshare;
    doctor, outside the unit, must say so instead of probing from where it would succeed."""
    monkeypatch.setattr(confine, "SYSTEMD_RUNTIME_DIR", tmp_path)  # a host that systemd runs

    found = check_confinement("namespace")

    assert found.level == "warn", found
    assert "RestrictNamespaces=yes" in found.detail and "every operation fails" in found.detail
    assert "agentAccessConfinement: auto" in found.fix


def test_doctor_on_auto_without_systemd_run_on_a_systemd_host_names_the_missing_tool(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """auto falls back to namespace mode when systemd-run is missing: the same warning, but setting auto again
    would change nothing, so the fix is the tool."""
    monkeypatch.setattr(confine, "SYSTEMD_RUNTIME_DIR", tmp_path)
    monkeypatch.setattr(confine, "SYSTEMD_RUN", str(tmp_path / "no-systemd-run"))

    found = check_confinement("auto")

    assert found.level == "warn" and found.detail.startswith("auto resolves to namespace"), found
    assert found.fix.startswith("install systemd-run")


def test_doctor_imports_agent_access_only_when_it_is_on(tmp_path: Path) -> None:
    code = (
        "import sys; from pathlib import Path; from p0_ssh_agent.config import AgentConfig;"
        "from p0_ssh_agent.diagnostics.checks import check_agent_access;"
        "check_agent_access(AgentConfig(), Path(sys.argv[1]));"
        "print(any(m.startswith('p0_ssh_agent.agent_access') for m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"


# --- status and the metrics --------------------------------------------------------------------------------------


def test_status_says_on_or_off_and_when_the_running_agent_disagrees() -> None:
    on = replace(AgentConfig(), agent_access=True, agent_access_users=("deploy",))
    assert check_access_switch(AgentConfig(), None).detail.startswith("off (agentAccess: false)")
    assert check_access_switch(on, True) == Finding(
        "agent access", "ok", "on (agentAccess: true) for deploy: ssh_* requests are served"
    )
    stale = check_access_switch(on, False)
    assert stale.level == "warn" and "the running agent has it off" in stale.detail and "reload" in stale.fix


def test_ssh_commands_have_their_own_labels_and_results() -> None:
    assert metrics_module.ACCESS_COMMANDS == ACCESS_COMMANDS  # held equal: metrics.py must not import agent_access
    assert {name for name in ACCESS_COMMANDS if command_label(name) == name} == ACCESS_COMMANDS
    assert {kind.value for kind in RefusalKind} <= ACCESS_RESULTS
    metrics = Metrics()
    metrics.request_done("ssh_file_read", "failed", "deny", 0.01)
    metrics.access_done("ssh_file_read", access_result("failed", False, "denied_by_policy"))
    metrics.access_done("ssh_exec", access_result("ok", True, None))
    metrics.access_done("ssh_exec", access_result("timeout", False, None))
    for n in range(30):  # a hostile kind or command name adds no label value
        metrics.access_done(f"ssh_made_up_{n}", access_result("failed", False, f"kind-{n}"))
    families = {f.name: f for f in text_string_to_metric_families(metrics.render())}
    samples = {
        (s.labels["command"], s.labels["result"]): s.value for s in families["p0_ssh_agent_access_requests"].samples
    }
    assert samples == {
        ("ssh_file_read", "denied_by_policy"): 1.0,
        ("ssh_exec", "ok"): 1.0,
        ("ssh_exec", "timeout"): 1.0,
        ("other", "failed"): 30.0,
    }
    requests = [s.labels for s in families["p0_ssh_agent_requests"].samples]
    assert requests == [{"command": "ssh_file_read", "decision": "deny", "outcome": "failed"}]


def test_health_counts_access_answers_and_publishes_the_switch(tmp_path: Path) -> None:
    config = replace(AgentConfig(), agent_access=True)
    health = Health(config, tmp_path, url="ws://127.0.0.1:9", client_id="a:b:ssh", pipeline=None)
    key = JobKey("ssh_dir_list", "deploy", "", "r-1")
    refused = CommandResult(
        success=False, error="x", http_status=403, policy_denied=True, result={"kind": "denied_by_policy"}
    )
    health.request_done(key, "failed", 0.01, refused)
    health.request_done(JobKey("provisionUser", "deploy", "grant", "r-2"), "ok", 0.01, CommandResult(success=True))
    assert health.metrics.counter("access_requests_total", command="ssh_dir_list", result="denied_by_policy") == 1
    assert health.metrics.total("access_requests_total") == 1  # P0's commands are not counted there
    assert json.loads(health.state_bytes())["agent_access"] is True
    text = health.metrics_bytes().decode()
    assert "p0_ssh_agent_agent_access 1" in text
    health.reloaded(AgentConfig(), tmp_path, url="ws://127.0.0.1:9", client_id="a:b:ssh", pipeline=None)
    assert "p0_ssh_agent_agent_access 0" in health.metrics_bytes().decode()
    assert json.loads(health.state_bytes())["agent_access"] is False
