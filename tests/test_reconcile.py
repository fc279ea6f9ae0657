"""Reconciliation in the namespace sandbox: grants made by the real handlers, then files edited by hand, then
provisioning.reconcile in report mode (nothing changes) and repair mode (exactly what the ledger owns is fixed).

Run with `tests/sandbox/enter .venv/bin/pytest -q tests/test_reconcile.py`.
"""

from __future__ import annotations

import dataclasses
import json
import pwd
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.authorized_keys_format import blocks, remove_block
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.core.sudoers import HEADER
from p0_ssh_agent.host.ledger import load_ledger
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from p0_ssh_agent.provisioning.reconcile import Drift, reconcile
from p0_ssh_agent.runtime.periodic import GuardTasks
from sandbox.fixtures import Sandbox, unique_user_name
from test_audit import PINNED_IDS, JournalSink, journal_sink

pytestmark = pytest.mark.sandbox

T = TypeVar("T")
VISUDO = "/usr/sbin/visudo"
DROPIN = Path("/etc/sudoers.d/p0-ssh-agent")
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc b@test"
USER_OWN = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc the user's own\n"


def grant(engine: Engine, command: str, request_id: str, **fields: object) -> None:
    data: dict[str, object] = {"command": command, "action": "grant", "requestId": request_id, **fields}
    result = run_change(engine, parse_change(command, data)).result
    assert result.success, result.error


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalSink]:
    """A journald socket of the test's own: the drift and repair entries reconciliation sends."""
    yield from journal_sink(tmp_path)


@pytest.fixture
def engine(sandbox: Sandbox, tmp_path: Path, journal: JournalSink) -> Engine:
    """An engine whose audit entries go to the test's `journal`."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = AgentConfig(state_dir=state, max_grant_seconds=3600)
    return Engine.on_host(config, state, audit_trail=journal.trail())


def keys_file(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir) / ".ssh" / "authorized_keys"


def granted_user(engine: Engine, *request_ids: str) -> str:
    """A user with a key line, a CA line and a sudo rule per request id, plus a line of the user's own."""
    user = unique_user_name()
    grant(engine, "provisionUser", request_ids[0], userName=user)
    for request_id in request_ids:
        grant(engine, "provisionAuthorizedKeys", request_id, userName=user, publicKey=KEY_A)
        grant(engine, "provisionCAKeys", request_id, userName=user, caPublicKey=KEY_B)
        grant(engine, "provisionSudo", request_id, userName=user, sudo=True)
    path = keys_file(user)
    path.write_bytes(USER_OWN + path.read_bytes())
    return user


def kinds(found: list[Drift]) -> list[tuple[str, str | None]]:
    return sorted((d.kind, d.request_id) for d in found)


def snapshot(engine: Engine, user: str) -> tuple[bytes, bytes, dict[str, bytes]]:
    ledger = engine.state_dir / "ledger"
    return keys_file(user).read_bytes(), DROPIN.read_bytes(), {str(p): p.read_bytes() for p in ledger.rglob("*.json")}


def visudo_ok() -> bool:
    return subprocess.run([VISUDO, "-c"], capture_output=True, check=False).returncode == 0


def test_no_drift_after_normal_grants(engine: Engine) -> None:
    granted_user(engine, "rec-1", "rec-2")
    assert reconcile(engine, repair=True) == []


def test_hand_edits_of_authorized_keys_are_reported_then_repaired(engine: Engine, journal: JournalSink) -> None:
    user = granted_user(engine, "rec-1", "rec-2", "rec-3", "rec-4")
    path = keys_file(user)
    text = path.read_bytes()
    text = remove_block(text, "rec-1", select=lambda line: not line.startswith(b"cert-authority"))  # key removed
    ca_of_rec_2 = b'# RequestID: rec-2\ncert-authority,principals="'
    text = text.replace(ca_of_rec_2 + user.encode(), ca_of_rec_2 + b"root", 1)
    text = text.replace(b"# RequestID: rec-3\nexpiry-time", b"# RequestID: rec-3\nno-pty,expiry-time", 1)
    text += b"# RequestID: rec-4\n" + USER_OWN  # a foreign line slipped in under our marker
    text += b"# RequestID: not-ours\n" + KEY_A.encode() + b"\n"  # a request the ledger does not hold: not ours
    path.write_bytes(text)
    before = snapshot(engine, user)

    found = reconcile(engine, repair=False)

    assert kinds(found) == [
        ("foreign_line", "rec-4"),
        ("key_changed", "rec-2"),  # the CA line's principal
        ("key_changed", "rec-3"),  # options added to the key line
        ("key_missing", "rec-1"),
    ]
    assert not any(d.repaired for d in found)
    assert all("AAAA" not in d.detail for d in found)  # fingerprints, never key material
    assert snapshot(engine, user) == before  # report mode changes nothing
    reported = journal.entries()
    assert sorted((e["DRIFT"], e["REQUEST_ID"]) for e in reported) == kinds(found)
    for entry in reported:
        assert (entry["MESSAGE_ID"], entry["RESULT"], entry["ACTION"], entry["ORIGIN"]) == (
            PINNED_IDS["drift"],
            "reported",
            "report",
            "reconcile",
        )
        assert entry["TARGET_USER"] == user and entry["KEY_FINGERPRINT"].startswith("SHA256:")
    assert b"AAAA" not in b"".join(journal.raw)  # fingerprints, never key material

    repaired = reconcile(engine, repair=True)

    assert kinds(repaired) == kinds(found) and all(d.repaired for d in repaired)
    fixed = journal.entries()[len(reported) :]
    assert sorted((e["DRIFT"], e["REQUEST_ID"]) for e in fixed) == kinds(found)
    assert {(e["MESSAGE_ID"], e["RESULT"], e["ACTION"]) for e in fixed} == {
        (PINNED_IDS["repaired"], "success", "repair")
    }
    after = path.read_bytes()
    assert after.startswith(USER_OWN) and b"not-ours" in after  # what is not the ledger's is left alone
    assert b'principals="root"' not in after and b"no-pty" not in after and after.count(USER_OWN) == 1
    owned = load_ledger(engine.state_dir).keys[user]
    assert {rid: sorted(e.kind for e in entries) for rid, entries in owned.items()} == {
        "rec-1": ["ca"],
        "rec-2": ["key"],
        "rec-3": ["ca"],
        "rec-4": ["ca", "key"],
    }
    assert reconcile(engine, repair=True) == []  # nothing left to find


def test_an_expiry_moved_later_by_hand_is_drift_a_missing_one_is_not(engine: Engine) -> None:
    user = granted_user(engine, "rec-1", "rec-2")
    path = keys_file(user)
    lines = blocks(path.read_bytes())
    later = lines["rec-1"][0].replace(b'expiry-time="2', b'expiry-time="3', 1)  # a thousand years later
    text = path.read_bytes().replace(lines["rec-1"][0], later, 1)
    without = lines["rec-2"][0].split(b" ", 1)[1]  # the line as a grant before maxGrantSeconds wrote it
    path.write_bytes(text.replace(lines["rec-2"][0], without, 1))
    found = reconcile(engine, repair=False)
    assert kinds(found) == [("key_changed", "rec-1")]
    assert "expiry-time" in found[0].detail


def test_a_vanished_account_forgets_its_keys_on_repair(engine: Engine, sandbox: Sandbox) -> None:
    user = granted_user(engine, "rec-1")
    sandbox.userdel(user)
    assert kinds(reconcile(engine, repair=False)) == [("key_missing", "rec-1"), ("key_missing", "rec-1")]
    repaired = reconcile(engine, repair=True)
    assert all(d.repaired for d in repaired if d.kind == "key_missing")
    assert user not in load_ledger(engine.state_dir).keys


def test_hand_edits_of_the_sudo_drop_in_are_reported_then_repaired(
    engine: Engine, journal: JournalSink, tmp_path: Path
) -> None:
    audit_file = tmp_path / "audit.jsonl"
    engine = dataclasses.replace(
        engine,
        config=dataclasses.replace(engine.config, audit_file=audit_file),
        audit_trail=journal.trail(audit_file=audit_file),
    )
    user = granted_user(engine, "rec-1", "rec-2", "rec-3")
    text = DROPIN.read_text()
    text = text.replace(f"# RequestID: rec-1\n{user} ALL=(ALL) NOPASSWD: ALL\n", "")  # removed by hand
    text = text.replace(f"# RequestID: rec-2\n{user} ALL=(ALL)", "# RequestID: rec-2\nroot ALL=(ALL)")  # changed
    text += "# RequestID: rec-9\nnobody ALL=(ALL) NOPASSWD: ALL\n"  # added by hand in the agent's format
    DROPIN.write_text(text)
    assert visudo_ok()
    before = snapshot(engine, user)

    found = reconcile(engine, repair=False)

    assert kinds(found) == [("sudo_changed", "rec-2"), ("sudo_missing", "rec-1"), ("sudo_unknown", "rec-9")]
    assert snapshot(engine, user) == before

    repaired = reconcile(engine, repair=True)

    assert all(d.repaired for d in repaired) and kinds(repaired) == kinds(found)
    assert DROPIN.read_text() == HEADER + f"# RequestID: rec-3\n{user} ALL=(ALL) NOPASSWD: ALL\n"
    assert set(load_ledger(engine.state_dir).sudo) == {"rec-3"}
    assert visudo_ok()
    assert reconcile(engine, repair=True) == []
    # The same six entries in journald and in the audit file: three found, three repaired.
    in_journal = [(e["EVENT"], e["DRIFT"], e["REQUEST_ID"], e["PATH"]) for e in journal.entries()]
    in_file = [json.loads(line) for line in audit_file.read_text().splitlines()]
    assert [(e["event"], e["drift"], e["request_id"], e["path"]) for e in in_file] == in_journal
    assert sorted(in_journal) == sorted(
        (event, kind, rid, str(DROPIN))
        for event in ("drift", "repaired")
        for kind, rid in (("sudo_changed", "rec-2"), ("sudo_missing", "rec-1"), ("sudo_unknown", "rec-9"))
    )


def test_a_drop_in_edited_out_of_shape_is_reported_and_left_to_the_operator(engine: Engine) -> None:
    user = granted_user(engine, "rec-1")
    DROPIN.write_text(DROPIN.read_text() + "Defaults !lecture\n")
    before = snapshot(engine, user)
    found = reconcile(engine, repair=True)
    assert kinds(found) == [("unreadable", None)] and not found[0].repaired
    assert str(DROPIN) in found[0].detail and "by hand" in found[0].detail
    assert snapshot(engine, user) == before
    DROPIN.write_text(HEADER + f"# RequestID: rec-1\n{user} ALL=(ALL) NOPASSWD: ALL\n")


def test_a_dry_run_engine_only_reports(engine: Engine, journal: JournalSink) -> None:
    user = granted_user(engine, "rec-1")
    path = keys_file(user)
    path.write_bytes(path.read_bytes() + b"# RequestID: rec-1\n" + USER_OWN)
    before = snapshot(engine, user)
    found = reconcile(engine.as_dry_run(), repair=True)
    assert kinds(found) == [("foreign_line", "rec-1")] and not found[0].repaired
    assert snapshot(engine, user) == before
    [entry] = journal.entries()
    assert (entry["EVENT"], entry["RESULT"], entry["ACTION"], entry["DRY_RUN"]) == (
        "drift",
        "reported",
        "report",
        "true",
    )


async def inline(work: Callable[[], T]) -> T:
    await trio.lowlevel.checkpoint()
    return work()


async def test_the_loop_reconciles_at_start_up_after_a_reconnect_and_every_interval(
    engine: Engine, autojump_clock: trio.testing.MockClock
) -> None:
    user = granted_user(engine, "rec-1")
    config = dataclasses.replace(engine.config, reconcile="repair", reconcile_interval_seconds=1000)
    tasks = GuardTasks(lambda: (config, engine.state_dir), audit_trail=engine.audit_trail, offload=inline)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        await trio.sleep(1)
        assert tasks.state.reconciles == 1  # at start-up
        tasks.link_changed(True)  # the first connection is not a reconnect
        await trio.sleep(1)
        assert tasks.state.reconciles == 1
        keys_file(user).write_bytes(keys_file(user).read_bytes() + b"# RequestID: rec-1\n" + USER_OWN)
        tasks.link_changed(False)
        tasks.link_changed(True)  # reconnected
        await trio.sleep(1)
        assert tasks.state.reconciles == 2
        assert tasks.state.last_drift is not None and kinds(tasks.state.last_drift) == [("foreign_line", "rec-1")]
        assert keys_file(user).read_bytes().count(USER_OWN) == 1  # repaired
        await trio.sleep(1000)
        assert tasks.state.reconciles == 3  # the interval
        nursery.cancel_scope.cancel()


# --- `p0-ssh-agent status` ----------------------------------------------------------------------------------------

AGENT = Path(sys.executable).with_name("p0-ssh-agent")


def status(config: Path, *flags: str) -> subprocess.CompletedProcess[str]:
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "NO_COLOR": "1"}
    return subprocess.run(
        [str(AGENT), "status", "-c", str(config), *flags], capture_output=True, text=True, env=env, check=False
    )


def test_status_lists_live_grants_with_age_and_expiry_and_the_drift(engine: Engine, tmp_path: Path) -> None:
    user = granted_user(engine, "rec-1")
    keys = tmp_path / "keys"
    subprocess.run([str(AGENT), "keygen", "--key-path", str(keys)], capture_output=True, check=True)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"orgId: org\nhostId: host\nkeyPath: {keys}\nstateDir: {engine.state_dir}\nmaxGrantSeconds: 3600\n"
        f"offlineRevokeAfterSeconds: 86400\nruntimeDir: {tmp_path / 'run'}\n"
    )
    done = status(config, "--json")
    assert done.returncode == 3, done.stdout + done.stderr  # 3: no agent runs here; the setup checks pass
    document = json.loads(done.stdout)
    grants = sorted((g["kind"], g["user"], g["request_id"]) for g in document["grants"])
    assert grants == [("ca", user, "rec-1"), ("key", user, "rec-1"), ("sudo", user, "rec-1")]
    for entry in document["grants"]:
        assert 0 <= entry["age_seconds"] < 600 and 3000 < entry["expires_in_seconds"] <= 3600
    assert document["drift"] == []
    checks = {c["name"]: c for c in document["checks"]}
    assert checks["grants"]["level"] == "ok" and "3 live grant(s)" in checks["grants"]["detail"]
    assert "86400" in checks["offline revoke"]["detail"]

    keys_file(user).write_bytes(keys_file(user).read_bytes() + b"# RequestID: rec-1\n" + USER_OWN)
    before = keys_file(user).read_bytes()
    text = status(config)
    assert text.returncode == 3, text.stdout + text.stderr  # drift is a warning: only the agent check fails
    assert "1 check(s) failed" in text.stdout and "[FAIL] agent" in text.stdout
    assert "live grants (3):" in text.stdout and "rec-1" in text.stdout and "(in 5" in text.stdout
    assert "drift (1):" in text.stdout and "foreign_line" in text.stdout and "[warn] drift" in text.stdout
    assert keys_file(user).read_bytes() == before  # status only looks
    assert "AAAA" not in text.stdout
