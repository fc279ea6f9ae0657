"""The confined worker in namespace mode, as a real account (useradd), inside the namespace sandbox (issue 17 item 4).

Each test gets an account and a fresh tmpfs (mounted without nodev, so a device node in it would really open)
under the sandbox's scratch /run: <base>/app is the prefix, owned by the account; <base>/outside is the account's
too but outside the prefix (what the account could reach if anything were followed); <base>/rootonly is root's.
The namespace is private, so the mounts and the account vanish with the sandbox.
"""

from __future__ import annotations

import base64
import grp
import os
import secrets
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio

from p0_ssh_agent.agent_access.access_model import MAX_STREAM_BYTES, TargetAccount, WorkerJob, WorkerReply
from p0_ssh_agent.agent_access.confine import WorkerLimits, run_worker, worker_argv
from p0_ssh_agent.agent_access.worker_main import encode_job
from p0_ssh_agent.host.sessions import user_processes
from sandbox.fixtures import CHILD_ENV, Sandbox, run, unique_user_name

pytestmark = pytest.mark.sandbox

MOUNT = "/usr/bin/mount"
UMOUNT = "/usr/bin/umount"
RUNUSER = "/usr/sbin/runuser"
SYSTEM_PYTHON = "/usr/bin/python3"  # for processes run as the account: the venv's path may not be its to read


@dataclass(frozen=True)
class Target:
    account: TargetAccount
    base: Path
    prefix: Path
    outside: Path
    rootonly: Path

    async def op(self, op: str, *paths: Path, limits: WorkerLimits | None = None, **fields: Any) -> WorkerReply:
        job = WorkerJob(op=op, prefix=str(self.prefix), paths=tuple(str(path) for path in paths), **fields)
        return await run_worker(job, self.account, mode="namespace", limits=limits or WorkerLimits())

    async def ok(self, op: str, *paths: Path, **fields: Any) -> dict[str, Any]:
        reply = await self.op(op, *paths, **fields)
        assert reply.ok, reply
        return dict(reply.result)

    async def exec(self, *argv: str, seconds: int = 30, limits: WorkerLimits | None = None) -> dict[str, Any]:
        reply = await self.op("ssh_exec", argv=argv, timeout_seconds=seconds, limits=limits)
        assert reply.ok, reply
        result = dict(reply.result)
        for stream in ("stdout", "stderr"):
            result[stream] = base64.b64decode(str(result[stream]))
        return result

    def own(self, path: Path) -> Path:
        os.chown(path, self.account.uid, self.account.gid, follow_symlinks=False)
        return path


@pytest.fixture
def target(sandbox: Sandbox) -> Iterator[Target]:
    name = unique_user_name()
    entry = sandbox.useradd(name)
    groups = tuple(grp.getgrgid(gid).gr_name for gid in os.getgrouplist(name, entry.pw_gid))
    account = TargetAccount(name, entry.pw_uid, entry.pw_gid, entry.pw_dir, entry.pw_shell, groups, False, False)
    base = Path("/run") / f"p0t-access-{secrets.token_hex(4)}"
    base.mkdir(mode=0o755)
    run([MOUNT, "-t", "tmpfs", "-o", "mode=755,size=64m", "p0t-access", base])
    found = Target(account, base, base / "app", base / "outside", base / "rootonly")
    for directory in (found.prefix, found.outside, found.rootonly):
        directory.mkdir(mode=0o755)
    found.own(found.prefix)
    found.own(found.outside)
    (found.outside / "secret.txt").write_text("SECRET\n")
    found.own(found.outside / "secret.txt")
    (found.rootonly / "root.txt").write_text("root's\n")
    yield found
    assert user_processes(entry.pw_uid) == [], "a process of the account outlived the operations"
    run([UMOUNT, "-R", "-l", base])
    base.rmdir()
    sandbox.userdel(name)


def as_account(target: Target, *argv: str) -> subprocess.Popen[bytes]:
    """A process of the account itself (the same account an agent's exec runs as), started by root."""
    uid, gid = target.account.uid, target.account.gid
    return subprocess.Popen(
        argv, user=uid, group=gid, extra_groups=[], env=CHILD_ENV, cwd="/", stdin=subprocess.DEVNULL
    )  # fmt: skip


def owner(path: Path) -> int:
    return path.stat(follow_symlinks=False).st_uid


async def test_every_operation_runs_as_the_account(target: Target) -> None:
    prefix, uid = target.prefix, target.account.uid
    data = base64.b64encode(b"v1\n").decode()
    assert (await target.ok("ssh_file_create", prefix / "a.txt", data_b64=data))["size"] == 3
    assert owner(prefix / "a.txt") == uid
    assert base64.b64decode((await target.ok("ssh_file_read", prefix / "a.txt"))["data"]) == b"v1\n"
    more = base64.b64encode(b"v2\n").decode()
    assert (await target.ok("ssh_file_write", prefix / "a.txt", data_b64=more, append=True))["size"] == 6
    await target.ok("ssh_file_copy", prefix / "a.txt", prefix / "b.txt")
    await target.ok("ssh_file_move", prefix / "b.txt", prefix / "c.txt")
    made = await target.ok("ssh_dir_create", prefix / "d" / "e")
    assert made["created"] == [str(prefix / "d"), str(prefix / "d" / "e")] and owner(prefix / "d" / "e") == uid
    names = [entry["name"] for entry in (await target.ok("ssh_dir_list", prefix))["entries"]]
    assert names == ["a.txt", "c.txt", "d"]
    paths = [entry["path"] for entry in (await target.ok("ssh_dir_tree", prefix, depth=3))["entries"]]
    assert paths == ["a.txt", "c.txt", "d", "d/e"]
    await target.ok("ssh_file_delete", prefix / "c.txt")
    await target.ok("ssh_dir_delete", prefix / "d" / "e")
    (prefix / "d" / "f").mkdir()
    target.own(prefix / "d" / "f")
    assert await target.ok("ssh_dir_delete_recursive", prefix / "d") == {"removedFiles": 0, "removedDirs": 2}
    assert sorted(path.name for path in prefix.iterdir()) == ["a.txt"]
    ran = await target.exec("/bin/sh", "-c", "id -u; id -G; pwd; touch made-by-exec")
    lines = ran["stdout"].decode().split("\n")
    assert lines[0] == str(uid) and lines[2] == str(prefix) and ran["exitCode"] == 0
    assert sorted(map(int, lines[1].split())) == sorted(set(os.getgrouplist(target.account.name, target.account.gid)))
    assert owner(prefix / "made-by-exec") == uid


async def test_file_operations_have_the_accounts_rights_only(target: Target) -> None:
    assert (await target.op("ssh_file_create", target.prefix / "x", data_b64="")).ok  # the prefix is the account's
    (target.prefix / "rootdir").mkdir()  # root's, inside the prefix
    denied = await target.op("ssh_file_create", target.prefix / "rootdir" / "x", data_b64="")
    assert (denied.ok, denied.error_kind) == (False, "failed") and "Permission denied" in denied.message


async def test_a_symlink_swapped_in_by_the_account_never_leads_outside(target: Target) -> None:
    """A process of the account flips <prefix>/d between a real directory and a link to <outside>, and
    <prefix>/leaf between a file and a link to the secret, as fast as it can, while reads, listings and
    deletes run: nothing of <outside> is ever read, listed or removed."""
    flipper_code = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
prefix, outside = sys.argv[1], sys.argv[2]
os.chdir(prefix)
def pair(names, make_real, target):
    # one of the two names is real (a directory or a file), the other a link to `target` outside
    for name in names:
        if not os.path.lexists(name):
            if any(os.path.islink(other) for other in names):
                make_real(name)
            else:
                os.symlink(target, name)
    return next(name for name in names if not os.path.islink(name))
def directory(name):
    os.mkdir(name)
def file(name):
    with open(name, "w") as f:
        f.write("inside\\n")
while True:
    try:
        real = pair(("d", "d-alt"), directory, outside)
        if not os.path.exists(real + "/f"):
            file(real + "/f")
        pair(("leaf", "leaf-alt"), file, outside + "/secret.txt")
        libc.renameat2(-100, b"d", -100, b"d-alt", 2)  # RENAME_EXCHANGE: "d" is always there, dir or link
        libc.renameat2(-100, b"leaf", -100, b"leaf-alt", 2)
    except OSError:
        pass
"""
    (target.outside / "secret-name").write_text("x")
    target.own(target.outside / "secret-name")
    flipper = as_account(target, SYSTEM_PYTHON, "-c", flipper_code, str(target.prefix), str(target.outside))
    outcomes: dict[str, int] = {}
    try:
        prefix = target.prefix
        operations: tuple[tuple[str, Path, dict[str, Any]], ...] = (
            ("ssh_file_read", prefix / "d" / "f", {}),
            ("ssh_file_read", prefix / "leaf", {}),
            ("ssh_dir_list", prefix / "d", {}),
            ("ssh_dir_tree", prefix / "d", {"depth": 2}),
            ("ssh_file_delete", prefix / "d" / "f", {}),
            ("ssh_file_delete", prefix / "d" / "secret.txt", {}),
            ("ssh_dir_delete_recursive", prefix / "d", {}),
        )
        for _round in range(15):
            for op, path, fields in operations:
                reply = await target.op(op, path, **fields)
                text = repr(reply)
                assert "SECRET" not in text and "secret-name" not in text, reply
                key = f"{op}:{'ok' if reply.ok else reply.error_kind}"
                outcomes[key] = outcomes.get(key, 0) + 1
    finally:
        flipper.kill()
        flipper.wait()
    assert (target.outside / "secret.txt").read_text() == "SECRET\n"
    assert sorted(path.name for path in target.outside.iterdir()) == ["secret-name", "secret.txt"]
    # The race was real: some operations met the directory, others the link.
    assert any(key.endswith(":ok") for key in outcomes) and any(not key.endswith(":ok") for key in outcomes), outcomes


async def test_a_device_node_is_refused(target: Target) -> None:
    zero = target.prefix / "zero"
    os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers, on a tmpfs that allows devices
    with zero.open("rb") as opened:  # the node really opens here: refusing it is the worker's doing
        assert opened.read(4) == b"\0\0\0\0"
    operations: tuple[tuple[str, dict[str, Any]], ...] = (
        ("ssh_file_read", {}),
        ("ssh_file_write", {"data_b64": "eA==", "offset": 0}),
        ("ssh_file_delete", {}),
    )
    for op, fields in operations:
        reply = await target.op(op, zero, **fields)
        assert (reply.ok, reply.error_kind) == (False, "refused_file"), (op, reply)
    copied = await target.op("ssh_file_copy", zero, target.prefix / "copy")
    assert copied.error_kind == "refused_file" and not (target.prefix / "copy").exists()
    entries = (await target.ok("ssh_dir_list", target.prefix))["entries"]
    assert [(entry["name"], entry["type"]) for entry in entries] == [("zero", "other")]


async def test_an_output_flood_is_truncated_at_one_mebibyte(target: Target) -> None:
    started = time.monotonic()
    ran = await target.exec("/usr/bin/yes", seconds=60)
    assert len(ran["stdout"]) == MAX_STREAM_BYTES and ran["stdout"][:4] == b"y\ny\n"
    assert ran["truncated"] is True and ran["truncatedStreams"] == ["stdout"] and ran["timedOut"] is False
    assert time.monotonic() - started < 30


async def test_a_fork_bomb_is_bounded_and_ended_by_the_timeout(target: Target) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    limits = WorkerLimits(tasks=24)
    peak = 0
    result: dict[str, Any] = {}

    async def watch() -> None:
        nonlocal peak
        while not result:
            peak = max(peak, len(user_processes(target.account.uid)))
            await trio.sleep(0.02)

    async def bomb_it() -> None:
        result.update(await target.exec(SYSTEM_PYTHON, "-c", bomb, seconds=3, limits=limits))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        nursery.start_soon(bomb_it)
    assert result["timedOut"] is True
    assert 5 < peak <= limits.tasks + 1  # the worker itself is one of the account's tasks
    assert user_processes(target.account.uid) == []


async def test_the_timeout_kills_children_that_called_setsid(target: Target) -> None:
    started = time.monotonic()
    ran = await target.exec("/bin/sh", "-c", "setsid sleep 300 & setsid -f sleep 301; sleep 302", seconds=2)
    took = time.monotonic() - started
    assert ran["timedOut"] is True and ran["signal"] == signal.SIGKILL and 1.9 <= took < 5, (ran, took)
    assert user_processes(target.account.uid) == []


async def test_a_daemonised_process_does_not_outlive_the_operation(target: Target) -> None:
    started = time.monotonic()
    ran = await target.exec("/bin/sh", "-c", "setsid -f sleep 300 </dev/null >/dev/null 2>&1; echo detached")
    assert ran["exitCode"] == 0 and ran["stdout"] == b"detached\n" and time.monotonic() - started < 5
    assert user_processes(target.account.uid) == []


def test_killing_the_root_parent_ends_everything_in_the_namespace(target: Target) -> None:
    """confine's deadline kills the root parent; PR_SET_PDEATHSIG then takes the namespace's init, and with it
    every process in the namespace, down."""
    account = target.account
    argv = worker_argv(account, str(target.prefix), mode="namespace", limits=WorkerLimits(), seconds=100, unit="")
    job = WorkerJob(
        op="ssh_exec", prefix=str(target.prefix), paths=(), argv=("/bin/sh", "-c", "setsid sleep 300 & sleep 301"),
        timeout_seconds=100,
    )  # fmt: skip
    worker = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    assert worker.stdin is not None
    worker.stdin.write(encode_job(job))
    worker.stdin.close()
    try:
        for _ in range(500):  # a readiness guard of ~10 s, not a timing assertion
            if len(user_processes(account.uid)) >= 4:  # the init, sh and two sleeps
                break
            time.sleep(0.02)
        running = user_processes(account.uid)
        assert len(running) >= 4, running
        init, shell = running[0], running[1]
        # Non-dumpable: the account's other processes cannot read the worker's environ (nor its memory), though
        # the worker runs as the account; they can read the command's, which exec made dumpable again.
        cat_environ = [RUNUSER, "-u", account.name, "--", "/bin/cat"]
        assert run([*cat_environ, f"/proc/{init}/environ"], check=False).returncode != 0
        assert run([*cat_environ, f"/proc/{shell}/environ"], check=False).returncode == 0
        status_text = Path(f"/proc/{running[-1]}/status").read_text()
        status = dict(line.split(":\t", 1) for line in status_text.splitlines() if ":\t" in line)
        assert status["NoNewPrivs"] == "1" and status["Uid"].split()[0] == str(account.uid)
        limits = Path(f"/proc/{running[-1]}/limits").read_text()
        assert "Max core file size        0" in limits and "Max open files            256" in limits
    finally:
        worker.kill()  # SIGKILL to the root parent, as confine's deadline does
        worker.wait()
    for _ in range(500):
        if not user_processes(account.uid):
            break
        time.sleep(0.02)
    assert user_processes(account.uid) == []


async def test_no_new_privileges_even_with_a_nopasswd_sudo_grant(target: Target) -> None:
    name = target.account.name
    drop_in = Path("/etc/sudoers.d") / f"p0t-{name}"
    drop_in.write_text(f"{name} ALL=(ALL:ALL) NOPASSWD: ALL\n")
    drop_in.chmod(0o440)
    # The grant works for the account outside the worker, so the refusal below is the worker's doing.
    outside = run([RUNUSER, "-u", name, "--", "/usr/bin/sudo", "-n", "/usr/bin/id", "-u"], check=False)
    assert outside.stdout == "0\n", outside
    ran = await target.exec("/usr/bin/sudo", "-n", "/usr/bin/id", "-u")
    assert ran["exitCode"] != 0 and ran["stdout"] != b"0\n"
    assert b"no new privileges" in ran["stderr"].lower() or b"effective uid is not 0" in ran["stderr"]


async def test_exec_writes_only_where_the_account_can(target: Target) -> None:
    """Namespace mode confines exec to the account's own rights, not to the prefix (confine.py's docstring): a
    root-owned directory stays unwritable, but a directory of the account outside the prefix is writable. Only
    systemd mode (ProtectSystem=strict with ReadWritePaths=<prefix>) confines exec to the prefix."""
    ran = await target.exec("/bin/sh", "-c", f"touch {target.rootonly}/x; echo $?")
    assert ran["stdout"] == b"1\n" and not (target.rootonly / "x").exists()
    ran = await target.exec("/bin/sh", "-c", f"echo planted > {target.outside}/planted")
    assert ran["exitCode"] == 0 and (target.outside / "planted").read_text() == "planted\n"  # NOT confined here


@pytest.mark.parametrize("kind", ["tmpfs", "bind"])
async def test_a_mount_point_inside_is_never_crossed(target: Target, kind: str) -> None:
    """tmpfs: a different st_dev. bind: the same filesystem (the same st_dev), told apart by statx's mount id."""
    tree = target.prefix / "tree"
    mount_point = tree / "mnt"
    mount_point.mkdir(parents=True)
    (tree / "keep.txt").write_text("keep\n")
    for path in (tree, mount_point, tree / "keep.txt"):
        target.own(path)
    if kind == "tmpfs":
        run([MOUNT, "-t", "tmpfs", "-o", "mode=777", "p0t-inner", mount_point])
        (mount_point / "in-mount.txt").write_text("mounted\n")
    else:
        run([MOUNT, "--bind", target.outside, mount_point])
    walked = await target.ok("ssh_dir_tree", target.prefix, depth=5)
    by_path = {entry["path"]: entry for entry in walked["entries"]}
    assert by_path["tree/mnt"].get("mountPoint") is True
    assert not [path for path in by_path if path.startswith("tree/mnt/")]
    refused = await target.op("ssh_dir_delete_recursive", tree)
    assert (refused.ok, refused.error_kind) == (False, "refused_file") and "nothing was removed" in refused.message
    assert (tree / "keep.txt").read_text() == "keep\n"  # refused before anything was removed
    assert (target.outside / "secret.txt").read_text() == "SECRET\n"
    run([UMOUNT, mount_point])


def test_the_worker_never_runs_a_job_as_root(sandbox: Sandbox, tmp_path: Path) -> None:
    job = encode_job(WorkerJob(op="ssh_dir_list", prefix=str(tmp_path), paths=(str(tmp_path),)))
    module = [sys.executable, "-I", "-m", "p0_ssh_agent.agent_access.worker_main"]
    for extra in ([], ["--drop-to", "0:0", "--pid-namespace"]):
        done = subprocess.run([*module, *extra], input=job, capture_output=True, timeout=30, check=False)
        assert done.returncode != 0 and done.stdout == b"" and b"refusing" in done.stderr, done
