"""The installed command line: help for every subcommand, exit codes, and keygen's refusal to re-key silently."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p0_ssh_agent._version import __version__
from p0_ssh_agent.cli import SUBCOMMANDS

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
NAMES = [name.replace("_", "-") for name in SUBCOMMANDS]


def agent(*argv: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(AGENT), *argv], capture_output=True, text=True, check=False, env=env, timeout=60)


@pytest.mark.parametrize("name", NAMES)
def test_every_subcommand_has_help(name: str) -> None:
    result = agent(name, "--help")
    assert result.returncode == 0, result.stderr
    assert f"p0-ssh-agent {name}" in result.stdout
    assert "--config" in result.stdout and "--verbose" in result.stdout


def test_top_level_help_lists_every_subcommand_and_module_entry_point_works() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "p0_ssh_agent", "--help"], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0
    for name in NAMES:
        assert name in result.stdout


def test_version_and_usage_errors() -> None:
    assert agent("version").stdout.startswith(f"p0-ssh-agent {__version__} ")
    assert agent("no-such-subcommand").returncode == 64
    assert agent("keygen", "--no-such-flag").returncode == 64
    # adopt wants either --list or the names the admin confirms, never both or neither (issue 14 item 1).
    assert agent("adopt").returncode == 64
    assert agent("adopt", "--list", "alice").returncode == 64


def test_keygen_twice_refuses_and_force_replaces(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    old_umask = os.umask(0o022)
    try:
        first = agent("keygen", "--key-path", str(key_dir))
    finally:
        os.umask(old_umask)
    assert first.returncode == 0, first.stderr
    assert stat.S_IMODE(key_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((key_dir / "jwk.private.json").stat().st_mode) == 0o600
    assert stat.S_IMODE((key_dir / "jwk.public.json").stat().st_mode) == 0o644
    before = {p.name: p.read_bytes() for p in key_dir.iterdir()}

    again = agent("keygen", "--key-path", str(key_dir))
    assert again.returncode != 0
    assert "--force" in again.stderr + again.stdout
    assert {p.name: p.read_bytes() for p in key_dir.iterdir()} == before

    forced = agent("keygen", "--key-path", str(key_dir), "--force")
    assert forced.returncode == 0, forced.stderr
    assert json.loads((key_dir / "jwk.public.json").read_text()) != json.loads(before["jwk.public.json"])


def test_a_loose_private_key_is_refused_with_the_chmod_that_fixes_it(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    assert agent("keygen", "--key-path", str(key_dir)).returncode == 0
    private = key_dir / "jwk.private.json"
    private.chmod(0o644)
    config = tmp_path / "config.yaml"
    config.write_text(f"orgId: o\nhostId: h\ntunnelHost: ws://127.0.0.1:9\nkeyPath: {key_dir}\n")
    result = agent("start", "--config", str(config))
    assert result.returncode != 0
    assert f"chmod 600 {private}" in result.stderr


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("orgId: o\n- item\n", "config.yaml:2:"),
        ("orgId: o\nhostId: h\nheartbeatIntervalSeconds: soon\n", "config.yaml:3:"),
        ("orgId: o\nhostId: h\nhostID2: x\n", "config.yaml:3:"),
        ("hostId: h\ntunnelHost: ws://127.0.0.1:9\n", "orgId"),
        ("orgId: o\nhostId: h\ntunnelHost: ws://example.com\n", "config.yaml:3:"),
        ("orgId: o\nhostId: h\nheartbeatIntervalSeconds: 0\n", "config.yaml:3:"),
    ],
)
def test_bad_configuration_exits_78_naming_the_place_and_writes_nothing(
    tmp_path: Path, text: str, problem: str
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    before = sorted(p.name for p in tmp_path.iterdir())
    result = agent("start", "--config", str(config))
    assert result.returncode == 78, result.stderr
    assert problem in result.stderr
    assert len(result.stderr.strip().splitlines()) <= 3  # one clear message, not a traceback
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    assert config.read_text() == text
