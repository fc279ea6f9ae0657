"""The request line reads the ledger once per request (issue 13): the policy decides on the snapshot the change acts
on. A LedgerStore subclass counts the reads of a real grant in the namespace sandbox (real useradd, real files)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
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

    def commit(self, before: Ledger, after: Ledger) -> None:
        self.committing.append(True)
        try:
            super().commit(before, after)
        finally:
            self.committing.pop()


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


def test_a_judged_grant_reads_once_to_judge_and_once_under_the_lock(sandbox: Sandbox, tmp_path: Path) -> None:
    """The policy judges lock-free first (a refusal leaves no trace, not even a lock file), then again on the facts
    read under the user's lock, which the change acts on: two reads, never the three of before."""
    engine, store, _state = _engine(tmp_path)
    user = unique_user_name()
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "once-2", "publicKey": KEY}
    assert run_change(engine, parse_change("provisionUser", data), builtin_policy()).result.success
    store.reads.clear()

    outcome = run_change(engine, parse_change("provisionAuthorizedKeys", data), builtin_policy())

    assert outcome.result.success, outcome.result.error
    assert store.reads == [user, user]
