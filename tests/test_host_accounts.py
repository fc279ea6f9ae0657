"""host.accounts without changing any account: parsing, refusal rules, UID allocation against this host's real NSS,
and dry runs. Creating, locking and deleting real users happens in the sandbox (test_host_accounts_sandbox.py)."""

from __future__ import annotations

import grp
import os
import pwd
from pathlib import Path

import pytest

from p0_ssh_agent.errors import DataError
from p0_ssh_agent.host.account_changes import (
    planned_create_user,
    planned_delete_user,
    planned_lock_user,
    planned_unlock_user,
)
from p0_ssh_agent.host.accounts import (
    AccountConflict,
    AccountRefused,
    UidRangeExhausted,
    UserMissing,
    UserRecord,
    allocate_uid,
    group_ids,
    lookup_user,
    manage_refusal,
    uid_min,
    user_exists_in_nss,
)

FREE_BASE = 3_500_000  # far above anything this machine's NSS knows


def record(name: str, uid: int) -> UserRecord:
    return UserRecord(name, uid, uid, f"/home/{name}", "/bin/bash")


def test_lookup_user_goes_through_nss() -> None:
    root = lookup_user("root")
    assert root == UserRecord("root", 0, 0, pwd.getpwnam("root").pw_dir, pwd.getpwnam("root").pw_shell)
    assert lookup_user("no-such-user-p0") is None
    assert user_exists_in_nss("root") and not user_exists_in_nss("no-such-user-p0")


def test_uid_min(tmp_path: Path) -> None:
    defs = tmp_path / "login.defs"
    defs.write_text("# UID_MIN 5\nMAIL_DIR /var/mail\nUID_MIN\t\t\t 2000\nUID_MAX 60000\n")
    assert uid_min(str(defs)) == 2000
    defs.write_text("UID_MIN lots\n")
    assert uid_min(str(defs)) == 1000
    assert uid_min(str(tmp_path / "missing")) == 1000
    assert uid_min() == 1000  # Debian's /etc/login.defs


def test_uid_min_reads_an_edited_file_again(tmp_path: Path) -> None:
    """uid_min keeps the value with the file's identity (a stat per call): an edit by rename or in place counts."""
    defs = tmp_path / "login.defs"
    defs.write_text("UID_MIN 2000\n")
    assert uid_min(str(defs)) == 2000
    replacement = tmp_path / "login.defs.new"
    replacement.write_text("UID_MIN 3000\n")
    replacement.replace(defs)  # same size, another inode
    assert uid_min(str(defs)) == 3000
    defs.write_text("UID_MIN 4000\n")  # in place, same size: the mtime moves
    info = defs.stat()
    os.utime(defs, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
    assert uid_min(str(defs)) == 4000
    defs.unlink()
    assert uid_min(str(defs)) == 1000


def test_manage_refusal() -> None:
    assert "root" in (manage_refusal(record("root", 0), min_uid=1000, adopted=["root"]) or "")
    assert "system account" in (manage_refusal(record("backup", 34), min_uid=1000) or "")
    assert manage_refusal(record("backup", 34), min_uid=1000, adopted=["backup"]) is None
    assert "reserved" in (manage_refusal(record("nobody", 65534), min_uid=1000) or "")
    assert "reserved" in (manage_refusal(record("systemd-timesync", 5000), min_uid=1000) or "")
    assert manage_refusal(record("alice", 65536), min_uid=1000) is None
    assert manage_refusal(record("bob", 1500), min_uid=2000) is not None
    assert manage_refusal(record("carol", 70000), min_uid=1000) is None
    assert manage_refusal(record("dave", 0), min_uid=1000) is not None


def test_allocate_uid_starts_after_the_high_water_mark_and_wraps(tmp_path: Path) -> None:
    low, high = FREE_BASE, FREE_BASE + 10
    assert allocate_uid(low, high, high_water=None, home_root=str(tmp_path)) == low
    assert allocate_uid(low, high, high_water=low + 4, home_root=str(tmp_path)) == low + 5
    assert allocate_uid(low, high, high_water=high, home_root=str(tmp_path)) == low  # wrapped
    assert allocate_uid(low, high, high_water=low - 100, home_root=str(tmp_path)) == low


def test_allocate_uid_skips_ids_owning_a_home(tmp_path: Path) -> None:
    low = FREE_BASE + 100
    leftover = tmp_path / "gone-user"
    leftover.mkdir()
    os.chown(leftover, low, low + 1)  # a deleted user's home still owned by its IDs
    assert allocate_uid(low, low + 5, high_water=None, home_root=str(tmp_path)) == low + 2


def test_allocate_uid_checks_uid_and_gid() -> None:
    uids = {e.pw_uid for e in pwd.getpwall()}
    gids = {g.gr_gid for g in grp.getgrall()}
    group_only = min(g for g in gids if g not in uids and g > 0)
    user_only = min((u for u in uids if u not in gids), default=None)
    with pytest.raises(UidRangeExhausted, match=f"no available UID found in range {group_only}-{group_only}"):
        allocate_uid(group_only, group_only, high_water=None)
    if user_only is not None:
        with pytest.raises(UidRangeExhausted):
            allocate_uid(user_only, user_only, high_water=None)
    with pytest.raises(UidRangeExhausted):
        allocate_uid(1, 1, high_water=None)  # daemon
    for low, high in ((10, 5), (0, 0)):
        with pytest.raises(ValueError, match="invalid UID range"):
            allocate_uid(low, high, high_water=None)


def test_create_user_dry_run_plans_the_commands(tmp_path: Path) -> None:
    argvs = planned_create_user("p0newuser", uid=FREE_BASE, home_root=str(tmp_path))
    groupadd, useradd = argvs
    assert groupadd[1:] == ["-g", str(FREE_BASE), "p0newuser"]
    assert useradd[1:] == ["-m", "-u", str(FREE_BASE), "-g", str(FREE_BASE), "-s", "/bin/bash", "-p", "*", "p0newuser"]
    assert groupadd[0].endswith("/groupadd") and useradd[0].endswith("/useradd")
    assert all(Path(argv[0]).is_absolute() for argv in argvs)
    assert not (tmp_path / "p0newuser").exists()


@pytest.mark.parametrize(
    ("name", "uid", "reason"),
    [
        ("root", FREE_BASE, "user root already exists"),
        ("p0newuser", 0, "UID 0 is already in use"),
    ],
)
def test_create_user_refuses_taken_names_and_ids(name: str, uid: int, reason: str, tmp_path: Path) -> None:
    with pytest.raises(AccountConflict, match=reason):
        planned_create_user(name, uid=uid, home_root=str(tmp_path))


def test_create_user_refuses_an_existing_group_name_gid_or_home(tmp_path: Path) -> None:
    group_name = next(g.gr_name for g in grp.getgrall() if not user_exists_in_nss(g.gr_name))
    with pytest.raises(AccountConflict, match=f"a group named {group_name} already exists"):
        planned_create_user(group_name, uid=FREE_BASE, home_root=str(tmp_path))
    uids = {e.pw_uid for e in pwd.getpwall()}
    gid_only = min(g.gr_gid for g in grp.getgrall() if g.gr_gid not in uids)
    with pytest.raises(AccountConflict, match=f"GID {gid_only} is already in use"):
        planned_create_user("p0newuser", uid=gid_only, home_root=str(tmp_path))
    (tmp_path / "p0newuser").mkdir()
    with pytest.raises(AccountConflict, match="already exists; refusing to give a new user the files"):
        planned_create_user("p0newuser", uid=FREE_BASE, home_root=str(tmp_path))
    (tmp_path / "p0other").symlink_to("/etc")
    with pytest.raises(AccountConflict, match="p0other already exists"):
        planned_create_user("p0other", uid=FREE_BASE, home_root=str(tmp_path))


@pytest.mark.parametrize("name", ["", "Alice", "-rf", "a b", "a:b", "x" * 33, "alice\n"])
def test_create_user_refuses_invalid_names(name: str) -> None:
    with pytest.raises(DataError, match="invalid user name"):
        planned_create_user(name, uid=FREE_BASE)


def test_create_user_refuses_a_relative_shell() -> None:
    with pytest.raises(DataError, match="absolute"):
        planned_create_user("p0newuser", uid=FREE_BASE, shell="bash")  # noqa: S604 - a login shell


def test_lock_unlock_delete_refuse_system_accounts_and_missing_users() -> None:
    for action in (planned_lock_user, planned_unlock_user, planned_delete_user):
        with pytest.raises(AccountRefused, match="UID 0 is root"):
            action("root")
        with pytest.raises(AccountRefused, match="system account"):
            action("daemon")
    with pytest.raises(UserMissing):
        planned_lock_user("no-such-user-p0")
    with pytest.raises(UserMissing):
        planned_unlock_user("no-such-user-p0")
    assert planned_delete_user("no-such-user-p0") == []  # already gone: nothing to do
    assert planned_lock_user("daemon", adopted=["daemon"])[0][1:] == ["-L", "-e", "1", "daemon"]
    assert planned_unlock_user("daemon", adopted=["daemon"])[0][1:] == ["-U", "-e", "", "daemon"]
    assert planned_delete_user("daemon", adopted=["daemon"])[0][1:] == ["-r", "daemon"]


@pytest.mark.parametrize("name", ["_p0svc", "mysql", "systemd-p0"])
def test_create_user_refuses_names_no_new_account_may_have(name: str, tmp_path: Path) -> None:
    with pytest.raises(AccountRefused, match=f"{name}"):
        planned_create_user(name, uid=FREE_BASE, home_root=str(tmp_path))


def test_group_ids_answers_what_os_getgrouplist_answers() -> None:
    """The ctypes getgrouplist (host.accounts.group_ids) against the standard library's, on this machine's
    accounts (read only); a name with a NUL is refused as os.getgrouplist refuses it, not cut short by C."""
    for entry in pwd.getpwall()[:50]:
        assert sorted(group_ids(entry.pw_name, entry.pw_gid)) == sorted(os.getgrouplist(entry.pw_name, entry.pw_gid)), (
            entry.pw_name
        )
    with pytest.raises(ValueError, match="null"):
        group_ids("root\x00x", 0)
