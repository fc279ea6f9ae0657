"""The request line reads the ledger once per request (issue 13): the policy decides on the snapshot the change acts
on. A LedgerStore subclass counts the reads of a real grant in the namespace sandbox (real useradd, real files), and
can change the user's record right after the first read, as a concurrent commit would."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.local_policy import Decision, Facts, LocalPolicy
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import Ledger, LedgerStore, load_ledger
from p0_ssh_agent.host.policy_file import builtin_policy
from p0_ssh_agent.provisioning.engine import LOCK_SUBDIR, Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"


@dataclass(frozen=True)
class CountingStore(LedgerStore):
    """Counts the reads a request makes (not the re-read inside commit(), which is the store's own business)."""

    reads: list[str] = field(default_factory=list)
    committing: list[bool] = field(default_factory=list)
    # Run once, right after the next read_user (then cleared): a change that lands between the read and the lock.
    after_read: list[Callable[[], None]] = field(default_factory=list)

    def read_all(self) -> Ledger:
        if not self.committing:
            self.reads.append("all")
        return super().read_all()

    def read_user(self, name: str) -> Ledger:
        self.reads.append(name)
        self.committing.append(True)  # read_user reads through read_all: count it once
        try:
            return super().read_user(name)
        finally:
            self.committing.pop()
            while self.after_read:
                self.after_read.pop()()

    def commit(self, before: Ledger, after: Ledger) -> None:
        self.committing.append(True)
        try:
            super().commit(before, after)
        finally:
            self.committing.pop()


@dataclass(frozen=True)
class CountingPolicy(LocalPolicy):
    """The built-in policy, counting its evaluations (one per decision)."""

    evaluated: list[str] = field(default_factory=list)

    def evaluate(self, facts: Facts) -> Decision:
        self.evaluated.append(facts.user)
        return super().evaluate(facts)


def _counting_policy() -> CountingPolicy:
    policy = builtin_policy()
    return CountingPolicy(**{f.name: getattr(policy, f.name) for f in dataclasses.fields(policy)})


def _engine(tmp_path: Path) -> tuple[Engine, CountingStore, Path]:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    store = CountingStore(state, str(state / LOCK_SUBDIR))
    engine = Engine.on_host(AgentConfig(state_dir=state), state, audit_trail=AuditTrail.off(), ledger_store=store)
    return engine, store, state


def test_a_key_grant_and_its_revoke_read_the_ledger_once(sandbox: Sandbox, tmp_path: Path) -> None:
    engine, store, state = _engine(tmp_path)
    user = unique_user_name()
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "once-1", "publicKey": KEY}
    assert run_change(engine, parse_change("provisionUser", data)).result.success
    store.reads.clear()

    granted = run_change(engine, parse_change("provisionAuthorizedKeys", data))
    assert granted.result.success, granted.result.error
    assert store.reads == [user], "the ownership rule and the handler share one read"
    assert "once-1" in load_ledger(state).keys[user]

    store.reads.clear()
    revoked = run_change(engine, parse_change("provisionAuthorizedKeys", {**data, "action": "revoke"}))
    assert revoked.result.success, revoked.result.error
    assert store.reads == [user]
    assert user not in load_ledger(state).keys


def test_a_judged_grant_reads_the_ledger_once(sandbox: Sandbox, tmp_path: Path) -> None:
    """The policy judges lock-free (a refusal leaves no trace, not even a lock file); under the user's lock the
    snapshot is confirmed by NSS and a stat, not read again: one read, where there were two (and three before)."""
    engine, store, state = _engine(tmp_path)
    user = unique_user_name()
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "once-2", "publicKey": KEY}
    assert run_change(engine, parse_change("provisionUser", data), builtin_policy()).result.success
    store.reads.clear()
    policy = _counting_policy()

    outcome = run_change(engine, parse_change("provisionAuthorizedKeys", data), policy)

    assert outcome.result.success, outcome.result.error
    assert store.reads == [user]
    assert policy.evaluated == [user]
    assert "once-2" in load_ledger(state).keys[user]


def test_a_record_changed_before_the_lock_is_read_and_judged_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """A commit for the user between the lock-free read and the lock (another request's revoke of a sudo rule, a
    sweep): the facts are read and judged again, and the change acts on the new snapshot; acting on the old one
    would have written the user's record without the concurrent key."""
    engine, store, state = _engine(tmp_path)
    user = unique_user_name()
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "once-3", "publicKey": KEY}
    assert run_change(engine, parse_change("provisionUser", data), builtin_policy()).result.success
    other = LedgerStore(state, str(state / LOCK_SUBDIR))

    def concurrent_commit() -> None:
        before = other.read_user(user)
        after = other.read_user(user)
        after.record_key(user, "concurrent-1", "key", "SHA256:concurrent")
        other.commit(before, after)

    store.reads.clear()
    store.after_read.append(concurrent_commit)
    policy = _counting_policy()

    outcome = run_change(engine, parse_change("provisionAuthorizedKeys", data), policy)

    assert outcome.result.success, outcome.result.error
    assert store.reads == [user, user], "read again under the lock"
    assert policy.evaluated == [user, user], "and judged again"
    keys = load_ledger(state).keys[user]
    assert set(keys) == {"concurrent-1", "once-3"}, "the change acted on the new snapshot"


def test_an_account_changed_before_the_lock_is_judged_again(
    sandbox: Sandbox, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The account facts are looked up again under the lock (NSS, cheap): if they changed (here uid_min, as an
    edit of /etc/login.defs would), the facts are gathered and judged again."""
    engine, store, _state = _engine(tmp_path)
    user = unique_user_name()
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "once-4", "publicKey": KEY}
    assert run_change(engine, parse_change("provisionUser", data), builtin_policy()).result.success
    uid_min = accounts.uid_min()
    store.reads.clear()
    store.after_read.append(lambda: monkeypatch.setattr(accounts, "uid_min", lambda: uid_min + 1))
    policy = _counting_policy()

    outcome = run_change(engine, parse_change("provisionAuthorizedKeys", data), policy)

    assert outcome.result.success, outcome.result.error
    assert store.reads == [user, user]
    assert policy.evaluated == [user, user]


def test_a_new_host_record_alone_is_not_judged_again(sandbox: Sandbox, tmp_path: Path) -> None:
    """Another user's creation between the lock-free read and the accounts lock raises the UID high-water mark in
    host.json, and changes nothing the decision read: the grant is not read and judged again (every creation but
    the first of a parallel batch met this, and logged facts_changed_before_lock), but the new account still gets
    a UID above the new mark, never one a deleted account had."""
    engine, store, state = _engine(tmp_path)
    user, other_user = unique_user_name(), unique_user_name()
    other = LedgerStore(state, str(state / LOCK_SUBDIR))
    mark = 70000

    def concurrent_creation() -> None:
        before = other.read_user(other_user)
        after = other.read_user(other_user)
        after.record_user(other_user, mark)  # as a creation's intent, recorded ahead of its useradd
        other.commit(before, after)

    store.after_read.append(concurrent_creation)
    policy = _counting_policy()
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "once-5"}

    outcome = run_change(engine, parse_change("provisionUser", data), policy)

    assert outcome.result.success, outcome.result.error
    assert store.reads == [user], "not read again under the lock"
    assert policy.evaluated == [user], "nor judged again"
    account = accounts.lookup_user(user)
    assert account is not None and account.uid > mark, "the UID comes after the mark raised meanwhile"
    ledger = load_ledger(state)
    assert ledger.users[user].uid == account.uid and ledger.uid_high_water == account.uid
