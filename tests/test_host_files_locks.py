"""host.locks: flock locks really exclude another process, per uid and per name, in a checked directory."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from p0_ssh_agent.errors import PermissionProblem
from p0_ssh_agent.host.locks import LockFailed, global_lock, user_file_lock

# Another process tries the same lock file without waiting: exit 0 = it got the lock, 1 = someone holds it.
_PROBE = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDWR)
try:
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except BlockingIOError:
    sys.exit(1)
"""


def free_in_other_process(lock_file: Path) -> bool:
    done = subprocess.run([sys.executable, "-c", _PROBE, str(lock_file)], check=False)
    assert done.returncode in (0, 1)
    return done.returncode == 0


def test_user_lock_excludes_another_process_until_released(tmp_path: Path) -> None:
    lock_dir = tmp_path / "run" / "locks"
    with user_file_lock(1234, lock_dir=str(lock_dir)):
        lock_file = lock_dir / "uid-1234.lock"
        assert not free_in_other_process(lock_file)
        with user_file_lock(1235, lock_dir=str(lock_dir)):  # another user's lock is independent
            pass
    assert free_in_other_process(lock_file)


def test_global_lock_excludes_another_process(tmp_path: Path) -> None:
    with global_lock("sudoers", lock_dir=str(tmp_path)):
        assert not free_in_other_process(tmp_path / "global-sudoers.lock")
    assert free_in_other_process(tmp_path / "global-sudoers.lock")


def test_released_when_the_body_raises(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), user_file_lock(7, lock_dir=str(tmp_path)):
        raise RuntimeError
    assert free_in_other_process(tmp_path / "uid-7.lock")


def test_lock_dir_and_files_are_private(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    with user_file_lock(1, lock_dir=str(lock_dir)):
        pass
    assert stat.S_IMODE(lock_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE((lock_dir / "uid-1.lock").stat().st_mode) == 0o600


def test_a_writable_lock_dir_is_refused(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir()
    lock_dir.chmod(0o777)
    with (
        pytest.raises(PermissionProblem, match="not be group/world-writable"),
        global_lock("x", lock_dir=str(lock_dir)),
    ):
        pass


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another uid needs root")
def test_a_foreign_lock_dir_is_refused(tmp_path: Path) -> None:
    lock_dir = tmp_path / "locks"
    lock_dir.mkdir(mode=0o700)
    os.chown(lock_dir, 65598, 65598)
    with pytest.raises(PermissionProblem, match="owned by uid 65598"), user_file_lock(1, lock_dir=str(lock_dir)):
        pass


def test_symlinked_lock_dir_or_file_is_refused(tmp_path: Path) -> None:
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    (tmp_path / "link").symlink_to(real)
    with (
        pytest.raises(LockFailed, match="cannot open lock directory"),
        user_file_lock(1, lock_dir=str(tmp_path / "link")),
    ):
        pass
    victim = tmp_path / "victim"
    victim.write_text("keep")
    (real / "uid-2.lock").symlink_to(victim)
    with pytest.raises(LockFailed, match="cannot open lock file"), user_file_lock(2, lock_dir=str(real)):
        pass
    assert victim.read_text() == "keep"


def test_names_are_checked() -> None:
    with pytest.raises(ValueError, match="lock name"):
        global_lock("../etc/passwd")
    with pytest.raises(ValueError, match="negative"):
        user_file_lock(-1)
