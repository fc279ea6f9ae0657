"""Grant expiry on the host: OpenSSH's expiry-time= in our lines, the version check, live grants, and (in the
namespace sandbox) the sweep task with an autojump clock, the start-up sweep, and a real sshd refusing an expired key.

Run the sandbox tests with `tests/sandbox/enter .venv/bin/pytest -q tests/test_expiry.py`.
"""

from __future__ import annotations

import dataclasses
import os
import pwd
import subprocess
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import TypeVar

import pytest
import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import openssh_expiry
from p0_ssh_agent.core.authorized_keys_format import add_block, blocks, ca_line, key_line, parse_own_line, remove_block
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.core.sshkeys import parse_public_key
from p0_ssh_agent.host import account_changes, openssh
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import Ledger, load_ledger, save_ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.expiry import live_grants, next_expiry, offline_user_mode, sweep
from p0_ssh_agent.provisioning.pipeline import run_change
from p0_ssh_agent.runtime.periodic import MAX_SLEEP_SECONDS, GuardTasks
from sandbox.fixtures import Sandbox, Sshd, make_keypair, unique_user_name
from test_audit import PINNED_IDS, JournalSink, journal_sink

SSH_KEYGEN = "/usr/bin/ssh-keygen"
DROPIN = Path("/etc/sudoers.d/p0-ssh-agent")
T = TypeVar("T")
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc b@test"


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalSink]:
    """A journald socket of the test's own: the audit entries the sweep and the offline revoke send."""
    yield from journal_sink(tmp_path)


# --- the OpenSSH version and the stamps -------------------------------------------------------------------------


def test_version_parsing_and_the_form_each_version_reads() -> None:
    assert openssh_expiry.parse_openssh_version("OpenSSH_9.2p1 Debian-2+deb12u10, OpenSSL 3.0.19") == (9, 2)
    assert openssh_expiry.parse_openssh_version("unknown option -- V\nOpenSSH_7.4p1, OpenSSL 1.0.2k-fips") == (7, 4)
    assert openssh_expiry.parse_openssh_version("Dropbear v2022.83") is None
    assert openssh_expiry.support_for(None) == "none"
    assert openssh_expiry.support_for((7, 6)) == "none"
    assert openssh_expiry.support_for((7, 7)) == "local"
    assert openssh_expiry.support_for((9, 0)) == "local"
    assert openssh_expiry.support_for((9, 1)) == "utc"
    assert openssh_expiry.support_for((10, 0)) == "utc"


def test_the_local_version_is_what_ssh_says() -> None:
    done = subprocess.run(["/usr/bin/ssh", "-V"], capture_output=True, text=True, check=True)
    assert openssh.openssh_version() == openssh_expiry.parse_openssh_version(done.stderr)
    assert openssh.openssh_version() is not None


def test_stamps_name_the_instant_in_both_forms() -> None:
    when = datetime(2031, 2, 3, 4, 5, 6, 700000, tzinfo=UTC)
    utc = openssh_expiry.expiry_stamp(when, "utc")
    assert utc == "20310203040506Z"
    assert openssh_expiry.stamp_time(utc) == when.replace(microsecond=0)
    local = openssh_expiry.expiry_stamp(when, "local")
    assert local is not None and not local.endswith("Z")
    assert openssh_expiry.stamp_time(local) == when.replace(microsecond=0)
    assert openssh_expiry.expiry_stamp(when, "none") is None
    assert openssh.grant_stamp("2031-02-03T04:05:06Z", None) is None  # no lifetime: no option, no probe
    assert openssh_expiry.grant_stamp("2031-02-03T04:05:06Z", 60, "utc") == "20310203040606Z"
    assert openssh_expiry.grant_stamp("2031-02-03T04:05:06Z", 60, "none") is None
    assert openssh_expiry.grant_stamp("2031-02-03T04:05:06Z", None, "utc") is None
    probed = openssh_expiry.grant_stamp("2031-02-03T04:05:06Z", 60, openssh.expiry_support())
    assert openssh.grant_stamp("2031-02-03T04:05:06Z", 60) == probed  # the host's form, the core's arithmetic
    # An unreadable ledger time counts as long ago: the line is born expired rather than living forever.
    assert openssh_expiry.expires_at("yesterday", 60) == datetime.fromtimestamp(60, UTC)


def test_lines_with_expiry_stay_pairs_and_keep_their_fingerprint(tmp_path: Path) -> None:
    key = parse_public_key(KEY_A, field="publicKey")
    ca = parse_public_key(KEY_B, field="caPublicKey")
    user_line = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE mine"
    content = add_block(user_line + b"\n", "r1", key_line(key, expiry="20310203040506Z"))
    content = add_block(content, "r1", ca_line("alice", ca, expiry="20310203040506Z"))
    content = add_block(content, "r2", key_line(ca))
    assert add_block(content, "r1", key_line(key, expiry="20310203040506Z")) == content  # the same grant again
    found = blocks(content)
    assert [parse_own_line(line) is not None for line in found["r1"]] == [True, True]
    own_key, own_ca = (parse_own_line(line) for line in found["r1"])
    assert (
        own_key is not None and own_key.expiry == "20310203040506Z" and own_key.key.fingerprint() == key.fingerprint()
    )
    assert own_ca is not None and own_ca.is_ca and own_ca.principal == "alice" and own_ca.expiry == "20310203040506Z"
    # ssh-keygen reads the option and the key: the ledger's fingerprint is the file's.
    path = tmp_path / "authorized_keys"
    path.write_bytes(content)
    listed = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(path)], capture_output=True, text=True, check=False
    )
    assert listed.returncode == 0, listed.stderr
    assert [line.split()[1] for line in listed.stdout.splitlines()] == [
        key.fingerprint(),
        key.fingerprint(),
        ca.fingerprint(),
        ca.fingerprint(),
    ]
    # Only the CA pair of r1 goes; then all of r1; the user's line and r2 stay byte for byte.
    only_ca = remove_block(content, "r1", select=lambda line: line.startswith(b"cert-authority"))
    assert blocks(only_ca)["r1"] == [key_line(key, expiry="20310203040506Z").encode()]
    assert remove_block(content, "r1") == add_block(user_line + b"\n", "r2", key_line(ca))


def test_parse_own_line_refuses_what_we_never_write() -> None:
    key = parse_public_key(KEY_A, field="publicKey")
    assert parse_own_line(key_line(key).encode()) is not None
    for line in (
        f'command="sh" {key.line()}',
        f'expiry-time="20310203040506Z",command="sh" {key.line()}',
        f'cert-authority,principals="root,alice" {key.line()}',
        f"{key.line()} \x00",
        "ssh-ed25519 not-base64",
    ):
        assert parse_own_line(line.encode()) is None, line


def test_live_grants_and_the_next_expiry() -> None:
    ledger = Ledger()
    ledger.record_key("alice", "r1", "key", "SHA256:a", now="2031-01-01T00:00:00Z")
    ledger.record_key("alice", "r1", "ca", "SHA256:c", now="2031-01-01T00:10:00Z")
    ledger.record_sudo("r2", "bob", None, now="2031-01-01T00:05:00Z")
    grants = live_grants(ledger, 3600)
    assert [(g.kind, g.user, g.request_id) for g in grants] == [
        ("key", "alice", "r1"),
        ("sudo", "bob", "r2"),
        ("ca", "alice", "r1"),
    ]
    assert grants[1].expires_at == datetime(2031, 1, 1, 1, 5, tzinfo=UTC)
    now = datetime(2031, 1, 1, 1, 2, tzinfo=UTC)
    assert [g.expired(now) for g in grants] == [True, False, False]
    assert next_expiry(grants, now) == datetime(2031, 1, 1, 1, 5, tzinfo=UTC)
    assert grants[0].age(now) == timedelta(hours=1, minutes=2)
    assert all(g.expires_at is None for g in live_grants(ledger, None))
    assert next_expiry(live_grants(ledger, None), now) is None


# --- in the sandbox: the handlers for real ----------------------------------------------------------------------


def request(engine: Engine, command: str, action: str = "grant", **fields: object) -> CommandResult:
    data: dict[str, object] = {"command": command, "action": action, "requestId": "exp-1", **fields}
    result = run_change(engine, parse_change(command, data)).result
    assert result.success, result.error
    return result


def make_engine(state: Path, journal: JournalSink | None = None, **config: object) -> Engine:
    """An engine whose audit entries go to `journal` (none without one)."""
    state.mkdir(mode=0o700, exist_ok=True)
    trail = journal.trail() if journal is not None else AuditTrail.off()
    return Engine.on_host(AgentConfig(state_dir=state, **config), state, audit_trail=trail)  # type: ignore[arg-type]


def authorized_keys(user: str) -> bytes:
    path = Path(pwd.getpwnam(user).pw_dir) / ".ssh" / "authorized_keys"
    return path.read_bytes() if path.exists() else b""


def grant_everything(engine: Engine, user: str, request_id: str = "exp-1") -> None:
    request(engine, "provisionUser", userName=user, requestId=request_id)
    request(engine, "provisionAuthorizedKeys", userName=user, publicKey=KEY_A, requestId=request_id)
    request(engine, "provisionCAKeys", userName=user, caPublicKey=KEY_B, requestId=request_id)
    request(engine, "provisionSudo", userName=user, sudo=True, requestId=request_id)


def virtual_wall_clock() -> Callable[[], datetime]:
    """Wall time that moves with trio's (autojump) clock: the grants were made at the real `base`."""
    base, start = datetime.now(UTC), trio.current_time()
    return lambda: base + timedelta(seconds=trio.current_time() - start)


async def inline(work: Callable[[], T]) -> T:
    """Blocking work on the event loop itself: with the autojump clock, virtual time must not run while it works."""
    await trio.lowlevel.checkpoint()
    return work()


def guard_tasks(engine: Engine) -> GuardTasks:
    settings = lambda: (engine.config, engine.state_dir)  # noqa: E731
    return GuardTasks(settings, audit_trail=engine.audit_trail, now=virtual_wall_clock(), offload=inline)


async def wait_for(condition: Callable[[], bool]) -> None:
    with trio.fail_after(36000):  # virtual seconds: a broken loop fails instead of hanging
        while not condition():
            await trio.sleep(1)


def dropin() -> bytes:
    return DROPIN.read_bytes() if DROPIN.exists() else b""


def grants_in(engine: Engine) -> int:
    return len(live_grants(load_ledger(engine.state_dir), None))


@pytest.mark.sandbox
async def test_the_sweep_task_revokes_at_expiry_with_no_backend(
    sandbox: Sandbox, tmp_path: Path, autojump_clock: trio.testing.MockClock, journal: JournalSink
) -> None:
    engine = make_engine(tmp_path / "state", journal, max_grant_seconds=3600)
    user = unique_user_name()
    grant_everything(engine, user)
    assert b'expiry-time="' in authorized_keys(user)
    assert b"exp-1" in dropin()
    tasks = guard_tasks(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)  # no tunnel anywhere: the backend is down for this whole test
        await trio.sleep(3500)
        assert grants_in(engine) == 3 and b"exp-1" in authorized_keys(user)  # key, CA line, sudo: none early
        await wait_for(lambda: grants_in(engine) == 0)
        nursery.cancel_scope.cancel()
    assert b"exp-1" not in authorized_keys(user)
    assert b"exp-1" not in dropin()
    assert pwd.getpwnam(user)  # grants expire; the account is the backend's (provisionUser revoke) to end
    assert tasks.state.last_sweep is not None and len(tasks.state.last_sweep.revoked) == 3
    # Each expired grant is one audit entry under the grant's own request id, keys named by fingerprint only.
    entries = journal.entries()
    assert sorted(e["COMMAND"] for e in entries) == ["provisionAuthorizedKeys", "provisionCAKeys", "provisionSudo"]
    for entry in entries:
        assert (entry["MESSAGE_ID"], entry["ORIGIN"], entry["ACTION"], entry["RESULT"]) == (
            PINNED_IDS["expired"],
            "expiry",
            "revoke",
            "success",
        )
        assert (entry["REQUEST_ID"], entry["TARGET_USER"], entry["DRY_RUN"]) == ("exp-1", user, "false")
    fingerprints = {e["COMMAND"]: e.get("KEY_FINGERPRINT") for e in entries}
    assert fingerprints["provisionAuthorizedKeys"] == parse_public_key(KEY_A, field="k").fingerprint()
    assert fingerprints["provisionCAKeys"] == parse_public_key(KEY_B, field="k").fingerprint()
    assert KEY_A.split()[1].encode() not in b"".join(journal.raw)
    # It slept until the expiry instead of polling: the start-up sweep, one per MAX_SLEEP_SECONDS (the guard
    # against a stepped wall clock), and the one at the expiry.
    assert tasks.state.sweeps <= 3600 / MAX_SLEEP_SECONDS + 2


@pytest.mark.sandbox
async def test_grants_that_expired_while_the_agent_was_down_go_at_start_up(
    sandbox: Sandbox, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    engine = make_engine(tmp_path / "state", max_grant_seconds=3600)
    user = unique_user_name()
    grant_everything(engine, user, "old-1")
    grant_everything(engine, user, "new-1")
    ledger = load_ledger(engine.state_dir)  # the agent was down for two hours after granting old-1
    ledger.keys[user]["old-1"] = [
        dataclasses.replace(e, granted_at="2001-01-01T00:00:00Z") for e in ledger.keys[user]["old-1"]
    ]
    ledger.sudo["old-1"] = dataclasses.replace(ledger.sudo["old-1"], granted_at="2001-01-01T00:00:00Z")
    save_ledger(ledger, engine.state_dir)
    tasks = guard_tasks(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        await wait_for(lambda: tasks.state.sweeps >= 1)
        nursery.cancel_scope.cancel()
    left = load_ledger(engine.state_dir)
    assert set(left.keys[user]) == {"new-1"} and set(left.sudo) == {"new-1"}
    assert set(blocks(authorized_keys(user))) == {"new-1"}
    assert b"old-1" not in dropin() and b"new-1" in dropin()


@pytest.mark.sandbox
def test_a_failed_revoke_is_reported_and_the_rest_still_goes(
    sandbox: Sandbox, tmp_path: Path, journal: JournalSink
) -> None:
    engine = make_engine(tmp_path / "state", journal, max_grant_seconds=60)
    user = unique_user_name()
    grant_everything(engine, user)
    ssh_dir = Path(pwd.getpwnam(user).pw_dir) / ".ssh"
    os.chown(ssh_dir / "authorized_keys", 4242, 4242)  # a foreign owner: the agent refuses to touch the file
    report = sweep(engine, datetime.now(UTC) + timedelta(seconds=120))
    assert {g.kind for g in report.revoked} == {"sudo"}
    assert {g.kind for g, _error in report.failed} == {"key", "ca"}
    assert all("authorized_keys" in error for _grant, error in report.failed)
    assert grants_in(engine) == 2  # the key lines stay in the ledger: the next sweep retries them
    audited = sorted((e["MESSAGE_ID"], e["COMMAND"], e["RESULT"], e["PRIORITY"]) for e in journal.entries())
    assert audited == [
        (PINNED_IDS["failed"], "provisionAuthorizedKeys", "failure", "4"),
        (PINNED_IDS["failed"], "provisionCAKeys", "failure", "4"),
        (PINNED_IDS["expired"], "provisionSudo", "success", "6"),
    ]
    assert all("authorized_keys" in e["ERROR"] for e in journal.entries() if e["RESULT"] == "failure")


@pytest.mark.sandbox
def test_sshd_refuses_the_key_once_its_expiry_time_passed(sandbox: Sandbox, sshd: Sshd, tmp_path: Path) -> None:
    engine = make_engine(tmp_path / "state", max_grant_seconds=4)
    user = unique_user_name()
    private, public = make_keypair(tmp_path)
    request(engine, "provisionUser", userName=user)
    request(engine, "provisionAuthorizedKeys", userName=user, publicKey=public)
    line = blocks(authorized_keys(user))["exp-1"][0]
    own = parse_own_line(line)
    assert own is not None and own.expiry is not None
    expiry = openssh_expiry.stamp_time(own.expiry)
    if datetime.now(UTC) < expiry - timedelta(seconds=1):  # a slow machine may already be past it
        done = sshd.ssh(user, private, "id", "-un")
        assert done.returncode == 0 and done.stdout.strip() == user, done.stderr + sshd.log.read_text()[-2000:]
    time.sleep(max(0.0, (expiry - datetime.now(UTC)).total_seconds()) + 1.5)
    log_before = len(sshd.log.read_text())
    refused = sshd.ssh(user, private, "true")
    assert refused.returncode == 255
    assert authorized_keys(user).count(line) == 1  # no sweep ran: sshd itself refused the expired key
    assert "Refused by key options" in sshd.log.read_text()[log_before:]  # the expiry-time= option, nothing else


# --- offline revoke ---------------------------------------------------------------------------------------------


def test_an_outage_never_deletes_accounts() -> None:
    assert [offline_user_mode(mode) for mode in ("keep", "lock", "delete")] == ["keep", "lock", "lock"]


@pytest.mark.sandbox
async def test_offline_revoke_fails_closed_once_the_backend_was_gone_that_long(
    sandbox: Sandbox, tmp_path: Path, autojump_clock: trio.testing.MockClock, journal: JournalSink
) -> None:
    engine = make_engine(tmp_path / "state", journal, offline_revoke_after_seconds=600, user_revoke_mode="delete")
    user = unique_user_name()
    grant_everything(engine, user)
    tasks = guard_tasks(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        await trio.sleep(100)
        tasks.link_changed(True)  # setClientId succeeded
        await trio.sleep(5000)  # connected all along: the threshold counts from a disconnect, not from setClientId
        assert tasks.state.offline_revokes == 0 and grants_in(engine) == 3
        tasks.link_changed(False)
        down = trio.current_time()
        await trio.sleep(590)
        assert tasks.state.offline_revokes == 0 and grants_in(engine) == 3
        await wait_for(lambda: tasks.state.offline_revokes == 1)
        assert trio.current_time() - down >= 600
        await trio.sleep(5000)
        assert tasks.state.offline_revokes == 1  # once per outage
        nursery.cancel_scope.cancel()
    assert grants_in(engine) == 0
    assert b"exp-1" not in authorized_keys(user) and b"exp-1" not in dropin()
    assert pwd.getpwnam(user) and account_changes.is_locked(
        user
    )  # userRevokeMode delete: locked, never deleted offline
    report = tasks.state.last_offline_revoke
    assert report is not None and not report.failed
    # One revoke entry per grant under its own request id, then the run's summary.
    entries = journal.entries()
    assert all(e["ORIGIN"] == "offline-revoke" for e in entries)
    assert sorted((e["EVENT"], e["COMMAND"], e["REQUEST_ID"]) for e in entries) == [
        ("revoke", "provisionAuthorizedKeys", "exp-1"),
        ("revoke", "provisionCAKeys", "exp-1"),
        ("revoke", "provisionSudo", "exp-1"),
        ("revoke", "provisionUser", "revoke-all"),
        ("revoke-all", "revoke-all", "revoke-all"),
    ]
    assert entries[-1]["MESSAGE_ID"] == PINNED_IDS["revoke-all"] and entries[-1]["RESULT"] == "success"


@pytest.mark.sandbox
async def test_offline_revoke_counts_from_start_up_when_the_backend_never_answered(
    sandbox: Sandbox, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    engine = make_engine(tmp_path / "state", offline_revoke_after_seconds=300, user_revoke_mode="keep")
    user = unique_user_name()
    grant_everything(engine, user)
    tasks = guard_tasks(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        await trio.sleep(290)
        assert grants_in(engine) == 3
        await wait_for(lambda: tasks.state.offline_revokes == 1)
        tasks.link_changed(True)  # back: armed again, but nothing to revoke until the next outage
        await trio.sleep(1000)
        nursery.cancel_scope.cancel()
    assert tasks.state.offline_revokes == 1 and grants_in(engine) == 0
    assert not account_changes.is_locked(user)  # keep: the account is left as it is


@pytest.mark.sandbox
async def test_without_offline_revoke_an_outage_changes_nothing(
    sandbox: Sandbox, tmp_path: Path, autojump_clock: trio.testing.MockClock
) -> None:
    engine = make_engine(tmp_path / "state")  # the default: off
    user = unique_user_name()
    grant_everything(engine, user)
    tasks = guard_tasks(engine)
    async with trio.open_nursery() as nursery:
        await nursery.start(tasks.run)
        await trio.sleep(7 * 24 * 3600)
        nursery.cancel_scope.cancel()
    assert tasks.state.offline_revokes == 0 and tasks.state.sweeps == 0 and grants_in(engine) == 3
