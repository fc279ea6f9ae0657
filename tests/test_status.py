"""`p0-ssh-agent status`: a healthy host in tmp_path passes its setup checks, and each broken piece fails naming its
fix. No agent runs here, so `status` exits 3 (not running) even on the healthy host: the exit codes of a running
agent are tested against a real daemon in test_live_checks.py.

Everything lives in tmp_path (config, keys, stateDir); the caller's STATE_DIRECTORY and P0_SSH_AGENT_* are
removed so the machine's own /etc and /var/lib are never consulted. systemd is not running on the test machines,
so the unit checks are skipped with a warning, which is asserted (and the other branch when systemd does run).
Live grants and drift are covered in test_reconcile.py.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import pytest

from p0_ssh_agent.cli import main
from p0_ssh_agent.config import load_config
from p0_ssh_agent.diagnostics.config_checks import check_config
from p0_ssh_agent.diagnostics.status_checks import run_systemctl
from p0_ssh_agent.identity.signing_key import generate_keys

SYSTEMD_RUNNING = Path("/run/systemd/system").is_dir()
AGENT = Path(sys.executable).with_name("p0-ssh-agent")


@dataclass(frozen=True)
class Host:
    config: Path
    keys: Path
    state: Path
    thumbprint: str


@pytest.fixture(autouse=True)
def _no_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("P0_SSH_AGENT_") or name == "STATE_DIRECTORY":
            monkeypatch.delenv(name)


@pytest.fixture
def host(tmp_path: Path) -> Host:
    etc = tmp_path / "etc"
    etc.mkdir(mode=0o755)
    etc.chmod(0o755)
    keys = tmp_path / "keys"
    key = generate_keys(keys)
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = etc / "config.yaml"
    config.write_text(
        f"# written by hand\norgId: acme\nhostId: web-1\nkeyPath: {keys}\nstateDir: {state}\n"
        f"runtimeDir: {tmp_path / 'run'}\n"
    )
    return Host(config, keys, state, key.thumbprint)


def status_json(config: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, dict[str, object]]:
    code = main(["status", "--config", str(config), "--json"])
    captured = capsys.readouterr()
    assert captured.err == ""
    return code, json.loads(captured.out)


NOT_RUNNING = 3  # no agent runs in these tests


def only_the_agent_is_missing(code: int, document: dict[str, object]) -> bool:
    """Setup all good: the one failed check is that no agent runs."""
    failed = [c["name"] for c in checks_of(document).values() if c["level"] == "fail"]
    return code == NOT_RUNNING and document["ok"] is False and failed == ["agent"]


def checks_of(document: dict[str, object]) -> dict[str, dict[str, str]]:
    checks = document["checks"]
    assert isinstance(checks, list)
    by_name = {c["name"]: c for c in checks}
    assert len(by_name) == len(checks)  # one line per check
    return by_name


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


def test_a_healthy_host_passes(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    code, document = status_json(host.config, capsys)
    assert only_the_agent_is_missing(code, document)
    checks = checks_of(document)
    assert checks["agent"]["detail"] == "not running" and document["state"] == "not-running"
    assert checks["config"]["level"] == "ok" and "acme:web-1:ssh" in checks["config"]["detail"]
    assert checks["keys"]["level"] == "ok" and host.thumbprint in checks["keys"]["detail"]
    assert checks["key directory"]["level"] == "ok" and "700" in checks["key directory"]["detail"]
    assert checks["config directory"]["level"] == "ok"
    assert checks["state directory"]["level"] == "ok" and str(host.state) in checks["state directory"]["detail"]
    assert document["grants"] == [] and document["drift"] == []
    if SYSTEMD_RUNNING:
        assert {"unit enabled", "unit active"} <= set(checks)
    else:
        assert checks["systemd"]["level"] == "warn" and "not running" in checks["systemd"]["detail"]


def test_the_text_report_says_all_checks_passed_and_shows_no_key_material(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["status", "--config", str(host.config)]) == NOT_RUNNING
    out = capsys.readouterr().out
    assert "1 check(s) failed" in out and "[FAIL] agent" in out
    assert "[ok  ] keys" in out and host.thumbprint in out
    private = json.loads((host.keys / "jwk.private.json").read_text())
    for secret_or_public_material in (private["d"], private["x"], private["y"]):
        assert secret_or_public_material not in out


def test_status_only_looks(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    """A missing state directory is a warning and stays missing; nothing under tmp_path changes."""
    host.state.rmdir()
    root = host.config.parent.parent
    before = tree(root)
    code, document = status_json(host.config, capsys)
    assert only_the_agent_is_missing(code, document)
    assert checks_of(document)["state directory"]["level"] == "warn"
    assert tree(root) == before and not host.state.exists()


def test_missing_keys_fail_naming_keygen(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    for name in ("jwk.private.json", "jwk.public.json"):
        (host.keys / name).unlink()
    code, document = status_json(host.config, capsys)
    assert code == NOT_RUNNING and document["ok"] is False
    keys = checks_of(document)["keys"]
    assert keys["level"] == "fail" and keys["fix"] == f"p0-ssh-agent keygen --key-path {host.keys}"
    assert main(["status", "--config", str(host.config)]) == NOT_RUNNING
    out = capsys.readouterr().out
    assert f"fix: p0-ssh-agent keygen --key-path {host.keys}" in out and "2 check(s) failed" in out  # and agent


def test_a_missing_key_directory_fails_naming_how_to_create_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"orgId: acme\nhostId: web-1\nkeyPath: {tmp_path / 'nokeys'}\nstateDir: {tmp_path / 's'}\n")
    code, document = status_json(config, capsys)
    checks = checks_of(document)
    assert code == NOT_RUNNING
    assert checks["key directory"]["fix"] == f"create it: install -d -m 700 {tmp_path / 'nokeys'}"
    assert checks["keys"]["fix"] == f"p0-ssh-agent keygen --key-path {tmp_path / 'nokeys'}"


@pytest.mark.parametrize("loose", [0o750, 0o755, 0o701, 0o777])
def test_a_loose_key_directory_fails_naming_chmod_700(
    host: Host, capsys: pytest.CaptureFixture[str], loose: int
) -> None:
    host.keys.chmod(loose)
    code, document = status_json(host.config, capsys)
    key_dir = checks_of(document)["key directory"]
    assert code == NOT_RUNNING and document["ok"] is False
    assert key_dir["level"] == "fail" and key_dir["fix"] == f"chmod 700 {host.keys}"
    assert f"{loose:o}" in key_dir["detail"]


def test_a_readable_private_key_fails_with_chmod_600_not_a_new_key(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    """Re-keying would break the host's registration: a private key with a loose mode is fixed with chmod."""
    private = host.keys / "jwk.private.json"
    private.chmod(0o640)
    code, document = status_json(host.config, capsys)
    keys = checks_of(document)["keys"]
    assert code == NOT_RUNNING and keys["level"] == "fail"
    assert keys["fix"] == f"chmod 600 {private}" and "keygen" not in keys["fix"]


def test_a_public_key_from_another_pair_fails(host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    generate_keys(tmp_path / "other")
    (host.keys / "jwk.public.json").write_bytes((tmp_path / "other" / "jwk.public.json").read_bytes())
    code, document = status_json(host.config, capsys)
    keys = checks_of(document)["keys"]
    assert code == NOT_RUNNING and keys["level"] == "fail" and "does not belong" in keys["detail"]
    assert "register again" in keys["fix"]


def test_a_loose_state_directory_fails_and_is_not_tightened_by_status(
    host: Host, capsys: pytest.CaptureFixture[str]
) -> None:
    host.state.chmod(0o755)
    code, document = status_json(host.config, capsys)
    state = checks_of(document)["state directory"]
    assert code == NOT_RUNNING and state["fix"] == f"chmod 700 {host.state}"
    assert host.state.stat().st_mode & 0o777 == 0o755


def test_state_directory_from_systemd_wins_over_the_config(
    host: Host, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from_systemd = tmp_path / "systemd-state"
    from_systemd.mkdir(mode=0o700)
    monkeypatch.setenv("STATE_DIRECTORY", f"{from_systemd}:{tmp_path / 'second'}")
    code, document = status_json(host.config, capsys)
    assert only_the_agent_is_missing(code, document)
    assert str(from_systemd) in checks_of(document)["state directory"]["detail"]


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("orgId: acme\nhostId: [web\n", ":3:1: YAML syntax error"),
        ("orgId: acme\nhostId: web-1\nheartbeatIntervalSeconds: 0\n", ":3:27: heartbeatIntervalSeconds"),
        ("orgId: acme\nhostID: web-1\nhsotId: x\n", ":3:1: unknown key 'hsotId'"),
        ("hostId: web-1\n", ": orgId is not set"),
    ],
)
def test_a_bad_configuration_exits_78_with_one_failed_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, where: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    code, document = status_json(config, capsys)
    assert code == 78 and document["ok"] is False
    assert list(checks_of(document)) == ["config"]
    detail = checks_of(document)["config"]["detail"]
    assert detail.startswith(f"{config}{where}")
    assert "grants" not in document  # nothing past an unusable configuration
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_a_missing_configuration_file_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, document = status_json(tmp_path / "absent.yaml", capsys)
    assert code == 78
    assert "register" in checks_of(document)["config"]["detail"]


def test_dry_run_is_reported_as_a_warning(host: Host, capsys: pytest.CaptureFixture[str]) -> None:
    host.config.write_text(host.config.read_text() + "dryRun: true\n")
    code, document = status_json(host.config, capsys)
    assert only_the_agent_is_missing(code, document) and checks_of(document)["dry-run"]["level"] == "warn"


def test_the_installed_command_agrees(host: Host) -> None:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
    done = subprocess.run(
        [str(AGENT), "status", "-c", str(host.config), "--json"],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=60,
    )
    assert only_the_agent_is_missing(done.returncode, json.loads(done.stdout)), done.stdout + done.stderr
    host.keys.chmod(0o755)
    done = subprocess.run(
        [str(AGENT), "status", "-c", str(host.config)], capture_output=True, text=True, env=env, check=False, timeout=60
    )
    assert done.returncode == NOT_RUNNING and f"fix: chmod 700 {host.keys}" in done.stdout


def test_an_unregistered_host_fails_the_config_check_doctor_makes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("hostId: web-1\n")
    _, document = status_json(config, capsys)
    shared = check_config(load_config(config))  # doctor's finding for the same file
    assert checks_of(document)["config"] == {**asdict(shared), "items": list(shared.items)}
    assert shared.level == "fail" and "p0-ssh-agent register --url URL" in shared.fix


def test_systemctl_runs_through_host_proc_and_reports_what_cannot_run(tmp_path: Path) -> None:
    assert run_systemctl(["/bin/echo", "enabled"]) == (0, "enabled")
    code, why = run_systemctl([str(tmp_path / "no-systemctl"), "is-enabled", "p0-ssh-agent.service"])
    assert code == 127 and why.startswith("cannot run:")
    assert run_systemctl(["/bin/sh", "-c", "echo inactive; exit 3"]) == (3, "inactive")
