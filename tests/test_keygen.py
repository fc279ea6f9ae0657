"""`p0-ssh-agent keygen` in-process through the CLI dispatcher: exact modes under any umask, what it prints, the
refusals (existing keys, symlinked or foreign key directories, a file in the way) and where the directory comes
from (--key-path, the deprecated --path, the configuration's keyPath).

test_cli_surface.py runs the installed binary for the basic twice/--force/modes story under umask 022.
"""

from __future__ import annotations

import hashlib
import json
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.cli import main
from p0_ssh_agent.identity.signing_key import b64url, load_private_key

PRIVATE = "jwk.private.json"
PUBLIC = "jwk.public.json"


@pytest.fixture(autouse=True)
def _no_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """keygen without --key-path reads the configuration, which honours P0_SSH_AGENT_*: keep the caller's out."""
    for name in list(os.environ):
        if name.startswith("P0_SSH_AGENT_"):
            monkeypatch.delenv(name)


@pytest.fixture
def umask() -> Iterator[None]:
    saved = os.umask(0o022)
    os.umask(saved)
    yield
    os.umask(saved)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def snapshot(directory: Path) -> dict[str, tuple[bytes, int, int]]:
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns, mode(p)) for p in directory.iterdir()}


def thumbprint_by_hand(jwk: dict[str, str]) -> str:
    canonical = json.dumps({k: jwk[k] for k in ("crv", "kty", "x", "y")}, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


@pytest.mark.parametrize("mask", [0o000, 0o022, 0o027, 0o077])
def test_modes_are_exact_whatever_the_umask(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], umask: None, mask: int
) -> None:
    key_dir = tmp_path / "deep" / "keys"
    os.umask(mask)
    assert main(["keygen", "--key-path", str(key_dir)]) == 0
    assert (mode(key_dir), mode(key_dir / PRIVATE), mode(key_dir / PUBLIC)) == (0o700, 0o600, 0o644)
    assert sorted(p.name for p in key_dir.iterdir()) == [PRIVATE, PUBLIC]  # no temporary file left
    assert key_dir.stat().st_uid == os.geteuid()
    capsys.readouterr()


def test_output_is_the_public_jwk_its_thumbprint_and_the_next_step(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_dir = tmp_path / "keys"
    assert main(["keygen", "--key-path", str(key_dir)]) == 0
    out = capsys.readouterr().out
    printed_jwk, rest = out.split("\nthumbprint (RFC 7638): ", 1)
    public = json.loads((key_dir / PUBLIC).read_text())
    assert json.loads(printed_jwk) == public
    assert rest.splitlines()[0] == thumbprint_by_hand(public)
    assert "next: p0-ssh-agent register" in out
    private_scalar = json.loads((key_dir / PRIVATE).read_text())["d"]
    assert private_scalar not in out and '"d"' not in out


def test_an_existing_loose_key_directory_is_tightened_to_0700(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    key_dir.chmod(0o755)
    assert main(["keygen", "--key-path", str(key_dir)]) == 0
    assert mode(key_dir) == 0o700
    capsys.readouterr()


def test_refusal_changes_nothing_and_force_replaces_everything(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_dir = tmp_path / "keys"
    assert main(["keygen", "--key-path", str(key_dir)]) == 0
    first = load_private_key(key_dir)
    before = snapshot(key_dir)
    capsys.readouterr()

    assert main(["keygen", "--key-path", str(key_dir)]) == 1
    err = capsys.readouterr().err
    assert "--force" in err and "register" in err and err.count("\n") == 1
    assert snapshot(key_dir) == before  # same bytes, same mtimes, same modes

    assert main(["keygen", "--key-path", str(key_dir), "--force"]) == 0
    out = capsys.readouterr().out
    second = load_private_key(key_dir)
    assert second.thumbprint != first.thumbprint and second.thumbprint in out
    assert json.loads((key_dir / PUBLIC).read_text()) == second.public_jwk
    assert (mode(key_dir / PRIVATE), mode(key_dir / PUBLIC)) == (0o600, 0o644)
    assert sorted(p.name for p in key_dir.iterdir()) == [PRIVATE, PUBLIC]


def test_a_private_key_alone_still_counts_as_existing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    key_dir = tmp_path / "keys"
    assert main(["keygen", "--key-path", str(key_dir)]) == 0
    (key_dir / PUBLIC).unlink()
    before = snapshot(key_dir)
    assert main(["keygen", "--key-path", str(key_dir)]) != 0
    assert snapshot(key_dir) == before
    capsys.readouterr()


def test_a_symlinked_key_directory_is_refused_and_its_target_untouched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "real"
    target.mkdir(mode=0o755)
    link = tmp_path / "keys"
    link.symlink_to(target)
    assert main(["keygen", "--key-path", str(link)]) == 78
    assert "symlink" in capsys.readouterr().err
    assert list(target.iterdir()) == [] and mode(target) == 0o755


@pytest.mark.parametrize("obstacle", ["dangling-symlink", "regular-file", "file-as-parent"])
def test_something_in_the_way_of_the_key_directory_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], obstacle: str
) -> None:
    key_dir = tmp_path / "keys"
    if obstacle == "dangling-symlink":
        key_dir.symlink_to(tmp_path / "nowhere")
    else:
        key_dir.write_text("not a directory\n")
    argv_dir = key_dir / "sub" if obstacle == "file-as-parent" else key_dir
    before = sorted(p.name for p in tmp_path.iterdir())
    assert main(["keygen", "--key-path", str(argv_dir)]) == 78
    err = capsys.readouterr().err
    assert err.startswith("p0-ssh-agent keygen: ") and str(argv_dir) in err and "Traceback" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == before


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the directory away")
def test_a_key_directory_owned_by_someone_else_is_refused_with_the_chown(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    os.chown(key_dir, 4242, 4242)
    assert main(["keygen", "--key-path", str(key_dir)]) == 77
    assert f"chown {os.geteuid()} {key_dir}" in capsys.readouterr().err
    assert list(key_dir.iterdir()) == []


def test_the_key_directory_comes_from_the_configuration_or_the_old_path_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from_config = tmp_path / "configured-keys"
    config = tmp_path / "config.yaml"
    config.write_text(f"# the operator's note\nkeyPath: {from_config}\n")
    assert main(["keygen", "--config", str(config)]) == 0
    assert main(["-c", str(config), "keygen", "--force"]) == 0  # the global option before the subcommand too
    assert sorted(p.name for p in from_config.iterdir()) == [PRIVATE, PUBLIC]
    assert config.read_text() == f"# the operator's note\nkeyPath: {from_config}\n"  # keygen never writes config

    old_flag = tmp_path / "old-flag-keys"
    assert main(["keygen", "--config", str(config), "--path", str(old_flag)]) == 0
    assert (old_flag / PRIVATE).exists()
    capsys.readouterr()


def test_a_bad_configuration_without_key_path_exits_78_before_writing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"keyPath: {tmp_path / 'keys'}\nkeyPaht: x\n")
    assert main(["keygen", "--config", str(config)]) == 78
    assert f"{config}:2:1: unknown key 'keyPaht'" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.yaml"]


def test_environment_names_the_key_directory_when_no_flag_does(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(f"keyPath: {tmp_path / 'from-file'}\n")
    monkeypatch.setenv("P0_SSH_AGENT_KEYPATH", str(tmp_path / "from-env"))
    assert main(["keygen", "--config", str(config)]) == 0
    assert (tmp_path / "from-env" / PRIVATE).exists() and not (tmp_path / "from-file").exists()
    assert main(["keygen", "--config", str(config), "--key-path", str(tmp_path / "from-flag")]) == 0
    assert (tmp_path / "from-flag" / PRIVATE).exists()
    capsys.readouterr()
