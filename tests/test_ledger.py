"""host.ledger: the JSON round trip, its strict reading, and atomic, private saves (real files in tmp_path)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p0_ssh_agent.core.sudoers import parse_dropin, render_dropin
from p0_ssh_agent.errors import ExitCode
from p0_ssh_agent.host.ledger import (
    MAX_LEDGER_BYTES,
    SCHEMA,
    KeyEntry,
    KeyKind,
    Ledger,
    LedgerCorrupt,
    LedgerFull,
    LedgerStore,
    SudoEntry,
    UserEntry,
    apply_change,
    copy_ledger,
    from_json,
    load_ledger,
    save_ledger,
    to_json,
    user_record_json,
    user_view,
    users_in,
)
from p0_ssh_agent.host.safefile import UnsafePath

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the ledger is a root-owned file: needs root")

T0 = "2026-11-23T10:00:00Z"
FP_A = "SHA256:uQ0fFoYbAH3vSTxCoG7N6XlCJQ/A0Qd5JmdeWXz8Cug"
FP_CA = "SHA256:9Y2WOKw+0M7lJd8CKqFJmtHlTOOtWAXzHi2ts5nXQyA"


@pytest.fixture
def state_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "state"
    directory.mkdir(mode=0o700)
    return directory


def sample() -> Ledger:
    ledger = Ledger()
    ledger.record_user("alice", 70001, now=T0)
    ledger.record_user("legacy", 1500, adopted=True, now=T0)
    ledger.record_key("alice", "req-1", "key", FP_A, now=T0)
    ledger.record_key("alice", "req-1", "ca", FP_CA, now=T0)  # one request, both kinds
    ledger.record_sudo("req-1", "alice", None, now=T0)
    ledger.record_sudo("req-2", "alice", "postgres", now=T0)
    return ledger


def test_missing_ledger_is_empty(state_dir: Path) -> None:
    assert load_ledger(state_dir) == Ledger()


def record(state_dir: Path, name: str) -> Path:
    return state_dir / "ledger" / "users" / f"{name}.json"


def tree(state_dir: Path) -> dict[str, bytes]:
    """Every file under state_dir (relative path -> bytes): what a test compares before and after."""
    return {str(p.relative_to(state_dir)): p.read_bytes() for p in sorted(state_dir.rglob("*")) if p.is_file()}


def test_round_trip_private_file(state_dir: Path) -> None:
    ledger = sample()
    save_ledger(ledger, state_dir)
    assert load_ledger(state_dir) == ledger
    host = state_dir / "ledger" / "host.json"
    for path in (host, record(state_dir, "alice"), record(state_dir, "legacy")):
        info = path.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o600, 0, 0)
    for directory in (state_dir / "ledger", state_dir / "ledger" / "users"):
        info = directory.stat()
        assert (stat.S_IMODE(info.st_mode), info.st_uid, info.st_gid) == (0o700, 0, 0)
    assert json.loads(host.read_text()) == {"schema": SCHEMA, "uid_high_water": 70001, "migrated_from": None}
    document = json.loads(record(state_dir, "alice").read_text())
    assert document["schema"] == SCHEMA == 2
    assert document["keys"]["req-1"] == [
        {"kind": "key", "fingerprint": FP_A, "granted_at": T0},
        {"kind": "ca", "fingerprint": FP_CA, "granted_at": T0},
    ]
    assert document["sudo"] == {
        "req-1": {"run_as": None, "granted_at": T0},
        "req-2": {"run_as": "postgres", "granted_at": T0},
    }
    assert [entry.name for entry in state_dir.iterdir()] == ["ledger"]
    assert sorted(tree(state_dir)) == ["ledger/host.json", "ledger/users/alice.json", "ledger/users/legacy.json"]


def test_saving_replaces_the_file_and_never_leaves_a_temp(state_dir: Path) -> None:
    first = sample()
    first.forget_keys("alice", "req-1")
    save_ledger(first, state_dir)
    path = record(state_dir, "alice")
    old = path.read_bytes()
    with path.open("rb") as reader_of_old:
        save_ledger(sample(), state_dir)
        # A reader that opened the old file still sees it whole: the new one arrived by rename, not in place.
        assert reader_of_old.read() == old
    assert load_ledger(state_dir) == sample()
    assert sorted(tree(state_dir)) == ["ledger/host.json", "ledger/users/alice.json", "ledger/users/legacy.json"]


_SAVE_FAILS = """
import resource, signal, sys
from pathlib import Path
from p0_ssh_agent.host.ledger import Ledger, load_ledger, save_ledger
from p0_ssh_agent.host.safefile import FileEditFailed
ledger = load_ledger(Path(sys.argv[1]))
ledger.record_user("bob", 70002, now="2026-11-23T10:00:00Z")
for number in range(200):  # alice's record grows past 8 KiB; bob's new one is small and would fit
    ledger.record_key("alice", f"req-big-{number}", "key", "SHA256:x", now="2026-11-23T10:00:00Z")
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (8192, 8192))  # a temp file cannot grow past 8 KiB: EFBIG midway
try:
    save_ledger(ledger, Path(sys.argv[1]))
except FileEditFailed as exc:
    print(exc)
    sys.exit(3)
"""


def test_a_failed_save_keeps_the_old_ledger_whole(state_dir: Path) -> None:
    save_ledger(sample(), state_dir)
    old = tree(state_dir)
    done = subprocess.run(
        [sys.executable, "-c", _SAVE_FAILS, str(state_dir)], capture_output=True, text=True, check=False
    )
    assert done.returncode == 3, done.stdout + done.stderr
    assert "File too large" in done.stdout
    # Every temp file of the group was written before any rename: the failure changed no record, not even bob's.
    assert tree(state_dir) == old
    assert [entry.name for entry in state_dir.iterdir()] == ["ledger"]


def ledger_of_size(size: int) -> Ledger:
    """sample() with alice's record padded (through one long fingerprint, which the reader accepts) to exactly
    `size` bytes of JSON."""
    ledger = sample()
    base = len(user_record_json(ledger, "alice").encode())  # type: ignore[union-attr]
    ledger.record_key("alice", "req-pad", "key", "SHA256:", now=T0)
    padding = size - len(user_record_json(ledger, "alice").encode())  # type: ignore[union-attr]
    assert padding >= 0 and size > base
    ledger.forget_keys("alice", "req-pad")
    ledger.record_key("alice", "req-pad", "key", "SHA256:" + "A" * padding, now=T0)
    assert len(user_record_json(ledger, "alice").encode()) == size  # type: ignore[union-attr]
    return ledger


def test_the_largest_ledger_that_loads_is_the_largest_that_saves(state_dir: Path) -> None:
    """One limit both ways, per record: a record save_ledger writes is one load_ledger reads back, and one byte
    more is refused before anything is written (it used to be written, after which every grant and revoke failed)."""
    largest = ledger_of_size(MAX_LEDGER_BYTES)
    save_ledger(largest, state_dir)
    assert load_ledger(state_dir) == largest
    old = tree(state_dir)

    with pytest.raises(LedgerFull) as refused:
        save_ledger(ledger_of_size(MAX_LEDGER_BYTES + 1), state_dir)
    message = str(refused.value)
    assert str(record(state_dir, "alice")) in message
    assert f"{MAX_LEDGER_BYTES + 1} bytes" in message and "64 MiB" in message
    assert "nothing was written" in message
    assert tree(state_dir) == old  # no temp file either
    assert load_ledger(state_dir) == largest


def test_uid_high_water_survives_deletion_and_hand_edits(state_dir: Path) -> None:
    ledger = sample()
    assert ledger.uid_high_water == 70001  # the adopted user's UID 1500 was not ours to hand out
    ledger.forget_user("alice")
    assert ledger.uid_high_water == 70001
    assert "alice" not in ledger.keys
    assert ledger.sudo == {}  # a deleted user keeps no sudo rule
    save_ledger(ledger, state_dir)
    assert load_ledger(state_dir).uid_high_water == 70001

    document = json.loads(to_json(sample()))
    document["uid_high_water"] = 5  # lower than a UID in the table: the table wins
    assert from_json(json.dumps(document), "x").uid_high_water == 70001


def test_entries_are_recorded_once() -> None:
    ledger = sample()
    ledger.record_key("alice", "req-1", "key", FP_A, now="2030-01-01T00:00:00Z")
    ledger.record_sudo("req-1", "alice", None, now="2030-01-01T00:00:00Z")
    assert ledger.keys["alice"]["req-1"][0] == KeyEntry("key", FP_A, T0)
    assert ledger.sudo["req-1"] == SudoEntry("alice", None, T0)
    assert ledger.forget_keys("alice", "req-1") == [KeyEntry("key", FP_A, T0), KeyEntry("ca", FP_CA, T0)]
    assert ledger.keys == {}
    assert ledger.forget_keys("alice", "req-1") == []
    assert ledger.forget_sudo("req-2") == SudoEntry("alice", "postgres", T0)
    assert ledger.forget_sudo("req-2") is None


def test_sudo_grants_render_the_dropin() -> None:
    grants = sample().sudo_grants()
    assert sorted(parse_dropin(render_dropin(grants)), key=lambda g: g.request_id) == grants
    with pytest.raises(ValueError, match="user must match"):
        Ledger().record_sudo("req-9", "bad name\nALL ALL=(ALL) ALL", None)


def test_users_are_recorded_with_their_origin() -> None:
    ledger = sample()
    assert ledger.users["legacy"] == UserEntry(1500, T0, adopted=True)
    assert "alice" in ledger.users and "root" not in ledger.users


# --- unusable ledgers are refused and left untouched -------------------------------------------------------


def good_document() -> dict[str, object]:
    return dict(json.loads(to_json(sample())))


@pytest.mark.parametrize(
    ("change", "names"),
    [
        (lambda d: d.update(schema=0), "schema must be 1"),
        (lambda d: d.pop("sudo"), "missing ['sudo']"),
        (lambda d: d.update(extra=1), "unknown ['extra']"),
        (lambda d: d.update(uid_high_water=-1), "uid_high_water must be a non-negative integer"),
        (lambda d: d["users"]["alice"].update(uid="70001"), "users.alice.uid must be a non-negative integer"),
        (lambda d: d["users"]["alice"].update(adopted="no"), "users.alice.adopted must be true or false"),
        (lambda d: d["users"].update({"Bad Name": d["users"]["alice"]}), "users.Bad Name is not a valid user name"),
        (lambda d: d["keys"]["alice"]["req-1"][0].update(kind="x"), "keys.alice.req-1[0].kind must be"),
        (lambda d: d["keys"]["alice"].update({"r/1": []}), "keys.alice has an invalid request id"),
        (lambda d: d["sudo"]["req-1"].update(run_as="x y"), "sudo.req-1 is not a rule this agent writes"),
        (lambda d: d["sudo"]["req-1"].update(user=None), "sudo.req-1 must name user"),
    ],
)
def test_bad_fields_are_named(state_dir: Path, change: object, names: str) -> None:
    document = good_document()
    change(document)  # type: ignore[operator]
    path = state_dir / "ledger.json"
    path.write_text(json.dumps(document))
    before = path.read_bytes()
    with pytest.raises(LedgerCorrupt) as caught:
        load_ledger(state_dir)
    assert names in str(caught.value)
    assert str(path) in str(caught.value)
    assert "left untouched" in str(caught.value)
    assert path.read_bytes() == before
    assert [entry.name for entry in state_dir.iterdir()] == ["ledger.json"]


def test_invalid_json_is_refused_with_its_position(state_dir: Path) -> None:
    path = state_dir / "ledger.json"
    path.write_bytes(b'{"schema": 1,\n  "users": {oops}}')
    with pytest.raises(LedgerCorrupt, match="line 2 column 13: is not valid JSON") as caught:
        load_ledger(state_dir)
    assert caught.value.exit_code == ExitCode.CONFIG
    path.write_bytes(b'{"schema": "\xff"}')
    with pytest.raises(LedgerCorrupt, match="is not UTF-8"):
        load_ledger(state_dir)


def test_a_newer_schema_is_not_rewritten(state_dir: Path) -> None:
    document = good_document()
    document["schema"] = 2
    document["future_field"] = {"x": 1}
    (state_dir / "ledger.json").write_text(json.dumps(document))
    with pytest.raises(LedgerCorrupt, match="schema 2, newer than this agent understands"):
        load_ledger(state_dir)


def test_a_symlinked_ledger_is_refused(state_dir: Path, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    elsewhere.write_text(to_json(sample()))
    (state_dir / "ledger.json").symlink_to(elsewhere)
    with pytest.raises(UnsafePath, match="symlink"):
        load_ledger(state_dir)
    with pytest.raises(UnsafePath, match="symlink"):
        save_ledger(Ledger(), state_dir)
    assert from_json(elsewhere.read_text(), "x") == sample()


# --- any ledger the methods can build survives the round trip ----------------------------------------------

names = st.from_regex(r"[a-z_][a-z0-9_-]{0,31}", fullmatch=True)
request_ids = st.from_regex(r"[A-Za-z0-9_-]{1,40}", fullmatch=True)
stamps = st.sampled_from([T0, "2027-01-01T00:00:00Z"])


@st.composite
def ledgers(draw: st.DrawFn) -> Ledger:
    ledger = Ledger(uid_high_water=draw(st.integers(0, 2**31)))
    for name in draw(st.lists(names, max_size=5)):
        ledger.record_user(name, draw(st.integers(0, 2**31)), adopted=draw(st.booleans()), now=draw(stamps))
    for _ in range(draw(st.integers(0, 6))):
        kind: KeyKind = draw(st.sampled_from(["key", "ca"]))
        ledger.record_key(draw(names), draw(request_ids), kind, draw(st.sampled_from([FP_A, FP_CA])), now=T0)
    for _ in range(draw(st.integers(0, 4))):
        ledger.record_sudo(draw(request_ids), draw(names), draw(st.none() | names), now=draw(stamps))
    return ledger


@settings(max_examples=150, deadline=None)
@given(ledgers())
def test_json_round_trip(ledger: Ledger) -> None:
    assert from_json(to_json(ledger), "x") == ledger


def _two_user_ledger() -> Ledger:
    ledger = Ledger()
    ledger.record_user("alice", 70000, now="2026-01-01T00:00:00Z")
    ledger.record_user("bob", 70001, now="2026-01-01T00:00:00Z")
    ledger.record_key("alice", "r1", "key", "SHA256:a", now="2026-01-01T00:00:00Z")
    ledger.record_key("bob", "r2", "key", "SHA256:b", now="2026-01-01T00:00:00Z")
    ledger.record_sudo("r3", "alice", None, now="2026-01-01T00:00:00Z")
    ledger.record_sudo("r4", "bob", "root", now="2026-01-01T00:00:00Z")
    return ledger


def test_a_user_view_holds_that_user_only_and_is_a_copy() -> None:
    ledger = _two_user_ledger()
    view = user_view(ledger, "alice")
    assert set(view.users) == {"alice"} and set(view.keys) == {"alice"} and set(view.sudo) == {"r3"}
    assert view.uid_high_water == 70001
    view.record_key("alice", "r9", "ca", "SHA256:c")
    assert "r9" not in ledger.keys["alice"]


def test_a_change_to_one_user_keeps_a_concurrent_change_to_another() -> None:
    ledger = _two_user_ledger()
    before = user_view(ledger, "alice")
    after = copy_ledger(before)
    after.forget_keys("alice", "r1")
    after.forget_sudo("r3")
    # Meanwhile bob got a new key and the stored ledger moved on.
    current = copy_ledger(ledger)
    current.record_key("bob", "r5", "key", "SHA256:d", now="2026-01-02T00:00:00Z")
    result = apply_change(current, before, after)
    assert "alice" not in result.keys and "r3" not in result.sudo and "alice" in result.users
    assert set(result.keys["bob"]) == {"r2", "r5"} and set(result.sudo) == {"r4"}


def test_a_forgotten_user_is_gone_with_everything_it_held() -> None:
    ledger = _two_user_ledger()
    before = user_view(ledger, "bob")
    after = copy_ledger(before)
    after.forget_user("bob")
    result = apply_change(ledger, before, after)
    assert users_in(result) == {"alice"} and result.uid_high_water == 70001


def test_the_store_commits_under_its_lock_and_reads_back(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path, lock_dir=str(tmp_path / "locks"))
    before = store.read_user("alice")
    after = copy_ledger(before)
    after.record_user("alice", 70000)
    store.commit(before, after)
    assert store.read_user("alice").users["alice"].uid == 70000
    assert LedgerStore(tmp_path, lock_dir=None).read_all().users.keys() == {"alice"}


def test_a_store_without_a_lock_dir_writes_nothing(tmp_path: Path) -> None:
    store = LedgerStore(tmp_path, lock_dir=None)
    after = Ledger()
    after.record_user("alice", 70000)
    store.commit(Ledger(), after)
    assert not (tmp_path / "ledger.json").exists()
