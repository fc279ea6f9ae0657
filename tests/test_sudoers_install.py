"""host.sudo with the real visudo and sudo. Layout checks and visudo on tmp files run anywhere (as root); installing
into /etc/sudoers.d, sudo -l and logins with sudo run in the sandbox, where /etc is a copy."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.core.authorized_keys_format import remove_block
from p0_ssh_agent.core.sudoers import HEADER, SudoGrant, render_dropin
from p0_ssh_agent.host import sudoers_install
from p0_ssh_agent.host.safefile import FileEdit
from p0_ssh_agent.host.sudoers_install import (
    SudoersInvalid,
    SudoUnavailable,
    check_sudoers_layout,
    edit_legacy_file,
    install_dropin,
    preview_dropin,
    preview_legacy_file,
    visudo_check_file,
    visudo_check_text,
)
from sandbox.fixtures import Sandbox, Sshd, run, unique_user_name

needs_visudo = pytest.mark.skipif(
    os.geteuid() != 0 or not any(Path(p).exists() for p in sudoers_install.VISUDO_CANDIDATES),
    reason="needs root and visudo",
)
DROPIN = Path("/etc/sudoers.d/p0-ssh-agent")
LEGACY = Path("/etc/sudoers-p0")


# --- anywhere -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "ok"),
    [
        ("@includedir /etc/sudoers.d\n", True),
        ("#includedir /etc/sudoers.d\n", True),
        ("root ALL=(ALL) ALL\n", False),
        ("# includedir /etc/sudoers.d\n", False),
    ],
)
def test_layout_needs_the_include(tmp_path: Path, text: str, ok: bool) -> None:
    sudoers = tmp_path / "sudoers"
    sudoers.write_text(text)
    dropins = tmp_path / "sudoers.d"
    dropins.mkdir(mode=0o750)
    if ok:
        check_sudoers_layout(str(sudoers), str(dropins))
    else:
        with pytest.raises(SudoUnavailable, match=f"{sudoers} does not include /etc/sudoers.d.*@includedir"):
            check_sudoers_layout(str(sudoers), str(dropins))


def test_layout_refuses_a_symlinked_or_loose_dropin_dir(tmp_path: Path) -> None:
    sudoers = tmp_path / "sudoers"
    sudoers.write_text("@includedir /etc/sudoers.d\n")
    real = tmp_path / "real"
    real.mkdir(mode=0o750)
    (tmp_path / "link").symlink_to(real)
    with pytest.raises(SudoUnavailable, match=r"it is a symlink \(to .*real\)"):
        check_sudoers_layout(str(sudoers), str(tmp_path / "link"))
    real.chmod(0o777)
    with pytest.raises(SudoUnavailable, match="not group/world-writable"):
        check_sudoers_layout(str(sudoers), str(real))
    with pytest.raises(SudoUnavailable, match="cannot read"):
        check_sudoers_layout(str(tmp_path / "missing"), str(real))


@needs_visudo
def test_visudo_checks_files_and_text(tmp_path: Path) -> None:
    good = tmp_path / "good"
    good.write_text(render_dropin([SudoGrant("r1", "alice", None)]))
    good.chmod(0o440)
    visudo_check_file(str(good))
    visudo_check_text(good.read_text())
    bad = tmp_path / "bad"
    bad.write_text("alice ALL=(ALL NOPASSWD: ALL\n")
    bad.chmod(0o440)
    with pytest.raises(SudoersInvalid, match=f"visudo rejects {bad}: .*syntax error"):
        visudo_check_file(str(bad))
    with pytest.raises(SudoersInvalid, match="syntax error"):
        visudo_check_text(bad.read_text())


def test_missing_visudo_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(sudoers_install, "VISUDO_CANDIDATES", (str(tmp_path / "visudo"),))
    with pytest.raises(SudoUnavailable, match=r"visudo not found.*install sudo"):
        preview_dropin("x ALL=(ALL) ALL\n")


@pytest.mark.parametrize("name", ["p0.conf", "p0~", "a/b", ""])
def test_dropin_names_sudo_would_skip_are_refused(name: str) -> None:
    with pytest.raises(ValueError, match="must not contain"):
        preview_dropin(None, name=name)


# --- in the sandbox -----------------------------------------------------------------------------------------


def sudoers_state() -> dict[str, tuple[int, bytes]]:
    paths = [Path("/etc/sudoers"), LEGACY, *sorted(Path("/etc/sudoers.d").iterdir())]
    return {str(path): (path.lstat().st_mode, path.read_bytes()) for path in paths if path.exists()}


@pytest.fixture
def sudoers(sandbox: Sandbox) -> Iterator[Sandbox]:
    """The sandbox, with its sudo files put back as they were after the test."""
    before = sudoers_state()
    yield sandbox
    for path in set(sudoers_state()) - set(before):
        Path(path).unlink()
    for path, (mode, content) in before.items():
        Path(path).write_bytes(content)
        Path(path).chmod(stat.S_IMODE(mode))


def sudo_list(user: str) -> str:
    return run(["/usr/bin/sudo", "-l", "-U", user]).stdout


@pytest.mark.sandbox
def test_install_grants_and_removal_revokes_over_ssh(
    sudoers: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str]
) -> None:
    key, public = user_keypair
    name = unique_user_name()
    sudoers.useradd(name)
    try:
        sudoers.install_key(name, public)
        assert sshd.ssh(name, key, "/usr/bin/sudo", "-n", "true").returncode != 0

        text = render_dropin([SudoGrant("req-1", name, None)])
        edit = install_dropin(text)
        assert edit == FileEdit(str(DROPIN), None, text.encode(), changed=True)
        info = DROPIN.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o440, 0, 0)
        assert "(ALL) NOPASSWD: ALL" in sudo_list(name)
        done = sshd.ssh(name, key, "/usr/bin/sudo", "-n", "id", "-u")
        assert (done.returncode, done.stdout.strip()) == (0, "0"), done.stderr

        assert install_dropin(text).changed is False  # idempotent
        removed = install_dropin(None)
        assert (removed.before, removed.after, removed.changed) == (text.encode(), None, True)
        assert not DROPIN.exists()
        assert "NOPASSWD" not in sudo_list(name)
        assert sshd.ssh(name, key, "/usr/bin/sudo", "-n", "true").returncode != 0
    finally:
        sudoers.userdel(name)


@pytest.mark.sandbox
def test_run_as_rule_shows_in_sudo_list(sudoers: Sandbox) -> None:
    name = unique_user_name()
    sudoers.useradd(name)
    try:
        install_dropin(render_dropin([SudoGrant("req-2", name, "nobody")]))
        assert "(nobody) NOPASSWD: ALL" in sudo_list(name)
    finally:
        sudoers.userdel(name)


@pytest.mark.sandbox
@pytest.mark.parametrize("text", ["this is not sudoers(\n", HEADER + "alice ALL=(ALL NOPASSWD: ALL\n"])
def test_invalid_text_is_refused_and_sudoers_d_unchanged(sudoers: Sandbox, text: str) -> None:
    install_dropin(render_dropin([SudoGrant("req-1", "root", None)]))
    before = sudoers_state()
    with pytest.raises(SudoersInvalid, match=r"visudo rejects .*/etc/sudoers.d/.p0-ssh-agent.tmp."):
        install_dropin(text)
    assert sudoers_state() == before
    with pytest.raises(SudoersInvalid, match="visudo rejects the new sudoers content"):
        preview_dropin(text)
    assert sudoers_state() == before


@pytest.mark.sandbox
def test_a_clash_with_another_file_is_rolled_back(sudoers: Sandbox) -> None:
    """Valid alone, invalid in the tree (a duplicate alias): the previous drop-in comes back, and sudo works."""
    other = Path("/etc/sudoers.d/zz-site")
    other.write_text("Cmnd_Alias P0CLASH = /bin/true\n")
    other.chmod(0o440)
    first = render_dropin([SudoGrant("req-1", "root", None)])
    install_dropin(first)
    before = sudoers_state()
    with pytest.raises(SudoersInvalid, match=r"previous content was restored.*already defined"):
        install_dropin(first + "Cmnd_Alias P0CLASH = /bin/false\n")
    assert sudoers_state() == before
    sudoers_install.visudo_check_all()

    DROPIN.unlink()
    with pytest.raises(SudoersInvalid, match=r"previous state \(no file\) was restored"):
        install_dropin(first + "Cmnd_Alias P0CLASH = /bin/false\n")
    assert not DROPIN.exists()
    assert not [path for path in Path("/etc/sudoers.d").iterdir() if ".tmp." in path.name]


@pytest.mark.sandbox
def test_an_already_broken_tree_is_not_touched(sudoers: Sandbox) -> None:
    broken = Path("/etc/sudoers.d/zz-broken")
    broken.write_text("this is broken(\n")
    broken.chmod(0o440)
    before = sudoers_state()
    with pytest.raises(SudoersInvalid, match=r"already invalid, so /etc/sudoers.d/p0-ssh-agent was not changed"):
        install_dropin(render_dropin([SudoGrant("req-1", "root", None)]))
    assert sudoers_state() == before


@pytest.mark.sandbox
def test_missing_includedir_is_refused(sudoers: Sandbox) -> None:
    sudoers_file = Path("/etc/sudoers")
    lines = sudoers_file.read_text().splitlines(keepends=True)
    sudoers_file.write_text("".join(line for line in lines if "includedir" not in line))
    before = sudoers_state()
    with pytest.raises(SudoUnavailable, match=r"/etc/sudoers does not include /etc/sudoers.d"):
        install_dropin(render_dropin([SudoGrant("req-1", "root", None)]))
    assert sudoers_state() == before


@pytest.mark.sandbox
def test_legacy_file_grants_are_removed_with_visudo_checks(sudoers: Sandbox) -> None:
    """The Go agent's layout: /etc/sudoers-p0 with marker blocks, `#include sudoers-p0` appended to /etc/sudoers."""
    alice, bob = unique_user_name(), unique_user_name()
    for name in (alice, bob):
        sudoers.useradd(name)
    try:
        go_wrote = (
            f"# RequestID: AbC123\n{alice} ALL=(ALL) NOPASSWD: ALL\n"
            f"# RequestID: XyZ789\n{bob} ALL=(ALL) NOPASSWD: ALL\n"
        )
        LEGACY.write_text(go_wrote)
        LEGACY.chmod(0o644)  # the Go agent only set 0440 on creation; enforced now
        with Path("/etc/sudoers").open("a") as main:
            main.write("#include sudoers-p0\n")
        assert "NOPASSWD" in sudo_list(alice)

        dry = preview_legacy_file(lambda content: remove_block(content, "AbC123"))
        assert dry.changed and LEGACY.read_text() == go_wrote

        edit = edit_legacy_file(lambda content: remove_block(content, "AbC123"))
        assert edit.changed
        assert LEGACY.read_text() == f"# RequestID: XyZ789\n{bob} ALL=(ALL) NOPASSWD: ALL\n"
        assert stat.S_IMODE(LEGACY.stat().st_mode) == 0o440
        assert "NOPASSWD" not in sudo_list(alice)
        assert "NOPASSWD" in sudo_list(bob)

        before = sudoers_state()
        with pytest.raises(SudoersInvalid, match="visudo rejects"):
            edit_legacy_file(lambda content: content + b"broken(\n")
        assert sudoers_state() == before

        assert edit_legacy_file(lambda content: remove_block(content, "XyZ789")).after == b""
        assert LEGACY.exists()  # kept: /etc/sudoers still includes it
        assert "NOPASSWD" not in sudo_list(bob)
    finally:
        for name in (alice, bob):
            sudoers.userdel(name)


@pytest.mark.sandbox
def test_legacy_missing_file_stays_missing(sudoers: Sandbox) -> None:
    if LEGACY.exists():
        LEGACY.unlink()
    assert edit_legacy_file(lambda content: content + b"x ALL=(ALL) ALL\n") == FileEdit(str(LEGACY), None, None, False)
    assert not LEGACY.exists()


@pytest.mark.sandbox
def test_a_removal_that_breaks_the_tree_is_rolled_back(sudoers: Sandbox) -> None:
    """A site that @includes our drop-in by name: sudo fails on the missing file, so the removal is undone."""
    text = render_dropin([SudoGrant("req-1", "root", None)])
    install_dropin(text)
    with Path("/etc/sudoers").open("a") as main:
        main.write(f"@include {DROPIN}\n")
    sudoers_install.visudo_check_all()
    with pytest.raises(SudoersInvalid, match=r"previous content was restored.*No such file"):
        install_dropin(None)
    assert DROPIN.read_text() == text
    assert stat.S_IMODE(DROPIN.stat().st_mode) == 0o440
    sudoers_install.visudo_check_all()
