"""host.ledger's per-user storage: migration from ledger.json (and a crash at each of its steps), refusals, locks
between processes, grouped commits, compaction and the dry run (real files in tmp_path, as root)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.host import locks
from p0_ssh_agent.host.ledger import (
    MAX_LEDGER_BYTES,
    Ledger,
    LedgerCorrupt,
    LedgerFull,
    LedgerStore,
    copy_ledger,
    ledger_path,
    load_ledger,
    save_ledger,
    to_json,
)
from p0_ssh_agent.host.safefile import FileEditFailed, UnsafePath

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ledger's files are root-owned: needs root")

T0 = "2026-11-23T10:00:00Z"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def store(state_dir: Path) -> LedgerStore:
    return LedgerStore(state_dir, lock_dir=str(state_dir.parent / "locks"))


def many(count: int) -> Ledger:
    ledger = Ledger()
    for number in range(count):
        name = f"user{number}"
        ledger.record_user(name, 70000 + number, now=T0)
        ledger.record_key(name, f"req-{number}", "key", f"SHA256:{number}", now=T0)
        ledger.record_sudo(f"sudo-{number}", name, None, now=T0)
    ledger.record_user("adopted", 1500, adopted=True, now=T0)
    return ledger


def files(state_dir: Path) -> dict[str, bytes]:
    return {str(p.relative_to(state_dir)): p.read_bytes() for p in sorted(state_dir.rglob("*")) if p.is_file()}


def names_in(directory: Path) -> list[str]:
    return [entry.name for entry in directory.iterdir()]


def users_dir(state_dir: Path) -> Path:
    return state_dir / "ledger" / "users"


# --- migration ------------------------------------------------------------------------------------------------


def test_a_schema_1_ledger_is_migrated_on_first_use_and_kept_as_a_backup(state_dir: Path) -> None:
    legacy = many(5)
    (state_dir / "ledger.json").write_text(to_json(legacy))
    assert load_ledger(state_dir) == legacy  # a read that may not write reads ledger.json as it is
    assert ledger_path(state_dir) == state_dir / "ledger.json"
    assert LedgerStore(state_dir, lock_dir=None).read_user("user1").users.keys() == {"user1"}
    assert sorted(names_in(state_dir)) == ["ledger.json"]  # a dry run migrates nothing

    view = store(state_dir).read_user("user1")
    assert set(view.keys) == {"user1"} and view.uid_high_water == 70004
    names = sorted(names_in(state_dir))
    assert names[0] == "ledger" and names[1].startswith("ledger.json.migrated-") and len(names) == 2
    assert (state_dir / names[1]).read_text() == to_json(legacy)
    assert load_ledger(state_dir) == legacy
    assert ledger_path(state_dir) == users_dir(state_dir)
    assert sorted(names_in(users_dir(state_dir))) == sorted(f"{n}.json" for n in legacy.users)
    before = files(state_dir)
    store(state_dir).read_all()  # idempotent: nothing more to do
    assert files(state_dir) == before


class Crash(BaseException):
    """Stands for a kill -9 at one step: raised by the patched system call, caught by nothing in the agent."""


def crash_at(monkeypatch: pytest.MonkeyPatch, step: int) -> Callable[[], int]:
    """Make the step-th write-path system call (replace, rename, fsync, unlink) crash; returns the call count."""
    calls = [0]

    def wrap(real: Callable[..., object]) -> Callable[..., object]:
        def patched(*args: object, **kwargs: object) -> object:
            calls[0] += 1
            if calls[0] == step:
                raise Crash
            return real(*args, **kwargs)

        return patched

    for name in ("replace", "rename", "fsync", "unlink", "mkdir"):
        monkeypatch.setattr(os, name, wrap(getattr(os, name)))
    return lambda: calls[0]


def test_a_crash_at_every_step_of_the_migration_is_completed_by_the_next_start(
    state_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    legacy = many(4)
    steps = 0
    for step in range(1, 200):
        for entry in list(state_dir.iterdir()):
            subprocess.run(["/bin/rm", "-rf", str(entry)], check=True)
        (state_dir / "ledger.json").write_text(to_json(legacy))
        with monkeypatch.context() as patch:
            counted = crash_at(patch, step)
            try:
                store(state_dir).read_all()
            except Crash:
                pass
            else:
                steps = counted()
                break
        # Whatever the crash left reads as the whole ledger, and the next start completes the migration.
        assert load_ledger(state_dir) == legacy, f"crash at step {step}"
        assert store(state_dir).read_all() == legacy, f"crash at step {step}"
        assert not (state_dir / "ledger.json").exists()
        assert sorted(names_in(users_dir(state_dir))) == sorted(f"{n}.json" for n in legacy.users)
    assert steps > 10, "every step of the migration was crashed once"


def test_a_partial_migration_with_a_stray_record_is_redone_from_ledger_json(state_dir: Path) -> None:
    legacy = many(2)
    (state_dir / "ledger.json").write_text(to_json(legacy))
    users_dir(state_dir).mkdir(parents=True, mode=0o700)
    (state_dir / "ledger").chmod(0o700)
    (users_dir(state_dir) / "gone.json").write_text("{}")  # not in ledger.json: a leftover, deleted
    assert load_ledger(state_dir) == legacy
    assert store(state_dir).read_all() == legacy
    assert not (users_dir(state_dir) / "gone.json").exists()


def test_a_restored_ledger_json_next_to_a_migrated_ledger_is_refused(state_dir: Path) -> None:
    save_ledger(many(2), state_dir)
    (state_dir / "ledger.json").write_text(to_json(many(1)))
    before = files(state_dir)
    reads: list[Callable[[], Ledger]] = [load_ledger_of(state_dir), lambda: store(state_dir).read_user("user0")]
    for read in reads:
        with pytest.raises(LedgerCorrupt, match="is not the file that was migrated"):
            read()
    assert files(state_dir) == before


# --- refusals -------------------------------------------------------------------------------------------------


def test_newer_schemas_and_corrupt_records_are_refused_naming_file_and_field(state_dir: Path) -> None:
    save_ledger(many(2), state_dir)
    host, alice = state_dir / "ledger" / "host.json", users_dir(state_dir) / "user0.json"
    good_host, good_record = host.read_text(), alice.read_text()
    cases: list[tuple[Path, dict[str, object], str]] = [
        (host, {"schema": 3}, "schema 3, newer than this agent understands (2)"),
        (alice, {"schema": 3}, "schema 3, newer than this agent understands (2)"),
        (host, {"uid_high_water": "x"}, "uid_high_water must be a non-negative integer"),
        (alice, {"user": "user1"}, "user must be 'user0', the name of its file"),
        (alice, {"account": {"uid": -1, "created_at": T0, "adopted": False}}, "account.uid must be a non-negative"),
        (alice, {"keys": {"req-0": [{"kind": "x", "fingerprint": "f", "granted_at": T0}]}}, "keys.req-0[0].kind"),
        (alice, {"sudo": {"s": {"run_as": "x y", "granted_at": T0}}}, "sudo.s is not a rule this agent writes"),
        (alice, {"extra": 1}, "unknown ['extra']"),
    ]
    for path, change, message in cases:
        document = json.loads(path.read_text())
        document.update(change)
        path.write_text(json.dumps(document))
        before = files(state_dir)
        reads: list[Callable[[], object]] = [lambda: load_ledger(state_dir)]
        if path == alice:
            reads.append(lambda: store(state_dir).read_user("user0"))
        for read in reads:
            with pytest.raises(LedgerCorrupt) as caught:
                read()
            assert message in str(caught.value) and str(path) in str(caught.value), caught.value
        assert files(state_dir) == before  # never replaced by an empty one
        host.write_text(good_host)
        alice.write_text(good_record)


def test_a_symlinked_or_oversized_record_is_refused(state_dir: Path, tmp_path: Path) -> None:
    save_ledger(many(2), state_dir)
    record = users_dir(state_dir) / "user0.json"
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_bytes(record.read_bytes())
    record.unlink()
    record.symlink_to(elsewhere)
    view = Ledger()
    view.record_user("user0", 70000)
    for action in (
        lambda: store(state_dir).read_user("user0"),
        load_ledger_of(state_dir),
        lambda: store(state_dir).commit(Ledger(), view),
    ):
        with pytest.raises(UnsafePath, match="symlink"):
            action()
    assert record.is_symlink()
    record.unlink()
    record.write_bytes(b" " * (MAX_LEDGER_BYTES + 1))
    with pytest.raises(UnsafePath, match="more than"):
        store(state_dir).read_user("user0")


def load_ledger_of(state_dir: Path) -> Callable[[], Ledger]:
    return lambda: load_ledger(state_dir)


def test_records_without_a_host_record_and_stray_files_are_refused(state_dir: Path) -> None:
    save_ledger(many(1), state_dir)
    (users_dir(state_dir) / "notes.txt").write_text("x")
    with pytest.raises(LedgerCorrupt, match="is not a ledger record"):
        load_ledger(state_dir)
    (users_dir(state_dir) / "notes.txt").unlink()
    (state_dir / "ledger" / "host.json").unlink()
    with pytest.raises(LedgerCorrupt, match=r"host\.json is missing"):
        store(state_dir).read_user("user0")


def test_an_oversized_commit_writes_nothing(state_dir: Path) -> None:
    save_ledger(many(1), state_dir)
    before = files(state_dir)
    view = store(state_dir).read_user("user0")
    after = copy_ledger(view)
    after.record_key("user0", "req-pad", "key", "SHA256:" + "A" * MAX_LEDGER_BYTES)
    with pytest.raises(LedgerFull, match="nothing was written"):
        store(state_dir).commit(view, after)
    assert files(state_dir) == before


# --- commits: grouped, compacted, locked ------------------------------------------------------------------------


@pytest.fixture
def fsyncs(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """The kind ("dir" or "file") of every fsync."""
    seen: list[str] = []
    real = os.fsync

    def counting(fd: int) -> None:
        seen.append("dir" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real(fd)

    monkeypatch.setattr(os, "fsync", counting)
    yield seen


def test_a_commit_naming_50_users_fsyncs_the_directory_once(state_dir: Path, fsyncs: list[str]) -> None:
    save_ledger(many(60), state_dir)
    before = store(state_dir).read_all()
    after = copy_ledger(before)
    for number in range(50):
        after.forget_user(f"user{number}")
        after.record_user(f"user{number}", 70000 + number, now=T0)
        after.record_key(f"user{number}", "req-new", "ca", "SHA256:new", now=T0)
    fsyncs.clear()
    store(state_dir).commit(before, after)
    assert fsyncs.count("file") == 50 and fsyncs.count("dir") == 1, fsyncs
    assert load_ledger(state_dir) == after


def test_one_users_grant_writes_that_users_record_only(state_dir: Path, fsyncs: list[str]) -> None:
    save_ledger(many(20), state_dir)
    before = files(state_dir)
    view = store(state_dir).read_user("user3")
    after = copy_ledger(view)
    after.record_key("user3", "req-x", "key", "SHA256:x", now=T0)
    fsyncs.clear()
    store(state_dir).commit(view, after)
    assert fsyncs == ["file", "dir"]
    changed = {name for name, data in files(state_dir).items() if before.get(name) != data}
    assert changed == {"ledger/users/user3.json"}


def test_compaction_deletes_a_record_that_holds_nothing_and_keeps_the_uid_mark(state_dir: Path) -> None:
    save_ledger(many(2), state_dir)
    view = store(state_dir).read_user("user1")
    after = copy_ledger(view)
    after.forget_user("user1")
    store(state_dir).commit(view, after)
    assert not (users_dir(state_dir) / "user1.json").exists()
    assert store(state_dir).read_user("user1") == Ledger(uid_high_water=70001)
    assert "req-1" not in json.dumps(files(state_dir).__repr__())


def test_a_first_commit_on_a_new_host_writes_the_host_record_first(state_dir: Path) -> None:
    after = Ledger()
    after.record_user("alice", 70123, now=T0)
    store(state_dir).commit(Ledger(), after)
    host = json.loads((state_dir / "ledger" / "host.json").read_text())
    assert host == {"schema": 2, "uid_high_water": 70123, "migrated_from": None}
    assert store(state_dir).read_user("bob").uid_high_water == 70123


def test_a_dry_run_store_writes_nothing(state_dir: Path) -> None:
    after = Ledger()
    after.record_user("alice", 70000)
    LedgerStore(state_dir, lock_dir=None).commit(Ledger(), after)
    assert list(state_dir.iterdir()) == []
    save_ledger(many(1), state_dir)
    before = files(state_dir)
    LedgerStore(state_dir, lock_dir=None).commit(Ledger(), after)
    assert files(state_dir) == before


def test_a_commit_waits_for_the_users_record_lock(state_dir: Path) -> None:
    save_ledger(many(1), state_dir)
    lock_dir = str(state_dir.parent / "locks")
    view = store(state_dir).read_user("user0")
    after = copy_ledger(view)
    after.record_key("user0", "req-x", "key", "SHA256:x")
    done = threading.Event()
    with locks.ledger_record_lock("user0", lock_dir=lock_dir):

        def commit() -> None:
            store(state_dir).commit(view, after)
            done.set()

        worker = threading.Thread(target=commit)
        worker.start()
        time.sleep(0.3)
        assert not done.is_set(), "the commit went ahead while another holder had user0's record lock"
        other = store(state_dir).read_user("user1")  # another user's commit does not wait
        other_after = copy_ledger(other)
        other_after.record_user("user1", 70001)
        store(state_dir).commit(other, other_after)
    worker.join(10)
    assert done.is_set() and "req-x" in load_ledger(state_dir).keys["user0"]


_COMMITTER = """
import sys
from pathlib import Path
from p0_ssh_agent.host import locks
from p0_ssh_agent.host.ledger import LedgerStore, copy_ledger
state, lock_dir, prefix, rounds = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
store = LedgerStore(state, lock_dir)
for number in range(rounds):
    name = prefix if prefix == "shared" else f"{prefix}{number % 5}"
    # the caller's user lock around read and commit, as the pipeline holds it (facts read once, under the lock)
    with locks.global_lock("test-user-" + name, lock_dir=lock_dir):
        before = store.read_user(name)
        after = copy_ledger(before)
        after.record_key(name, f"{sys.argv[3]}-{sys.argv[5]}-{number}", "key", "SHA256:k")
        store.commit(before, after)
"""


@pytest.mark.parametrize("shared", [False, True])
def test_two_processes_committing_concurrently_lose_nothing(state_dir: Path, shared: bool) -> None:
    lock_dir = str(state_dir.parent / "locks")
    runs = [("shared" if shared else prefix, tag) for prefix, tag in (("a", "p1"), ("b", "p2"))]
    procs = [
        subprocess.Popen([sys.executable, "-c", _COMMITTER, str(state_dir), lock_dir, prefix, "40", tag])
        for prefix, tag in runs
    ]
    assert [proc.wait(120) for proc in procs] == [0, 0]
    ledger = load_ledger(state_dir)
    assert sum(len(per_user) for per_user in ledger.keys.values()) == 80
    assert not [name for name in names_in(users_dir(state_dir)) if name.startswith(".")]  # no temp left


def test_the_later_grant_wins_a_sudo_request_id_two_records_hold(state_dir: Path) -> None:
    first, second = Ledger(), Ledger()
    first.record_sudo("r1", "alice", None, now="2026-01-01T00:00:00Z")
    second.record_sudo("r1", "bob", "root", now="2026-01-02T00:00:00Z")
    store(state_dir).commit(Ledger(), first)
    store(state_dir).commit(Ledger(), second)  # names bob only: alice's record still says r1
    assert load_ledger(state_dir).sudo["r1"].user == "bob"


def test_group_writes_leave_no_temp_after_a_failure(state_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_ledger(many(3), state_dir)
    before = files(state_dir)
    real = os.replace

    def failing(src: str, dst: str, **kwargs: object) -> None:
        raise OSError(28, "No space left on device", src)

    monkeypatch.setattr(os, "replace", failing)
    whole = store(state_dir).read_all()
    after = copy_ledger(whole)
    for number in range(3):
        after.record_key(f"user{number}", "req-z", "key", "SHA256:z")
    with pytest.raises(FileEditFailed, match="No space left"):
        store(state_dir).commit(whole, after)
    monkeypatch.setattr(os, "replace", real)
    assert files(state_dir) == before
