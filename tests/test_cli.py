"""The CLI dispatcher: help for every subcommand through `python -m p0_ssh_agent` and `help SUBCOMMAND`, usage
errors (64), version, bad configurations refused by `start` with exit 78 and the exact "path:line:col:" prefix
before anything is created, and `command --dry-run` printing a plan or refusing a hostile request by field.

The installed `p0-ssh-agent` binary's `SUBCOMMAND --help` is run in test_cli_surface.py.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from p0_ssh_agent._version import __version__
from p0_ssh_agent.cli import SUBCOMMANDS, main

NAMES = [name.replace("_", "-") for name in SUBCOMMANDS]


@pytest.fixture(autouse=True)
def _no_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in list(os.environ):
        if name.startswith("P0_SSH_AGENT_") or name in ("STATE_DIRECTORY", "NOTIFY_SOCKET"):
            monkeypatch.delenv(name)


def python_m(*argv: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    """From an unrelated directory, so the installed package is what runs, not a checkout on sys.path."""
    return subprocess.run(
        [sys.executable, "-m", "p0_ssh_agent", *argv], capture_output=True, text=True, check=False, cwd=cwd, timeout=60
    )


def tree(root: Path) -> dict[str, tuple[int, bytes | None]]:
    return {
        str(p.relative_to(root)): (p.lstat().st_mode, p.read_bytes() if p.is_file() else None)
        for p in sorted(root.rglob("*"))
    }


# --- help, usage errors, version ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_every_subcommand_has_help_through_python_m(name: str, tmp_path: Path) -> None:
    result = python_m(name, "--help", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"usage: p0-ssh-agent {name} ")
    assert "-c PATH, --config PATH" in result.stdout and "-v, --verbose" in result.stdout
    assert result.stderr == ""


@pytest.mark.parametrize("name", NAMES)
def test_help_subcommand_prints_the_same_text_as_dash_dash_help(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help", name]) == 0
    via_help = capsys.readouterr().out
    assert main([name, "--help"]) == 0  # argparse exits 0; the dispatcher returns it
    assert capsys.readouterr().out == via_help
    assert via_help.startswith(f"usage: p0-ssh-agent {name}")


def test_top_level_help_lists_every_subcommand_in_order(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["help"]) == 0
    out = capsys.readouterr().out
    positions = [out.index(f"\n    {name} ") for name in NAMES]
    assert positions == sorted(positions)
    assert main(["--help"]) == 0
    assert capsys.readouterr().out == out


def test_usage_errors_exit_64(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["no-such-subcommand"]) == 64
    assert "invalid choice" in capsys.readouterr().err
    assert main([]) == 64  # no subcommand: the help, and a usage exit
    assert "usage: p0-ssh-agent" in capsys.readouterr().out
    assert main(["help", "no-such-subcommand"]) == 64
    assert "no such subcommand 'no-such-subcommand'" in capsys.readouterr().err
    assert main(["command", "--dry-run"]) == 64  # --command is required
    assert "--command" in capsys.readouterr().err
    assert main(["start", "--tunnel-timeout", "soon"]) == 64
    capsys.readouterr()
    result = python_m("no-such-subcommand", cwd=tmp_path)
    assert result.returncode == 64 and "invalid choice" in result.stderr


def test_version(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["version"]) == 0
    assert capsys.readouterr().out == f"p0-ssh-agent {__version__} (Python {platform.python_version()})\n"
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == f"p0-ssh-agent {__version__}\n"
    result = python_m("version", cwd=tmp_path)
    assert result.returncode == 0 and result.stdout.startswith(f"p0-ssh-agent {__version__} (Python ")


# --- bad configuration: `start` refuses with 78 before touching anything --------------------------------------------


def run_main_guarded(argv: list[str]) -> int:
    """main() in a thread, so a `start` that wrongly gets past its configuration fails this test instead of hanging."""
    outcome: list[int] = []
    worker = threading.Thread(target=lambda: outcome.append(main(argv)), daemon=True)
    worker.start()
    worker.join(timeout=60)
    assert not worker.is_alive(), f"{argv} did not return: it got past the configuration check"
    return outcome[0]


# text, then the line and column of the problem within that text, then the start of the message after "L:C: ".
BAD_CONFIGS = {
    "yaml-syntax-error": ("orgId: acme\nhostId: [web-1\n", 3, 1, "YAML syntax error"),
    "wrong-type": ("orgId: acme\nhostId: web-1\nheartbeatIntervalSeconds: soon\n", 3, 27, "heartbeatIntervalSeconds:"),
    "unknown-key": ("orgId: acme\nhostId: web-1\ntunelHost: wss://t.example\n", 3, 1, "unknown key 'tunelHost'"),
    "ws-to-public-host": ("orgId: acme\nhostId: web-1\ntunnelHost: ws://example.com\n", 3, 13, "tunnelHost: ws://"),
    "heartbeat-zero": ("orgId: acme\nhostId: web-1\nheartbeatIntervalSeconds: 0\n", 3, 27, "heartbeatIntervalSeconds:"),
    "labels-not-a-list": ("orgId: acme\nhostId: web-1\nlabels: 7\n", 3, 9, "labels"),
    "http-tunnel": ("orgId: acme\nhostId: web-1\ntunnelHost: http://t.example\n", 3, 13, "tunnelHost"),
}


@pytest.mark.parametrize(
    ("text", "position", "problem"),
    [(text, (line, column), problem) for text, line, column, problem in BAD_CONFIGS.values()],
    ids=BAD_CONFIGS.keys(),
)
def test_start_refuses_a_bad_configuration_with_78_and_the_exact_position(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], text: str, position: tuple[int, int], problem: str
) -> None:
    config = tmp_path / "config.yaml"
    # keyPath and stateDir point into tmp_path: neither may be created by a start that fails its configuration.
    config.write_text(f"keyPath: {tmp_path / 'keys'}\nstateDir: {tmp_path / 'state'}\n" + text)
    line, column = position
    before = tree(tmp_path)
    assert run_main_guarded(["start", "--config", str(config)]) == 78
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith(f"p0-ssh-agent start: {config}:{line + 2}:{column}: {problem}")
    assert captured.err.count("\n") == 1  # one message, no traceback
    assert tree(tmp_path) == before


def test_the_unknown_key_message_suggests_the_right_spelling(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("orgId: acme\nhostId: web-1\nhearbeatIntervalSeconds: 30\n")
    assert run_main_guarded(["start", "--config", str(config)]) == 78
    assert "did you mean 'heartbeatIntervalSeconds'?" in capsys.readouterr().err


def test_start_without_org_id_names_the_file_and_every_way_to_set_it(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"hostId: web-1\nkeyPath: {tmp_path / 'keys'}\nstateDir: {tmp_path / 'state'}\n")
    before = tree(tmp_path)
    assert run_main_guarded(["start", "--config", str(config)]) == 78
    err = capsys.readouterr().err
    # A missing key has no line of its own: the message names the file, then the register/env/flag fixes.
    assert err.startswith(f"p0-ssh-agent start: {config}: orgId is not set;")
    assert "P0_SSH_AGENT_ORGID" in err and "--org-id" in err and err.count("\n") == 1
    assert tree(tmp_path) == before


def test_start_flags_are_validated_like_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"orgId: acme\nhostId: web-1\nkeyPath: {tmp_path / 'keys'}\n")
    argv = ["start", "--config", str(config), "--tunnel-host", "ws://example.com"]
    assert run_main_guarded(argv) == 78
    err = capsys.readouterr().err
    assert "--tunnel-host" in err and "wss://" in err


# --- command --dry-run --------------------------------------------------------------------------------------------


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "config.yaml"
    path.write_text(f"orgId: acme\nhostId: web-1\nkeyPath: {tmp_path / 'keys'}\nstateDir: {tmp_path / 'state'}\n")
    return path


@pytest.fixture
def public_key(tmp_path: Path) -> str:
    subprocess.run(
        ["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "alice@laptop", "-f", str(tmp_path / "id")],
        check=True,
        timeout=60,
    )
    return (tmp_path / "id.pub").read_text().strip()


def java_string_hash(text: str) -> int:
    """Java's String.hashCode written as the sum it is defined as, wrapped to a signed 32-bit int."""
    total: int = sum(ord(char) * 31 ** (len(text) - 1 - i) for i, char in enumerate(text))
    wrapped = total % (1 << 32)
    return wrapped - (1 << 32) if wrapped >= 1 << 31 else wrapped


def parse_command_output(out: str) -> tuple[dict[str, object], dict[str, object]]:
    assert out.startswith("Provisioning Request:\n")
    request_text, result_text = out.removeprefix("Provisioning Request:\n").split("Execution Result:\n")
    return json.loads(request_text), json.loads(result_text)


def test_command_dry_run_prints_the_request_and_a_real_runs_refusal_and_changes_nothing(
    config: Path, public_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Issue 14 item 7: a dry run refuses what a real run refuses. There is no account "alice" here, so a real run
    # fails, and so does the dry run now (it used to print a plan "alice does not exist yet"). The printed plan for
    # an account that exists (success, DRY-RUN message, the key and the id in the output) is asserted in the
    # sandbox, where one can be created: tests/test_dry_run_refusals_sandbox.py.
    root = config.parent
    before = tree(root)
    argv = ["command", "--config", str(config), "--dry-run", "--command", "provisionAuthorizedKeys"]
    assert main([*argv, "--username", "alice", "--public-key", public_key]) == 1
    request, result = parse_command_output(capsys.readouterr().out)
    expected_id = f"cmd-{1000000 + abs(java_string_hash('alice')) % 8999999}"
    assert request == {
        "command": "provisionAuthorizedKeys",
        "action": "grant",
        "userName": "alice",
        "requestId": expected_id,
        "publicKey": public_key,
    }
    assert result["success"] is False
    assert result["error"] == "user alice not found: user: unknown user alice"
    assert tree(root) == before  # not even the state directory


def test_dry_run_from_the_configuration_is_honoured(
    config: Path, public_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    config.write_text(config.read_text() + "dryRun: true\n")
    # A revoke (issue 14 item 7: a dry-run grant for the missing alice is refused like a real one): it succeeds in
    # both modes, so only the DRY-RUN answer and the missing state directory tell that dryRun was honoured.
    argv = ["command", "--config", str(config), "--command", "provisionAuthorizedKeys", "--username", "alice"]
    assert main([*argv, "--action", "revoke", "--request-id", "req-7"]) == 0
    _, result = parse_command_output(capsys.readouterr().out)
    assert str(result["message"]).startswith("DRY-RUN: ")
    assert not (config.parent / "state").exists()


@pytest.mark.parametrize(
    ("flags", "field"),
    [
        (["--username", "alice", "--request-id", "a/e id"], "requestId"),
        (["--username", "alice", "--request-id", "../../etc/passwd"], "requestId"),
        (["--username", "al/ice"], "userName"),
        (["--username", "root\nx"], "userName"),
        (["--username", "alice", "--action", "delete"], "action"),
    ],
    ids=["space-and-slash-request-id", "traversal-request-id", "slash-user", "newline-user", "bad-action"],
)
def test_command_refuses_a_hostile_request_naming_the_field(
    config: Path, public_key: str, capsys: pytest.CaptureFixture[str], flags: list[str], field: str
) -> None:
    argv = ["command", "--config", str(config), "--dry-run", "--command", "provisionAuthorizedKeys"]
    assert main([*argv, "--public-key", public_key, *flags]) == 1
    _, result = parse_command_output(capsys.readouterr().out)
    assert result["success"] is False
    assert field in str(result["error"])
    assert "DRY-RUN" not in str(result.get("message", ""))


def test_command_refuses_a_public_key_with_a_second_line(
    config: Path, public_key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    smuggled = f'{public_key}\ncommand="/bin/sh" {public_key}'
    argv = ["command", "--config", str(config), "--dry-run", "--command", "provisionAuthorizedKeys"]
    assert main([*argv, "--username", "alice", "--public-key", smuggled]) == 1
    _, result = parse_command_output(capsys.readouterr().out)
    assert result["success"] is False and "publicKey" in str(result["error"])


def test_command_with_a_bad_configuration_exits_78(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("orgId: acme\ndryrun: yes please\n")
    assert main(["command", "--config", str(config), "--dry-run", "--command", "listUsers"]) == 78
    assert capsys.readouterr().err.startswith(f"p0-ssh-agent command: {config}:2:")
