"""host.accounts for real: useradd, usermod, userdel and a real sshd (UsePAM no), inside the namespace sandbox.

Run with `tests/sandbox/enter .venv/bin/pytest -m sandbox tests/test_host_accounts_sandbox.py` (make test does).
"""

from __future__ import annotations

import grp
import os
import pwd
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.host import accounts, proc
from p0_ssh_agent.host.account_changes import create_user, delete_user, lock_user, unlock_user
from p0_ssh_agent.host.accounts import JIT_UID_HIGH, JIT_UID_LOW, AccountConflict, UserBusy, allocate_uid, lookup_user
from p0_ssh_agent.host.sessions import terminate_user_sessions
from sandbox.fixtures import GROUPADD, GROUPDEL, USERMOD, Sandbox, Sshd, unique_user_name

pytestmark = pytest.mark.sandbox
SETPRIV = "/usr/bin/setpriv"


def shadow_field(name: str) -> str:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields[1]
    raise AssertionError(f"{name} is not in /etc/shadow")


def group_exists(name: str) -> bool:
    try:
        grp.getgrnam(name)
    except KeyError:
        return False
    return True


def new_user() -> accounts.UserRecord:
    name = unique_user_name()
    record, _ = create_user(name, uid=allocate_uid(high_water=None))
    assert record is not None
    return record


def can_log_in(sshd: Sshd, user: str, key: Path) -> bool:
    result = sshd.ssh(user, key, "id", "-u")
    if result.returncode == 0:
        assert result.stdout.strip() == str(pwd.getpwnam(user).pw_uid)
        return True
    assert result.returncode == 255, result.stderr  # ssh itself failed: the login was refused
    return False


def test_create_user_makes_a_key_only_account(sandbox: Sandbox) -> None:
    name = unique_user_name()
    uid = allocate_uid(high_water=None)
    record, argvs = create_user(name, uid=uid)
    assert record == lookup_user(name)
    assert record is not None
    assert JIT_UID_LOW <= record.uid <= JIT_UID_HIGH and record.uid == uid
    assert record.gid == uid and grp.getgrgid(uid).gr_name == name and grp.getgrnam(name).gr_mem == []
    assert record.shell == "/bin/bash" and record.home == f"/home/{name}"
    home = os.lstat(record.home)
    assert stat.S_ISDIR(home.st_mode) and (home.st_uid, home.st_gid) == (uid, uid)
    assert stat.S_IMODE(home.st_mode) == 0o700
    assert shadow_field(name) == "*"
    assert [argv[0] for argv in argvs] == ["/usr/sbin/groupadd", "/usr/sbin/useradd"]


def test_created_user_logs_in_with_a_key_without_pam(
    sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str]
) -> None:
    key, public = user_keypair
    record = new_user()
    sandbox.install_key(record.name, public)
    assert can_log_in(sshd, record.name, key)


def test_two_allocations_give_two_uids(sandbox: Sandbox) -> None:
    first = new_user()
    second_uid = allocate_uid(high_water=None)  # the first free one is no longer first.uid
    assert second_uid != first.uid
    record, _ = create_user(unique_user_name(), uid=second_uid)
    assert record is not None
    assert allocate_uid(high_water=second_uid) not in (first.uid, second_uid)


def test_existing_group_name_is_refused_and_nothing_is_created(sandbox: Sandbox) -> None:
    name = unique_user_name()
    sandbox.run("/usr/sbin/groupadd", name)
    before = grp.getgrnam(name)
    with pytest.raises(AccountConflict, match=f"a group named {name} already exists"):
        create_user(name, uid=allocate_uid(high_water=None))
    assert lookup_user(name) is None
    assert not Path(f"/home/{name}").exists()
    assert grp.getgrnam(name) == before


def test_useradd_failure_removes_the_group_it_left(sandbox: Sandbox) -> None:
    """A stale lock makes useradd fail after groupadd succeeded: the orphan group must go (§12 item 20)."""
    name = unique_user_name()
    lock = Path("/etc/passwd.lock")
    lock.write_text("1\n")
    try:
        with pytest.raises(proc.CommandFailed, match="cannot lock /etc/passwd"):
            create_user(name, uid=allocate_uid(high_water=None))
    finally:
        lock.unlink()
    assert lookup_user(name) is None
    assert not group_exists(name)
    assert not Path(f"/home/{name}").exists()


@pytest.fixture
def read_only_home(sandbox: Sandbox) -> Iterator[None]:
    sandbox.run("/usr/bin/mount", "-o", "remount,ro,bind", "/home")
    try:
        yield
    finally:
        sandbox.run("/usr/bin/mount", "-o", "remount,rw,bind", "/home")


@pytest.mark.usefixtures("read_only_home")
def test_half_created_user_is_removed_again() -> None:
    """useradd writes the passwd entry, then fails to make the home (exit 12): user and group are rolled back."""
    name = unique_user_name()
    uid = allocate_uid(high_water=None)
    with pytest.raises(proc.CommandFailed, match="exit code 12"):
        create_user(name, uid=uid)
    assert lookup_user(name) is None
    assert not group_exists(name)
    assert name not in Path("/etc/shadow").read_text()
    with pytest.raises(KeyError):
        pwd.getpwuid(uid)


def test_lock_refuses_ssh_and_unlock_restores_it(sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str]) -> None:
    key, public = user_keypair
    record = new_user()
    sandbox.install_key(record.name, public)
    assert can_log_in(sshd, record.name, key)
    lock_user(record.name)
    assert shadow_field(record.name) == "!*"
    assert not can_log_in(sshd, record.name, key)
    unlock_user(record.name)
    assert shadow_field(record.name) == "*"
    assert can_log_in(sshd, record.name, key)


def test_delete_removes_user_group_and_home(sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str]) -> None:
    key, public = user_keypair
    record = new_user()
    sandbox.install_key(record.name, public)
    assert delete_user(record.name) == [["/usr/sbin/userdel", "-r", record.name]]
    assert lookup_user(record.name) is None
    assert not group_exists(record.name)
    assert not Path(record.home).exists()
    assert not can_log_in(sshd, record.name, key)
    assert delete_user(record.name) == []  # already gone


def test_delete_of_a_busy_user_raises_user_busy_until_its_processes_end(sandbox: Sandbox) -> None:
    record = new_user()
    sleeper = subprocess.Popen(
        [SETPRIV, "--reuid", str(record.uid), "--regid", str(record.gid), "--clear-groups", "/bin/sleep", "1000"]
    )
    try:
        for _ in range(1000):  # readiness guard (~10 s): setpriv must have switched UID before userdel looks
            if Path(f"/proc/{sleeper.pid}").stat().st_uid == record.uid:
                break
            time.sleep(0.01)
        with pytest.raises(UserBusy):
            delete_user(record.name)
        assert lookup_user(record.name) == record
        terminate_user_sessions(record.uid, name=record.name)
        sleeper.wait()
        delete_user(record.name)
        assert lookup_user(record.name) is None
    finally:
        if sleeper.poll() is None:
            sleeper.kill()
        sleeper.wait()


def test_group_ids_is_getgrouplist_without_the_gil_and_grows_past_its_first_guess(sandbox: Sandbox) -> None:
    """accounts.group_ids calls getgrouplist(3) through ctypes (the GIL released): it must answer what
    os.getgrouplist answers, also for an account in more groups than its first buffer holds (80 against 64)."""
    record = new_user()
    extra = [f"g{record.uid}x{index}" for index in range(80)]
    try:
        for name in extra:
            proc.run([GROUPADD, name], check=True)
        proc.run([USERMOD, "-a", "-G", ",".join(extra), record.name], check=True)

        found = accounts.group_ids(record.name, record.gid)

        assert sorted(found) == sorted(os.getgrouplist(record.name, record.gid))
        assert len(set(found)) == len(extra) + 1
        assert accounts.group_ids("p0-no-such-account", 4242) == [4242]
    finally:
        delete_user(record.name)
        for name in extra:
            proc.run([GROUPDEL, name], check=False)
