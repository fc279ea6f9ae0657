"""host.safefile: symlink-safe, atomic ~/.ssh edits, on real files in tmp_path (as root, chown to a UID nobody has).

Every refusal test also checks that nothing changed: not the file we refused, not what a link pointed at."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from p0_ssh_agent.core.authorized_keys_format import add_block, remove_block
from p0_ssh_agent.errors import PermissionProblem
from p0_ssh_agent.host import safefile, selinux
from p0_ssh_agent.host.safefile import FileEdit, FileEditFailed, UnsafePath, edit_in_user_dir, preview_in_user_dir

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="chowns files to other UIDs: needs root")

UID, GID = 65599, 65599
OTHER = 65598
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl p0@test"


def append(line: bytes) -> Callable[[bytes], bytes]:
    return lambda content: content + line


def make_home(tmp_path: Path, *, owner: int = UID, mode: int = 0o755) -> Path:
    home = tmp_path / "home" / "bob"
    home.mkdir(parents=True)
    os.chown(home, owner, owner)
    home.chmod(mode)
    return home


def edit(
    home: Path, transform: Callable[[bytes], bytes] | None = None, *, create: bool = True, preview: bool = False
) -> FileEdit:
    """edit_in_user_dir, or (preview) preview_in_user_dir, on the user's authorized_keys."""
    change = preview_in_user_dir if preview else edit_in_user_dir
    return change(
        home=str(home),
        uid=UID,
        gid=GID,
        subdir=".ssh",
        filename="authorized_keys",
        transform=transform or append(b"key\n"),
        create=create,
    )


def snapshot(root: Path) -> dict[str, tuple[int, int, int, int, bytes | str | None]]:
    """Every entry under root: mode, owner, group, inode, and content (file) or target (symlink)."""
    result: dict[str, tuple[int, int, int, int, bytes | str | None]] = {}
    for path in sorted([root, *root.rglob("*")]):
        info = path.lstat()
        body: bytes | str | None = None
        if stat.S_ISREG(info.st_mode):
            body = path.read_bytes()
        elif stat.S_ISLNK(info.st_mode):
            body = str(path.readlink())
        result[str(path)] = (info.st_mode, info.st_uid, info.st_gid, info.st_ino, body)
    return result


def make_ssh(
    home: Path, *, owner: int = UID, mode: int = 0o700, keys: bytes | None = None, key_mode: int = 0o600
) -> Path:
    ssh = home / ".ssh"
    ssh.mkdir()
    os.chown(ssh, owner, owner)
    ssh.chmod(mode)
    if keys is not None:
        (ssh / "authorized_keys").write_bytes(keys)
        os.chown(ssh / "authorized_keys", owner, owner)
        (ssh / "authorized_keys").chmod(key_mode)
    return ssh


def no_temp_files(directory: Path) -> bool:
    return not [entry for entry in directory.iterdir() if ".p0tmp." in entry.name or ".tmp." in entry.name]


# --- creating and editing -----------------------------------------------------------------------------------


def test_creates_ssh_dir_and_file_with_owner_and_modes(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    result = edit(home, append(KEY.encode() + b"\n"))
    keys = home / ".ssh" / "authorized_keys"
    assert result == FileEdit(str(keys), None, KEY.encode() + b"\n", changed=True)
    assert keys.read_bytes() == KEY.encode() + b"\n"
    for path, mode in ((home / ".ssh", 0o700), (keys, 0o600)):
        info = path.lstat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (mode, UID, GID)
    assert no_temp_files(home / ".ssh")


def test_unchanged_content_is_not_rewritten(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    edit(home, lambda _: b"key\n")
    inode = (home / ".ssh" / "authorized_keys").stat().st_ino
    again = edit(home, lambda content: content)
    assert again.changed is False
    assert again.before == again.after == b"key\n"
    assert (home / ".ssh" / "authorized_keys").stat().st_ino == inode


def test_foreign_lines_survive_add_then_remove_byte_for_byte(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    theirs = b"# my own keys\r\nssh-rsa AAAAB3Nz me@laptop\n\xff not utf-8 \xfe"  # no final newline, not UTF-8
    make_ssh(home, keys=theirs)
    added = edit(home, lambda content: add_block(content, "req-1", KEY))
    assert added.changed
    assert theirs in (home / ".ssh" / "authorized_keys").read_bytes()
    removed = edit(home, lambda content: remove_block(content, "req-1"))
    assert removed.changed
    assert (home / ".ssh" / "authorized_keys").read_bytes() == theirs


def test_root_owned_ssh_and_file_are_handed_to_the_user(tmp_path: Path) -> None:
    """The Go agent created ~/.ssh as root; sshd accepts that, and we give it to the user as upstream intended."""
    home = make_home(tmp_path)
    make_ssh(home, owner=0, keys=b"old\n")
    edit(home, lambda content: content)
    for path in (home / ".ssh", home / ".ssh" / "authorized_keys"):
        assert (path.stat().st_uid, path.stat().st_gid) == (UID, GID)


@pytest.mark.parametrize("change", [False, True])
def test_keep_owner_leaves_owner_and_mode_and_writes_only_a_change(tmp_path: Path, change: bool) -> None:
    """A revoke in an account the agent does not manage: nothing is handed to the user, nothing is tightened."""
    home = make_home(tmp_path)
    make_ssh(home, owner=0, mode=0o755, keys=b"old\n# RequestID: req-1\nkey\n", key_mode=0o644)
    keys = home / ".ssh" / "authorized_keys"
    inode = keys.stat().st_ino
    result = edit_in_user_dir(
        home=str(home),
        uid=UID,
        gid=GID,
        subdir=".ssh",
        filename="authorized_keys",
        transform=(lambda content: remove_block(content, "req-1")) if change else (lambda content: content),
        create=False,
        keep_owner=True,
    )
    assert result.changed is change
    for path, mode in ((home / ".ssh", 0o755), (keys, 0o644)):
        assert (path.stat().st_uid, path.stat().st_gid, stat.S_IMODE(path.stat().st_mode)) == (0, 0, mode)
    assert keys.read_bytes() == (b"old\n" if change else b"old\n# RequestID: req-1\nkey\n")
    assert (keys.stat().st_ino == inode) is not change  # unchanged: not rewritten at all
    with pytest.raises(ValueError, match="keep_owner"):
        edit_in_user_dir(
            home=str(home), uid=UID, gid=GID, subdir=".ssh", filename="authorized_keys",
            transform=lambda content: content, keep_owner=True,
        )  # fmt: skip


@pytest.mark.parametrize("change", [False, True])
def test_loose_modes_are_tightened(tmp_path: Path, change: bool) -> None:
    home = make_home(tmp_path)
    make_ssh(home, mode=0o777, keys=b"old\n", key_mode=0o666)
    edit(home, append(b"new\n") if change else (lambda content: content))
    assert stat.S_IMODE((home / ".ssh").stat().st_mode) == 0o700
    assert stat.S_IMODE((home / ".ssh" / "authorized_keys").stat().st_mode) == 0o600


def test_root_owned_home_is_accepted(tmp_path: Path) -> None:
    home = make_home(tmp_path, owner=0)
    assert edit(home).changed
    assert (home / ".ssh").stat().st_uid == UID


def test_empty_result_does_not_create_a_file(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    assert edit(home, lambda content: content) == FileEdit(str(home / ".ssh" / "authorized_keys"), None, None, False)
    assert not (home / ".ssh").exists()
    make_ssh(home)
    assert edit(home, lambda content: content).changed is False
    assert not (home / ".ssh" / "authorized_keys").exists()


def test_create_false_leaves_a_missing_file_missing_and_skips_transform(tmp_path: Path) -> None:
    home = make_home(tmp_path)

    def must_not_run(_: bytes) -> bytes:
        raise AssertionError("transform called for a missing file with create=False")

    assert edit(home, must_not_run, create=False).changed is False
    make_ssh(home)
    assert edit(home, must_not_run, create=False).changed is False
    assert list((home / ".ssh").iterdir()) == []


# --- dry run ------------------------------------------------------------------------------------------------


def test_dry_run_creates_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    before = snapshot(tmp_path)
    result = edit(home, append(b"key\n"), preview=True)
    assert result == FileEdit(str(home / ".ssh" / "authorized_keys"), None, b"key\n", changed=True)
    assert snapshot(tmp_path) == before


def test_dry_run_changes_neither_content_nor_modes(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    make_ssh(home, mode=0o755, keys=b"old\n", key_mode=0o644)
    before = snapshot(tmp_path)
    result = edit(home, append(b"new\n"), preview=True)
    assert (result.before, result.after, result.changed) == (b"old\n", b"old\nnew\n", True)
    assert snapshot(tmp_path) == before


# --- refusals -----------------------------------------------------------------------------------------------


def test_symlinked_ssh_dir_is_refused_and_its_target_untouched(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    target = tmp_path / "elsewhere"
    target.mkdir()
    (target / "authorized_keys").write_bytes(b"root's keys\n")
    (home / ".ssh").symlink_to(target)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=rf"refusing {home}/\.ssh: it is a symlink \(to {target}\)"):
        edit(home)
    assert snapshot(tmp_path) == before


def test_symlinked_authorized_keys_is_refused_and_the_target_byte_identical(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    ssh = make_ssh(home)
    outside = tmp_path / "shadow"
    outside.write_bytes(b"root:$6$secret:19000:0:99999:7:::\n")
    outside.chmod(0o640)
    (ssh / "authorized_keys").symlink_to(outside)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=r"authorized_keys: it is a symlink \(to .*shadow\)"):
        edit(home)
    assert snapshot(tmp_path) == before
    assert isinstance(UnsafePath("x"), PermissionProblem)


def test_hard_link_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    ssh = make_ssh(home, keys=b"mine\n")
    other = tmp_path / "other-name"
    os.link(ssh / "authorized_keys", other)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match="it has 2 hard links"):
        edit(home)
    assert snapshot(tmp_path) == before


def test_foreign_owned_ssh_dir_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    make_ssh(home, owner=OTHER, keys=b"theirs\n")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=rf"\.ssh: it is owned by uid {OTHER}, not uid 0 or uid {UID}"):
        edit(home)
    assert snapshot(tmp_path) == before


def test_foreign_owned_file_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    ssh = make_ssh(home, keys=b"theirs\n")
    os.chown(ssh / "authorized_keys", OTHER, OTHER)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=f"authorized_keys: it is owned by uid {OTHER}"):
        edit(home)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize("mode", [0o775, 0o757, 0o777])
def test_group_or_world_writable_home_is_refused(tmp_path: Path, mode: int) -> None:
    home = make_home(tmp_path, mode=mode)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=f"group- or world-writable \\(mode {mode:04o}\\).*chmod go-w {home}"):
        edit(home)
    assert snapshot(tmp_path) == before


def test_foreign_owned_home_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path, owner=OTHER)
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=f"refusing {home}: it is owned by uid {OTHER}"):
        edit(home)
    assert snapshot(tmp_path) == before


def test_symlinked_home_is_refused(tmp_path: Path) -> None:
    real = make_home(tmp_path)
    link = tmp_path / "link-home"
    link.symlink_to(real)
    with pytest.raises(UnsafePath, match=f"refusing {link}: it is a symlink"):
        edit(link)
    assert not (real / ".ssh").exists()


def test_missing_home_is_an_error_naming_it(tmp_path: Path) -> None:
    with pytest.raises(FileEditFailed, match=f"the home directory {tmp_path / 'nobody'} does not exist"):
        edit(tmp_path / "nobody")


@pytest.mark.parametrize(
    ("make", "kind"),
    [
        (os.mkfifo, "a FIFO"),  # must not hang on open
        (lambda path: path.mkdir(), "a directory"),
    ],
)
def test_non_regular_file_is_refused(tmp_path: Path, make: Callable[[Path], None], kind: str) -> None:
    home = make_home(tmp_path)
    ssh = make_ssh(home)
    make(ssh / "authorized_keys")
    before = snapshot(tmp_path)
    with pytest.raises(UnsafePath, match=f"authorized_keys: it is {kind}, not a regular file"):
        edit(home)
    assert snapshot(tmp_path) == before


def test_ssh_that_is_a_file_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    (home / ".ssh").write_text("not a dir")
    with pytest.raises(UnsafePath, match=r"\.ssh: it is a regular file, not a directory"):
        edit(home)


def test_oversized_file_is_refused(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    ssh = make_ssh(home)
    with (ssh / "authorized_keys").open("wb") as big:
        big.truncate(safefile.MAX_FILE_BYTES + 1)
    os.chown(ssh / "authorized_keys", UID, GID)
    with pytest.raises(UnsafePath, match="more than"):
        edit(home)


@pytest.mark.parametrize("bad", ["", ".", "..", "a/b", "../etc"])
def test_path_components_are_single_names(tmp_path: Path, bad: str) -> None:
    home = make_home(tmp_path)
    with pytest.raises(ValueError, match="single path component"):
        edit_in_user_dir(home=str(home), uid=UID, gid=GID, subdir=bad, filename="k", transform=append(b"x"))
    with pytest.raises(ValueError, match="single path component"):
        edit_in_user_dir(home=str(home), uid=UID, gid=GID, subdir=".ssh", filename=bad, transform=append(b"x"))


# --- failures leave nothing behind --------------------------------------------------------------------------


def test_a_failing_transform_changes_nothing(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    make_ssh(home, keys=b"old\n")
    before = snapshot(tmp_path)

    def explode(_: bytes) -> bytes:
        raise RuntimeError("injected")

    with pytest.raises(RuntimeError, match="injected"):
        edit(home, explode)
    assert snapshot(tmp_path) == before


_WRITE_FAILS = """
import resource, signal, sys
from p0_ssh_agent.host.safefile import edit_in_user_dir, FileEditFailed
# Files may not grow past 4 KiB: the write of the temp file fails with EFBIG halfway, a real I/O error.
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096))
try:
    edit_in_user_dir(home=sys.argv[1], uid=65599, gid=65599, subdir=".ssh", filename="authorized_keys",
                     transform=lambda content: content + b"k" * 100_000)
except FileEditFailed as exc:
    print(exc)
    sys.exit(3)
"""


def test_an_io_error_while_writing_removes_the_temp_file(tmp_path: Path) -> None:
    home = make_home(tmp_path)
    ssh = make_ssh(home, keys=b"old\n")
    before = snapshot(tmp_path)
    done = subprocess.run([sys.executable, "-c", _WRITE_FAILS, str(home)], capture_output=True, text=True, check=False)
    assert done.returncode == 3, done.stdout + done.stderr
    assert f"cannot write {ssh}/authorized_keys: File too large" in done.stdout
    assert no_temp_files(ssh)
    assert snapshot(tmp_path) == before


# --- SELinux ------------------------------------------------------------------------------------------------


def fake_restorecon(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, *, exit_code: int = 0) -> Path:
    """Point selinux at a selinuxfs with `enforce` and a restorecon script that records its arguments."""
    selinuxfs = tmp_path / "selinuxfs"
    selinuxfs.mkdir()
    (selinuxfs / "enforce").write_text("1")
    log = tmp_path / "restorecon.log"
    tool = tmp_path / "bin" / "restorecon"
    tool.parent.mkdir()
    tool.write_text(f'#!/bin/sh\nprintf "%s\\n" "$@" >> {log}\nexit {exit_code}\n')
    tool.chmod(0o755)
    monkeypatch.setattr(selinux, "SELINUXFS", str(selinuxfs))
    monkeypatch.setattr(selinux, "RESTORECON_CANDIDATES", (str(tool),))
    return log


def test_restorecon_runs_on_new_files_when_selinux_is_on(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_restorecon(tmp_path, monkeypatch)
    home = make_home(tmp_path)
    edit(home)
    assert log.read_text().splitlines() == ["-F", "--", f"{home}/.ssh", f"{home}/.ssh/authorized_keys"]
    log.unlink()
    edit(home, lambda content: content)  # nothing written, nothing to relabel
    assert not log.exists()
    edit(home, append(b"more\n"))
    assert log.read_text().splitlines() == ["-F", "--", f"{home}/.ssh/authorized_keys"]


def test_restorecon_is_skipped_without_selinux(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_restorecon(tmp_path, monkeypatch)
    (tmp_path / "selinuxfs" / "enforce").unlink()
    assert selinux.restorecon(["/etc/hostname"]) is False
    assert not log.exists()


def test_restorecon_problems_are_warnings(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = fake_restorecon(tmp_path, monkeypatch, exit_code=1)
    assert selinux.restorecon([str(tmp_path)]) is False  # ran, failed, logged
    assert log.exists()
    monkeypatch.setattr(selinux, "RESTORECON_CANDIDATES", (str(tmp_path / "missing" / "restorecon"),))
    assert selinux.restorecon([str(tmp_path)]) is False
