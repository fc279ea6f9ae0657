"""host.rootfile.write_root_file / remove_root_file on real root-owned directories in tmp_path."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from p0_ssh_agent.host.rootfile import preview_root_file, preview_root_removal, remove_root_file, write_root_file
from p0_ssh_agent.host.safefile import FileEdit, FileEditFailed, UnsafePath

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="root-owned files: needs root")

OTHER = 65598


@pytest.fixture
def etc(tmp_path: Path) -> Path:
    directory = tmp_path / "etc"
    directory.mkdir(mode=0o755)
    directory.chmod(0o755)
    return directory


def entries(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        path.name: (path.lstat().st_mode, path.lstat().st_uid, path.read_bytes() if path.is_file() else b"")
        for path in directory.iterdir()
    }


def test_writes_a_new_file_root_owned_with_the_mode(etc: Path) -> None:
    target = etc / "p0-ssh-agent"
    result = write_root_file(str(target), b"rule\n", mode=0o440)
    assert result == FileEdit(str(target), None, b"rule\n", changed=True)
    info = target.stat()
    assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o440, 0, 0)
    assert target.read_bytes() == b"rule\n"
    assert [path.name for path in etc.iterdir()] == ["p0-ssh-agent"]


def test_validate_sees_the_complete_temp_file_before_the_rename(etc: Path) -> None:
    target = etc / "p0-ssh-agent"
    target.write_bytes(b"old\n")
    seen: list[tuple[str, bytes, int, bytes]] = []

    def validate(temp_path: str) -> None:
        temp = Path(temp_path)
        seen.append((temp.name, temp.read_bytes(), stat.S_IMODE(temp.stat().st_mode), target.read_bytes()))

    write_root_file(str(target), b"new\n", mode=0o440, validate=validate)
    [(name, content, mode, target_then)] = seen
    assert name.startswith(".p0-ssh-agent.tmp.")  # has a '.': sudo's includedir skips it
    assert (content, mode, target_then) == (b"new\n", 0o440, b"old\n")
    assert target.read_bytes() == b"new\n"


def test_a_refusing_validator_leaves_the_target_and_no_temp(etc: Path) -> None:
    target = etc / "p0-ssh-agent"
    target.write_bytes(b"old\n")
    target.chmod(0o440)
    before = entries(etc)

    def refuse(_: str) -> None:
        raise FileEditFailed("syntax error")

    with pytest.raises(FileEditFailed, match="syntax error"):
        write_root_file(str(target), b"broken(\n", mode=0o440, validate=refuse)
    assert entries(etc) == before


def test_unchanged_content_still_gets_mode_and_owner(etc: Path) -> None:
    target = etc / "p0-ssh-agent"
    target.write_bytes(b"same\n")
    target.chmod(0o644)
    inode = target.stat().st_ino
    result = write_root_file(str(target), b"same\n", mode=0o440)
    assert result.changed is False
    assert stat.S_IMODE(target.stat().st_mode) == 0o440
    assert target.stat().st_ino == inode


def test_dry_run_writes_nothing(etc: Path) -> None:
    target = etc / "p0-ssh-agent"
    target.write_bytes(b"old\n")
    target.chmod(0o644)
    before = entries(etc)
    assert preview_root_file(str(target), b"new\n") == FileEdit(str(target), b"old\n", b"new\n", True)
    assert preview_root_removal(str(target)) == FileEdit(str(target), b"old\n", None, True)
    assert entries(etc) == before


def test_symlink_target_is_refused(etc: Path, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"do not touch\n")
    (etc / "p0-ssh-agent").symlink_to(victim)
    with pytest.raises(UnsafePath, match=r"it is a symlink \(to .*victim\)"):
        write_root_file(str(etc / "p0-ssh-agent"), b"x\n", mode=0o440)
    with pytest.raises(UnsafePath, match="symlink"):
        remove_root_file(str(etc / "p0-ssh-agent"))
    assert victim.read_bytes() == b"do not touch\n"
    assert (etc / "p0-ssh-agent").is_symlink()


def test_hard_linked_or_foreign_owned_target_is_refused(etc: Path, tmp_path: Path) -> None:
    target = etc / "p0-ssh-agent"
    target.write_bytes(b"x\n")
    os.link(target, tmp_path / "second-name")
    with pytest.raises(UnsafePath, match="2 hard links"):
        write_root_file(str(target), b"y\n", mode=0o440)
    (tmp_path / "second-name").unlink()
    os.chown(target, OTHER, OTHER)
    with pytest.raises(UnsafePath, match=f"owned by uid {OTHER}, not uid 0"):
        write_root_file(str(target), b"y\n", mode=0o440)
    assert target.read_bytes() == b"x\n"


@pytest.mark.parametrize(("owner", "mode", "problem"), [(OTHER, 0o755, "owned by uid"), (0, 0o775, "group- or world")])
def test_unsafe_directory_is_refused(etc: Path, owner: int, mode: int, problem: str) -> None:
    os.chown(etc, owner, owner)
    etc.chmod(mode)
    with pytest.raises(UnsafePath, match=problem):
        write_root_file(str(etc / "p0-ssh-agent"), b"x\n", mode=0o440)
    assert list(etc.iterdir()) == []


def test_missing_directory_and_relative_path(tmp_path: Path) -> None:
    with pytest.raises(FileEditFailed, match="does not exist"):
        write_root_file(str(tmp_path / "missing" / "file"), b"x", mode=0o440)
    with pytest.raises(ValueError, match="absolute"):
        write_root_file("etc/file", b"x", mode=0o440)


def test_remove(etc: Path) -> None:
    target = etc / "p0-ssh-agent"
    target.write_bytes(b"rule\n")
    assert remove_root_file(str(target)) == FileEdit(str(target), b"rule\n", None, changed=True)
    assert not target.exists()
    assert remove_root_file(str(target)) == FileEdit(str(target), None, None, changed=False)
