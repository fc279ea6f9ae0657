"""Issue 17's "Prove it" through the running daemon, in the namespace sandbox: each command allowed and denied by
each starter policy, and the hostile battery with nothing outside the prefix read or changed.

Part 1 loads each starter policy ALONE (one daemon per starter, its host kept, its account and path replaced by
the test's) and sends each of the twelve commands once in an allowed shape and once in a denied shape. What is
expected comes from STARTER_TABLE below (what each starter permits, what it makes need a cosigner, what it
forbids), never from the policy engine; each answer's status and result.kind are checked, and the file tree
changed exactly as the command says (or not at all).

Part 2 is one daemon (ssh:host-subdir-full with ssh:exec-step-up) over a tmpfs mounted with strictatime and
without nodev: each test gets its own prefix beneath the policy's directory, and beside them lies a sentinel
directory of the same account (what a followed link would reach, with the account's own rights). Every test
ends by comparing the sentinel with its first state: listing, content, mode, size, mtime and atime (read with
O_NOATIME, so only a read by someone else moves it; strictatime makes every read move it), and by checking that
no process of the account is left. The gate's refusals (forged and expired UCANs, wrong audience, a constraint
for another host, a cosigner flag, a cosignature for another command) are test_access_e2e_sandbox.py's.
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import stat
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from access_support import (
    STARTER_NAMES,
    STARTERS,
    access_config,
    access_files,
    b64,
    body,
    call,
    cosigned,
    entries,
    refused,
    result_of,
    starter_text,
    ucan_for,
)
from p0_ssh_agent.agent_access.access_model import (
    MAX_NAME_BYTES,
    MAX_PATH_BYTES,
    MAX_STREAM_BYTES,
    MAX_WRITE_BYTES,
    AccessCommand,
)
from p0_ssh_agent.host.sessions import user_processes
from provisioning_support import Daemon, changed, make_keys, running_daemon, tree_digest
from sandbox.fixtures import Sandbox, run, unique_user_name

pytestmark = pytest.mark.sandbox

C = AccessCommand
DELETES = frozenset({C.FILE_DELETE, C.DIR_DELETE, C.DIR_DELETE_RECURSIVE})
NO_PERMIT = "default-deny"
SYSTEM_PYTHON = "/usr/bin/python3"  # for commands run as the account: the venv's may not be its to read
MOUNT, UMOUNT = "/usr/bin/mount", "/usr/bin/umount"


# --- part 1: each command, allowed and denied, by each starter policy -----------------------------------------


@dataclass(frozen=True)
class Starter:
    """What one starter policy does, as its comments say: the account and path it pins (replaced by the test's),
    what it permits (with a cosignature for those in step_up), what it refuses without a cosigner (the forbid's
    @id) and what it forbids even with one."""

    name: str
    account: str
    path: str
    permits: frozenset[AccessCommand]
    step_up: Mapping[AccessCommand, str] = field(default_factory=dict)
    forbids: Mapping[AccessCommand, str] = field(default_factory=dict)


STARTER_TABLE = (
    Starter("ssh-host-pinned-read", "log-reader", "/var/log/myapp", frozenset({C.FILE_READ, C.DIR_LIST, C.DIR_TREE})),
    Starter(
        "ssh-sftp-upload",
        "deploy",
        "/var/www/app",
        frozenset({C.FILE_WRITE, C.FILE_CREATE, C.DIR_CREATE, C.DIR_LIST}),
        forbids={C.EXEC: "ssh:sftp-upload:no-exec"},
    ),
    Starter("ssh-host-subdir-full", "recovery", "/srv/app", frozenset(C) - {C.EXEC}),
    Starter("ssh-exec-step-up", "recovery", "", frozenset({C.EXEC}), step_up={C.EXEC: "ssh:exec-step-up:cosigner"}),
    Starter("ssh-delete-step-up", "", "", frozenset(), step_up=dict.fromkeys(DELETES, "ssh:delete-step-up")),
)
assert tuple(starter.name for starter in STARTER_TABLE) == STARTER_NAMES
assert sorted(path.stem for path in STARTERS.glob("*.cedar")) == sorted(STARTER_NAMES)  # all of them, each once


@dataclass(frozen=True)
class Shape:
    """One command's request in a directory, the entries (relative to it) that running it changes, and what its
    answer and the directory then hold."""

    members: Callable[[Path], dict[str, object]]
    changes: frozenset[str]
    check: Callable[[Path, dict[str, Any]], bool]


def _decoded(result: dict[str, Any], name: str) -> bytes:
    return base64.b64decode(str(result[name]))


SHAPES: dict[AccessCommand, Shape] = {
    C.FILE_READ: Shape(
        lambda d: {"path": f"{d}/read.txt"}, frozenset(), lambda d, r: _decoded(r, "data") == b"read me\n"
    ),
    C.FILE_WRITE: Shape(
        lambda d: {"path": f"{d}/write.txt", "data": b64(b"AB"), "offset": 0},
        frozenset({"write.txt"}),
        lambda d, r: r["written"] == 2 and (d / "write.txt").read_bytes() == b"AB23456789",
    ),
    C.FILE_CREATE: Shape(
        lambda d: {"path": f"{d}/new.txt", "data": b64(b"new\n")},
        frozenset({"new.txt"}),
        lambda d, r: (d / "new.txt").read_bytes() == b"new\n",
    ),
    C.FILE_DELETE: Shape(
        lambda d: {"path": f"{d}/delete.txt"}, frozenset({"delete.txt"}), lambda d, r: not (d / "delete.txt").exists()
    ),
    C.FILE_MOVE: Shape(
        lambda d: {"source": f"{d}/move.txt", "destination": f"{d}/moved.txt"},
        frozenset({"move.txt", "moved.txt"}),
        lambda d, r: (d / "moved.txt").read_bytes() == b"move me\n" and not (d / "move.txt").exists(),
    ),
    C.FILE_COPY: Shape(
        lambda d: {"source": f"{d}/copy.txt", "destination": f"{d}/copied.txt"},
        frozenset({"copied.txt"}),
        lambda d, r: (d / "copied.txt").read_bytes() == (d / "copy.txt").read_bytes() == b"copy me\n",
    ),
    C.DIR_LIST: Shape(
        lambda d: {"path": f"{d}/list"}, frozenset(), lambda d, r: [e["name"] for e in entries(r)] == ["a.txt"]
    ),
    C.DIR_TREE: Shape(
        lambda d: {"path": f"{d}/tree", "depth": 2},
        frozenset(),
        lambda d, r: [e["path"] for e in entries(r)] == ["sub", "sub/b.txt"],
    ),
    C.DIR_CREATE: Shape(lambda d: {"path": f"{d}/newdir"}, frozenset({"newdir"}), lambda d, r: (d / "newdir").is_dir()),
    C.DIR_DELETE: Shape(
        lambda d: {"path": f"{d}/rmdir"}, frozenset({"rmdir"}), lambda d, r: not (d / "rmdir").exists()
    ),
    C.DIR_DELETE_RECURSIVE: Shape(
        lambda d: {"path": f"{d}/rmtree"},
        frozenset({"rmtree", "rmtree/x", "rmtree/x/y.txt"}),
        lambda d, r: not (d / "rmtree").exists(),
    ),
    C.EXEC: Shape(
        lambda d: {"argv": ["/usr/bin/touch", f"{d}/ran"], "cwd": str(d)},
        frozenset({"ran"}),
        lambda d, r: r["exitCode"] == 0 and (d / "ran").stat().st_uid == d.stat().st_uid,
    ),
}
FIXTURE_FILES = {
    "read.txt": b"read me\n",
    "write.txt": b"0123456789",
    "delete.txt": b"delete me\n",
    "move.txt": b"move me\n",
    "copy.txt": b"copy me\n",
    "list/a.txt": b"a\n",
    "tree/sub/b.txt": b"b\n",
    "rmtree/x/y.txt": b"y\n",
}


def own_tree(root: Path, files: Mapping[str, bytes], directories: tuple[str, ...], uid: int, gid: int) -> None:
    """Files and directories beneath root (made here, root included), all the account's, as it would make them."""
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    for name in directories:
        (root / name).mkdir(mode=0o755, parents=True)
    for name, content in files.items():
        (root / name).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
        (root / name).write_bytes(content)
    for path in (root, *root.rglob("*")):
        os.chown(path, uid, gid)
        path.chmod(0o755 if path.is_dir() else 0o644)


@dataclass(frozen=True)
class Expect:
    status: int
    kind: str = ""
    policy: str = ""


def expected(starter: Starter, command: AccessCommand, shape: str) -> Expect:
    """The table's answer to the allowed shape (cosigned where the starter steps up, and exec always) or the
    denied one (without the cosignature; for a permitted command, beside the starter's pinned path)."""
    if shape == "allowed":
        if command in starter.forbids:
            return Expect(403, "denied_by_policy", starter.forbids[command])
        return Expect(200) if command in starter.permits else Expect(403, "denied_by_policy", NO_PERMIT)
    if command is C.EXEC:  # the gate: exec without a cosignature never reaches the policy
        return Expect(403, "step_up_required")
    policy = starter.step_up.get(command) or starter.forbids.get(command) or NO_PERMIT
    return Expect(403, "denied_by_policy", policy)


def request(
    starter: Starter, command: AccessCommand, shape: str, *, user: str, token: str, base: Path
) -> dict[str, Any]:
    cosign = command is C.EXEC or command in starter.step_up
    where = base / "app"
    if shape == "denied":
        cosign = False
        if command in starter.permits and command not in starter.step_up and command is not C.EXEC:
            where = base / "side"  # inside the UCAN's prefix, outside the path the starter pins
    sent = body(command.value, user, token, **SHAPES[command].members(where))
    return cosigned(sent) if cosign else sent


@pytest.mark.parametrize("starter", STARTER_TABLE, ids=lambda starter: starter.name)
def test_each_command_allowed_and_denied_by_each_starter_alone(
    starter: Starter, sandbox: Sandbox, tmp_path: Path
) -> None:
    user = unique_user_name()
    entry = sandbox.useradd(user)
    top = Path("/var/lib") / f"p0-battery-{secrets.token_hex(4)}"  # the sandbox's overlay
    base = top / starter.name  # the UCAN's prefix: the starter's pinned path ("app") and a sibling ("side")
    top.mkdir(mode=0o755)
    try:
        for where in ("app", "side"):
            own_tree(base / where, FIXTURE_FILES, ("rmdir",), entry.pw_uid, entry.pw_gid)
        os.chown(base, entry.pw_uid, entry.pw_gid)
        replacements = [(f'"{starter.account}"', f'"{user}"')] if starter.account else []
        replacements += [(starter.path, str(base / "app"))] if starter.path else []
        policy, trust = access_files(tmp_path, starter_text([starter.name], replacements))
        token = ucan_for(user, base)
        extra = access_config([user], policy, trust, tmp_path / "audit.jsonl")
        seen: list[tuple[str, str, int]] = []
        with running_daemon(tmp_path, make_keys(tmp_path), extra=extra) as daemon:
            for command in C:
                for shape in ("denied", "allowed"):
                    want = expected(starter, command, shape)
                    before = tree_digest(base)
                    got, answer = daemon.post(request(starter, command, shape, user=user, token=token, base=base))
                    result = result_of(answer)
                    where = f"{starter.name} {command.value} {shape}"
                    assert (got, result.get("kind", "")) == (want.status, want.kind), (where, answer)
                    moved = changed(before, tree_digest(base))
                    if want.status != 200:
                        assert answer["success"] is False and moved == [], (where, answer, moved)
                        assert result.get("policy", "") == want.policy, (where, answer)
                        if want.policy:
                            assert f"denied by policy {want.policy} (" in str(answer["error"]), (where, answer)
                    else:
                        shape_of = SHAPES[command]
                        assert moved == sorted(f"{base}/app/{name}" for name in shape_of.changes), (where, moved)
                        assert shape_of.check(base / "app", result), (where, answer)
                    seen.append((command.value, shape, got))
        assert len(seen) == 24 and {status for _, _, status in seen} >= {403}
    finally:
        shutil.rmtree(top, ignore_errors=True)
        sandbox.userdel(user)


# --- part 2: the hostile battery -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Battery:
    """One daemon for the battery; its account, the tmpfs, the policy's directory and the sentinel beside it."""

    daemon: Daemon
    user: str
    uid: int
    gid: int
    apps: Path  # the policy's directory (ssh:host-subdir-full); each test's prefix is beneath it
    sentinel: Path
    marker: bytes  # the sentinel's content: never in an answer
    first: dict[str, tuple[object, ...]]  # the sentinel as it was made


@dataclass(frozen=True)
class Case:
    """One test's prefix and a UCAN for exactly it."""

    battery: Battery
    prefix: Path
    token: str

    @property
    def daemon(self) -> Daemon:
        return self.battery.daemon

    def send(self, command: AccessCommand, **members: object) -> dict[str, object]:
        return body(command.value, self.battery.user, self.token, **members)

    def run(self, *argv: str, seconds: int = 30) -> dict[str, Any]:
        """ssh_exec with a cosignature, through the daemon: its result, streams decoded."""
        ran = result_of(call(self.daemon, cosigned(self.send(C.EXEC, argv=list(argv), timeoutSeconds=seconds))))
        return {**ran, "stdout": _decoded(ran, "stdout"), "stderr": _decoded(ran, "stderr")}


def sentinel_state(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry beneath root: type, mode, owner, size, mtime, atime, and a directory's listing or a file's
    digest, opened with O_NOATIME (root may on any file) so that looking does not move an atime; the walk goes by
    those listings (a plain readdir would move the directories' atimes)."""
    state: dict[str, tuple[object, ...]] = {}
    pending = [Path()]
    while pending:
        relative = pending.pop()
        path = root / relative
        info = path.lstat()
        item: tuple[object, ...] = (stat.S_IFMT(info.st_mode), stat.S_IMODE(info.st_mode), info.st_uid)
        item += (info.st_size, info.st_mtime_ns, info.st_atime_ns)
        if stat.S_ISDIR(info.st_mode) or stat.S_ISREG(info.st_mode):
            fd = os.open(path, os.O_RDONLY | os.O_NOATIME | os.O_CLOEXEC | os.O_NOFOLLOW)
            try:
                if stat.S_ISDIR(info.st_mode):
                    names = tuple(sorted(os.listdir(fd)))  # noqa: PTH208 (a descriptor: Path cannot list one)
                    item += (names,)
                    pending += [relative / name for name in names]
                else:
                    item += (hashlib.sha256(os.read(fd, 1 << 20)).hexdigest(),)
            finally:
                os.close(fd)
        state[str(relative)] = item
    return state


def set_old_atimes(root: Path) -> None:
    """Every atime beneath root long before now (mtimes kept), deepest first, without reading a directory."""
    old = time.time_ns() - 10**12
    for relative in sorted(sentinel_state(root), key=len, reverse=True):
        info = (root / relative).lstat()
        os.utime(root / relative, ns=(old, info.st_mtime_ns), follow_symlinks=False)


@pytest.fixture(scope="module")
def battery(sandbox_session: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Battery]:
    user = unique_user_name()
    entry = sandbox_session.useradd(user)
    uid, gid = entry.pw_uid, entry.pw_gid
    base = Path("/run") / f"p0t-battery-{secrets.token_hex(4)}"
    base.mkdir(mode=0o755)
    # Without nodev (a device node in a prefix really opens), strictatime (any read of the sentinel shows).
    run([MOUNT, "-t", "tmpfs", "-o", "mode=755,size=64m,strictatime", "p0t-battery", base])
    try:
        marker = f"SENTINEL-{secrets.token_hex(8)}\n".encode()
        sentinel, apps = base / "sentinel", base / "apps"
        files = {"sentinel-secret.txt": marker, "sentinel-notes/inner.txt": marker, "linked.txt": marker}
        own_tree(sentinel, {**files, "canary.txt": b"canary\n"}, (), uid, gid)
        own_tree(apps, {}, (), uid, gid)
        set_old_atimes(sentinel)
        # The instrument works: sentinel_state's own look moves nothing, a plain read or listing moves the atime.
        looked = sentinel_state(sentinel)
        assert sentinel_state(sentinel) == looked
        (sentinel / "canary.txt").read_bytes()
        list((sentinel / "sentinel-notes").iterdir())
        moved = {name for name, item in sentinel_state(sentinel).items() if item != looked[name]}
        assert moved == {"canary.txt", "sentinel-notes"}, moved
        first = sentinel_state(sentinel)
        directory = tmp_path_factory.mktemp("battery")
        text = starter_text(
            ["ssh-host-subdir-full", "ssh-exec-step-up"],
            [('"recovery"', f'"{user}"'), ("/srv/app", str(apps))],
        )
        policy, trust = access_files(directory, text)
        extra = access_config([user], policy, trust, directory / "audit.jsonl")
        with running_daemon(directory, make_keys(directory), extra=extra) as daemon:
            yield Battery(daemon, user, uid, gid, apps, sentinel, marker, first)
    finally:
        run([UMOUNT, "-R", "-l", base])
        base.rmdir()
        sandbox_session.userdel(user)


@pytest.fixture
def case(battery: Battery, request: pytest.FixtureRequest) -> Iterator[Case]:
    prefix = battery.apps / request.node.name.removeprefix("test_")[:60]
    own_tree(prefix, {}, (), battery.uid, battery.gid)
    yield Case(battery, prefix, ucan_for(battery.user, prefix))
    assert sentinel_state(battery.sentinel) == battery.first, "the sentinel was read or changed"
    assert user_processes(battery.uid) == [], "a process of the account outlived its operation"


def as_account(case: Case, path: Path) -> Path:
    os.chown(path, case.battery.uid, case.battery.gid, follow_symlinks=False)
    return path


def assert_no_sentinel(case: Case, answer: dict[str, object]) -> None:
    """Nothing of the sentinel in an answer: its content (decoded, where the answer carries data), and names that
    only a listing of it could show (no request names them)."""
    text = repr(answer)
    result = answer.get("result")
    data = _decoded(result, "data") if isinstance(result, dict) and "data" in result else b""
    assert case.battery.marker.strip().decode() not in text and case.battery.marker not in data, answer
    assert "inner.txt" not in text and "canary" not in text and "linked.txt" not in text, answer


def test_traversal_absolute_paths_nul_and_overlong_names_are_refused_before_anything_runs(case: Case) -> None:
    prefix, sentinel = case.prefix, case.battery.sentinel
    own_tree(prefix, {"keep.txt": b"keep\n"}, ("dir",), case.battery.uid, case.battery.gid)
    before = tree_digest(prefix)
    bad_paths: tuple[tuple[str, int, str, str], ...] = (
        (f"{prefix}/../../sentinel/sentinel-secret.txt", 400, "invalid_request", "'..' components"),
        (f"{prefix}/dir/../keep.txt", 400, "invalid_request", "'..' components"),
        (f"{sentinel}/sentinel-secret.txt", 403, "outside_capability", "is not under"),
        (f"{prefix}2/keep.txt", 403, "outside_capability", "is not under"),
        (f"{prefix}/keep.txt\x00/../../../sentinel/sentinel-secret.txt", 400, "invalid_request", "NUL"),
        (f"{prefix}/{'a' * (MAX_NAME_BYTES + 1)}", 400, "invalid_request", f"longer than {MAX_NAME_BYTES}"),
        (f"{prefix}/{'é' * 128}", 400, "invalid_request", f"longer than {MAX_NAME_BYTES}"),  # 256 bytes of UTF-8
        (f"{prefix}/" + "/".join(["b" * 200] * 21), 400, "invalid_request", f"longer than {MAX_PATH_BYTES}"),
    )
    inside = f"{prefix}/keep.txt"
    templates: tuple[tuple[AccessCommand, Callable[[str], dict[str, object]]], ...] = (
        (C.FILE_READ, lambda p: {"path": p}),
        (C.FILE_WRITE, lambda p: {"path": p, "data": b64(b"x"), "offset": 0}),
        (C.FILE_CREATE, lambda p: {"path": p, "data": b64(b"x"), "overwrite": True}),
        (C.FILE_DELETE, lambda p: {"path": p}),
        (C.FILE_MOVE, lambda p: {"source": inside, "destination": p}),
        (C.FILE_COPY, lambda p: {"source": p, "destination": f"{prefix}/stolen"}),
        (C.DIR_LIST, lambda p: {"path": p}),
        (C.DIR_TREE, lambda p: {"path": p, "depth": 3}),
        (C.DIR_CREATE, lambda p: {"path": p}),
        (C.DIR_DELETE_RECURSIVE, lambda p: {"path": p}),
        (C.EXEC, lambda p: {"argv": ["/usr/bin/touch", "ran"], "cwd": p}),
    )
    for path, status, kind, words in bad_paths:
        for command, members in templates:
            error = refused(case.daemon, case.send(command, **members(path)), status, kind, words)
            assert_no_sentinel(case, {"error": error})
    refused(case.daemon, case.send(C.EXEC, argv=["/usr/bin/touch", "a\x00b"]), 400, "invalid_request", "NUL")
    assert changed(before, tree_digest(prefix)) == []
    longest = f"{prefix}/{'c' * MAX_NAME_BYTES}"  # the limit itself is a name like any other
    assert call(case.daemon, case.send(C.FILE_CREATE, path=longest, data=b64(b"ok\n")))["success"] is True
    assert Path(longest).read_bytes() == b"ok\n"


def test_links_left_in_the_prefix_are_never_followed(case: Case) -> None:
    sentinel, prefix = case.battery.sentinel, case.prefix
    (prefix / "to-file").symlink_to(sentinel / "sentinel-secret.txt")
    (prefix / "to-dir").symlink_to(sentinel)
    as_account(case, prefix / "to-file")
    as_account(case, prefix / "to-dir")
    for command, members in (
        (C.FILE_READ, {"path": f"{prefix}/to-file"}),
        (C.FILE_READ, {"path": f"{prefix}/to-dir/sentinel-secret.txt"}),
        (C.FILE_WRITE, {"path": f"{prefix}/to-file", "data": b64(b"x"), "offset": 0}),
        (C.FILE_COPY, {"source": f"{prefix}/to-file", "destination": f"{prefix}/copied"}),
        (C.DIR_LIST, {"path": f"{prefix}/to-dir"}),
        (C.DIR_TREE, {"path": f"{prefix}/to-dir", "depth": 2}),
        (C.FILE_CREATE, {"path": f"{prefix}/to-dir/planted", "data": b64(b"x")}),
        (C.FILE_DELETE, {"path": f"{prefix}/to-dir/sentinel-secret.txt"}),
        (C.DIR_DELETE_RECURSIVE, {"path": f"{prefix}/to-dir/sentinel-notes"}),
    ):
        error = refused(case.daemon, case.send(command, **members), 403, "refused_file", "link")
        assert_no_sentinel(case, {"error": error})
    listed = entries(result_of(call(case.daemon, case.send(C.DIR_LIST, path=str(prefix)))))
    assert [(e["name"], e["type"], e["target"]) for e in listed] == [
        ("to-dir", "symlink", str(sentinel)),
        ("to-file", "symlink", f"{sentinel}/sentinel-secret.txt"),
    ]
    # A delete removes the link itself; a recursive delete of a directory holding one removes it as a name.
    call(case.daemon, case.send(C.FILE_DELETE, path=f"{prefix}/to-file"))
    (prefix / "tree").mkdir()
    (prefix / "to-dir").rename(prefix / "tree" / "to-dir")
    as_account(case, prefix / "tree")
    removed = result_of(call(case.daemon, case.send(C.DIR_DELETE_RECURSIVE, path=f"{prefix}/tree")))
    assert removed == {"removedFiles": 1, "removedDirs": 1} and not any(prefix.iterdir())


FLIPPER = """
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
prefix, sentinel = sys.argv[1], sys.argv[2]
os.chdir(prefix)
def pair(names, make_real, target):
    # one of the two names is real (a directory or a file), the other a link to `target`, outside
    for name in names:
        if not os.path.lexists(name):
            if any(os.path.islink(other) for other in names):
                make_real(name)
            else:
                os.symlink(target, name)
def directory(name):
    os.mkdir(name)
    with open(name + "/f", "w") as f:
        f.write("inside\\n")
def file(name):
    with open(name, "w") as f:
        f.write("inside\\n")
if os.fork() == 0:
    os.setsid()  # a session of its own: only the end of the exec's confinement stops it
    os.nice(10)  # it spins: the agent's calls keep their share of a small machine's CPUs
    rounds = 0
    while True:
        try:
            pair(("d", "d-alt"), directory, sentinel)
            pair(("leaf", "leaf-alt"), file, sentinel + "/sentinel-secret.txt")
            libc.renameat2(-100, b"d", -100, b"d-alt", 2)  # RENAME_EXCHANGE: "d" is always there, dir or link
            libc.renameat2(-100, b"leaf", -100, b"leaf-alt", 2)
            rounds += 1
            if rounds == 100:
                open("flipping", "w").close()
        except OSError:
            pass
while not os.path.exists("stop"):
    time.sleep(0.02)
"""


def test_a_symlink_swapped_in_during_operations_by_the_accounts_own_exec_never_leads_out(case: Case) -> None:
    """An ssh_exec of the account (cosigned) starts a loop, in a session of its own, that flips <prefix>/d between
    a directory and a link to the sentinel (and <prefix>/leaf between a file and a link to its secret) while
    reads, listings, writes, copies, moves and deletes go through them. The exec's command exits when the test
    says stop; the loop it left behind dies with the exec's confinement."""
    prefix, battery = case.prefix, case.battery
    argv = [SYSTEM_PYTHON, "-c", FLIPPER, str(prefix), str(battery.sentinel)]
    flipper = cosigned(case.send(C.EXEC, argv=argv, timeoutSeconds=90))
    answers: list[dict[str, object]] = []
    runner = threading.Thread(target=lambda: answers.append(call(case.daemon, flipper)), daemon=True)
    runner.start()
    outcomes: dict[str, int] = {}
    try:
        deadline = time.monotonic() + 30
        while not (prefix / "flipping").exists():  # a readiness guard, not a timing assertion
            assert runner.is_alive() and time.monotonic() < deadline, answers
            time.sleep(0.02)
        operations: tuple[tuple[AccessCommand, dict[str, object]], ...] = (
            (C.FILE_READ, {"path": f"{prefix}/d/f"}),
            (C.FILE_READ, {"path": f"{prefix}/d/sentinel-secret.txt"}),
            (C.FILE_READ, {"path": f"{prefix}/leaf"}),
            (C.DIR_LIST, {"path": f"{prefix}/d"}),
            (C.DIR_TREE, {"path": f"{prefix}/d", "depth": 2}),
            (C.FILE_WRITE, {"path": f"{prefix}/d/sentinel-secret.txt", "data": b64(b"overwritten"), "offset": 0}),
            (C.FILE_CREATE, {"path": f"{prefix}/d/planted", "data": b64(b"planted")}),
            (C.FILE_COPY, {"source": f"{prefix}/leaf", "destination": f"{prefix}/copied", "overwrite": True}),
            (C.FILE_MOVE, {"source": f"{prefix}/d/sentinel-secret.txt", "destination": f"{prefix}/stolen"}),
            (C.FILE_DELETE, {"path": f"{prefix}/d/f"}),
            (C.FILE_DELETE, {"path": f"{prefix}/d/sentinel-secret.txt"}),
            (C.DIR_DELETE_RECURSIVE, {"path": f"{prefix}/d/sentinel-notes"}),
            (C.DIR_DELETE_RECURSIVE, {"path": f"{prefix}/d"}),
        )
        met = ("ssh_file_read:ok", "ssh_file_read:refused_file", "ssh_dir_list:ok", "ssh_dir_list:refused_file")
        for round_number in range(20):  # at least 4 rounds, and until the race showed both sides
            if round_number >= 4 and all(outcomes.get(name) for name in met):
                break
            for command, members in operations:
                status, answer = case.daemon.post(case.send(command, **members))
                assert_no_sentinel(case, answer)
                kind = result_of(answer).get("kind", "ok")
                assert status in (200, 403, 404, 409), answer
                outcomes[f"{command.value}:{kind}"] = outcomes.get(f"{command.value}:{kind}", 0) + 1
        assert len(user_processes(battery.uid)) >= 3, "the loop ended early"  # the init, the command, the loop
    finally:
        (prefix / "stop").touch()
        runner.join(timeout=120)
    [ran] = answers
    assert result_of(ran)["exitCode"] == 0 and result_of(ran)["timedOut"] is False, ran
    assert user_processes(battery.uid) == []  # the loop, in its own session, died with the exec
    for name in ("copied", "stolen"):
        assert not (prefix / name).exists() or battery.marker not in (prefix / name).read_bytes()
    assert sentinel_state(battery.sentinel) == battery.first
    # The race was real: reads and listings met the directory (and the file) and the link.
    assert all(outcomes.get(name) for name in met), outcomes


def test_a_hard_link_the_account_made_to_a_file_outside_is_refused(case: Case) -> None:
    prefix, linked = case.prefix, case.battery.sentinel / "linked.txt"
    made = case.run("/usr/bin/ln", str(linked), f"{prefix}/hl")  # the account's own exec, as the account
    assert made["exitCode"] == 0 and (prefix / "hl").stat().st_ino == linked.stat().st_ino, made
    before = sentinel_state(prefix)  # with O_NOATIME: hl is the sentinel's file, and reading it would show
    for command, members in (
        (C.FILE_READ, {"path": f"{prefix}/hl"}),
        (C.FILE_WRITE, {"path": f"{prefix}/hl", "data": b64(b"x"), "offset": 0}),
        (C.FILE_WRITE, {"path": f"{prefix}/hl", "data": b64(b"x"), "append": True}),
        (C.FILE_CREATE, {"path": f"{prefix}/hl", "data": b64(b"x"), "overwrite": True}),
        (C.FILE_COPY, {"source": f"{prefix}/hl", "destination": f"{prefix}/copied"}),
        (C.FILE_MOVE, {"source": f"{prefix}/hl", "destination": f"{prefix}/moved"}),
        (C.FILE_DELETE, {"path": f"{prefix}/hl"}),
    ):
        error = refused(case.daemon, case.send(command, **members), 403, "refused_file", "more than one hard link")
        assert_no_sentinel(case, {"error": error})
    assert sentinel_state(prefix) == before and linked.stat().st_nlink == 2
    (prefix / "hl").unlink()  # the sentinel's link count as it was (sentinel_state leaves it out: ctime, nlink)


def test_a_fifo_is_refused_at_once_and_never_blocks(case: Case) -> None:
    fifo = case.prefix / "fifo"
    os.mkfifo(fifo, 0o666)
    as_account(case, fifo)
    for command, members in (
        (C.FILE_READ, {"path": str(fifo)}),
        (C.FILE_WRITE, {"path": str(fifo), "data": b64(b"x"), "append": True}),
        (C.FILE_COPY, {"source": str(fifo), "destination": f"{case.prefix}/copied"}),
        (C.FILE_DELETE, {"path": str(fifo)}),
    ):
        started = time.monotonic()
        refused(case.daemon, case.send(command, **members), 403, "refused_file", "not a regular file")
        assert time.monotonic() - started < 10, command  # no open(2) of it blocked waiting for a writer
    listed = entries(result_of(call(case.daemon, case.send(C.DIR_LIST, path=str(case.prefix)))))
    assert [(e["name"], e["type"]) for e in listed] == [("fifo", "other")]
    assert stat.S_ISFIFO(fifo.lstat().st_mode) and not (case.prefix / "copied").exists()


def test_a_device_node_made_by_root_in_the_prefix_is_refused(case: Case) -> None:
    zero = case.prefix / "zero"
    os.mknod(zero, stat.S_IFCHR | 0o666, os.makedev(1, 5))  # /dev/zero's numbers
    with zero.open("rb") as opened:  # the tmpfs allows devices: the node really opens, refusing it is the agent's
        assert opened.read(4) == b"\0\0\0\0"
    for command, members in (
        (C.FILE_READ, {"path": str(zero)}),
        (C.FILE_WRITE, {"path": str(zero), "data": b64(b"x"), "offset": 0}),
        (C.FILE_CREATE, {"path": str(zero), "data": b64(b"x"), "overwrite": True}),
        (C.FILE_COPY, {"source": str(zero), "destination": f"{case.prefix}/copied"}),
        (C.FILE_DELETE, {"path": str(zero)}),
    ):
        refused(case.daemon, case.send(command, **members), 403, "refused_file", "not a regular file")
    assert stat.S_ISCHR(zero.lstat().st_mode) and not (case.prefix / "copied").exists()


def test_writes_over_the_cap_are_refused_and_change_nothing(case: Case) -> None:
    target = case.prefix / "file.bin"
    own_tree(case.prefix, {"file.bin": b"kept\n"}, (), case.battery.uid, case.battery.gid)
    before = tree_digest(case.prefix)
    over = os.urandom(MAX_WRITE_BYTES + 1)
    limit = f"more than {MAX_WRITE_BYTES} bytes"
    for command, members in (
        (C.FILE_WRITE, {"path": str(target), "data": b64(over), "offset": 0}),
        (C.FILE_WRITE, {"path": str(target), "data": b64(over), "append": True}),
        (C.FILE_CREATE, {"path": f"{case.prefix}/new.bin", "data": b64(over)}),
    ):
        refused(case.daemon, case.send(command, **members), 400, "invalid_request", limit)
    read_over = case.send(C.FILE_READ, path=str(target), length=512 * 1024 + 1)
    refused(case.daemon, read_over, 400, "invalid_request", "length: must be between 1 and 524288")
    # A body over the tunnel server's 100 kB is refused there (the dev backend, as P0's): it never reaches the agent.
    status, answer = case.daemon.post(case.send(C.FILE_CREATE, path=f"{case.prefix}/new.bin", data=b64(over * 2)))
    assert (status, answer) == (413, {"error": "request entity too large"})
    assert changed(before, tree_digest(case.prefix)) == [] and target.read_bytes() == b"kept\n"
    exactly = os.urandom(MAX_WRITE_BYTES)  # the cap itself is one call's worth
    written = result_of(call(case.daemon, case.send(C.FILE_WRITE, path=str(target), data=b64(exactly), offset=0)))
    assert written["written"] == MAX_WRITE_BYTES and target.read_bytes() == exactly


def test_an_output_flood_is_cut_at_one_mebibyte_per_stream(case: Case) -> None:
    started = time.monotonic()
    ran = case.run("/usr/bin/yes", seconds=60)
    assert len(ran["stdout"]) == MAX_STREAM_BYTES and ran["stdout"][:4] == b"y\ny\n", len(ran["stdout"])
    assert ran["truncated"] is True and ran["truncatedStreams"] == ["stdout"] and ran["timedOut"] is False
    both = case.run("/bin/sh", "-c", "/usr/bin/yes err >&2 & exec /usr/bin/yes out", seconds=60)
    assert (len(both["stdout"]), len(both["stderr"])) == (MAX_STREAM_BYTES, MAX_STREAM_BYTES)
    assert both["truncated"] is True and sorted(both["truncatedStreams"]) == ["stderr", "stdout"]
    assert time.monotonic() - started < 30  # cut at the cap (SIGPIPE), not run to the timeout


def test_a_fork_bomb_is_bounded_and_the_daemon_answers_p0_meanwhile(case: Case) -> None:
    bomb = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
    uid = case.battery.uid
    answers: list[dict[str, Any]] = []
    runner = threading.Thread(target=lambda: answers.append(case.run(SYSTEM_PYTHON, "-c", bomb, seconds=4)))
    runner.start()
    peak, during = 0, []
    try:
        while runner.is_alive():
            running = len(user_processes(uid))
            peak = max(peak, running)
            if running > 16:  # the bomb is going: P0's own commands still answer, promptly
                started = time.monotonic()
                status, listed = case.daemon.post({"command": "listUsers"}, timeout=10)
                during.append((status, time.monotonic() - started, listed.get("success")))
            time.sleep(0.05)
    finally:
        runner.join(timeout=60)
    [ran] = answers
    assert ran["timedOut"] is True and ran["exitCode"] is None, ran
    assert 16 < peak <= 64 + 1, peak  # the worker's --tasks (64, the default) and the namespace's init
    assert during and all(status == 200 and ok is True and took < 5 for status, took, ok in during), during
    assert user_processes(uid) == []


def test_a_timeout_kills_the_command_and_what_it_started_in_sessions_of_their_own(case: Case) -> None:
    started = time.monotonic()
    line = "/usr/bin/setsid /bin/sleep 300 & /usr/bin/setsid -f /bin/sleep 301; exec /bin/sleep 60"
    ran = case.run("/bin/sh", "-c", line, seconds=2)
    took = time.monotonic() - started
    assert ran["timedOut"] is True and ran["signal"] == 9 and ran["exitCode"] is None, ran
    assert 1.9 <= took < 8 and 1900 <= ran["durationMs"] < 4000, (took, ran["durationMs"])
    assert user_processes(case.battery.uid) == []  # the setsid children too, at once (no waiting here)
