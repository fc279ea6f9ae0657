"""The handlers are pure: a request and its facts in, a Plan (host/actions.py) out, nothing on the host touched.

These check the order each handler's module documents, on the plan itself (the sandbox tests check the host):
a key grant is recorded before the file is written and forgotten again if the file is refused as unsafe; a revoke
is forgotten after the file edit; a new account is recorded before useradd; a delete ends sessions, takes the
sudo rules out and stops (locking the account) while processes survive, before userdel and the ledger's forget.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import Action, Command, KeyRequest, SessionRequest, SudoRequest, UserRequest
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_DIR
from p0_ssh_agent.core.sshkeys import parse_public_key
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import (
    Applied,
    ChangeLedger,
    CreateAccount,
    DeleteAccount,
    EditKeyStore,
    EditLegacySudoers,
    EditUserFile,
    EndSessions,
    JoinKeyStoreGroup,
    LockAccount,
    Plan,
    RequireAccount,
    SessionsEnded,
    StopIfSurvivors,
    UnderSudoersLock,
    UnlockAccount,
)
from p0_ssh_agent.host.ledger import Ledger, SudoEntry, copy_ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.authorized_keys import plan_keys
from p0_ssh_agent.provisioning.end_sessions import plan_session
from p0_ssh_agent.provisioning.facts import HostFacts, NotManaged
from p0_ssh_agent.provisioning.sudo_rules import plan_sudo
from p0_ssh_agent.provisioning.users import plan_user

KEY = parse_public_key(
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE alice@example.com", field="key"
)
ALICE = UserRecord("alice", 70001, 70001, "/home/alice", "/bin/bash")
CONFIG = AgentConfig(user_revoke_mode="delete")


def facts(account: UserRecord | None = ALICE, ledger: Ledger | None = None) -> HostFacts:
    if ledger is None:
        ledger = Ledger()
        if account is not None:
            ledger.record_user(account.name, account.uid)
    return HostFacts("alice", account, "alice", ("alice",), 1000, ledger, "host", datetime.now(UTC))


def kinds(plan: Plan | object) -> list[type]:
    assert isinstance(plan, Plan)
    return [type(action) for action in plan.actions]


def test_a_key_grant_is_recorded_ahead_of_the_file_so_a_failed_write_undoes_it() -> None:
    plan = plan_keys(KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.GRANT, "r1", KEY), facts(), CONFIG)
    # Issue 14 item 5: then UnlockAccount (a no-op unless an earlier last revoke locked the account we created),
    # after the file edit, so a failed write leaves a locked account locked.
    assert kinds(plan) == [ChangeLedger, EditUserFile, UnlockAccount]
    assert isinstance(plan, Plan)
    record, edit, _unlock = plan.actions
    assert isinstance(edit, EditUserFile) and edit.create and (edit.home, edit.uid) == ("/home/alice", 70001)
    assert b"# RequestID: r1\n" in edit.transform(b"")
    assert not edit.keep_owner
    # ahead: the applier undoes it if the write fails (tests/test_failed_changes_e2e.py drives that for real).
    assert isinstance(record, ChangeLedger) and record.ahead
    ledger = Ledger()
    record.change(ledger)
    assert [entry.fingerprint for entry in ledger.keys["alice"]["r1"]] == [KEY.fingerprint()]


def test_a_repeated_key_grant_records_nothing_new_ahead_of_the_file() -> None:
    ledger = Ledger()
    ledger.record_user("alice", ALICE.uid)
    ledger.record_key("alice", "r1", "key", KEY.fingerprint())
    plan = plan_keys(
        KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.GRANT, "r1", KEY), facts(ledger=ledger), CONFIG
    )
    assert isinstance(plan, Plan) and isinstance(plan.actions[0], ChangeLedger)
    # Undone on failure means back to the records as read: the earlier grant's record stays.
    after = copy_ledger(ledger)
    plan.actions[0].change(after)
    assert after.keys == ledger.keys


def test_a_key_revoke_is_forgotten_after_the_file_edit() -> None:
    plan = plan_keys(KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.REVOKE, "r1", None), facts(), CONFIG)
    # Issue 14 item 5: alice's last grant goes (the ledger holds none), so the account we created is then locked
    # and its sessions ended, after the ledger's forget.
    # Issue 14 item 6: a created account's pair goes from the key store too, in either keyStore mode.
    assert kinds(plan) == [EditKeyStore, EditUserFile, ChangeLedger, LockAccount, EndSessions]
    assert isinstance(plan, Plan) and isinstance(plan.actions[1], EditUserFile)
    assert not plan.actions[1].create and not plan.actions[1].keep_owner  # our account: modes enforced
    assert isinstance(plan.actions[2], ChangeLedger) and not plan.actions[2].ahead


STORE = dataclasses.replace(CONFIG, key_store="store")


def test_in_store_mode_a_created_accounts_key_goes_to_the_store_and_the_account_into_its_group() -> None:
    plan = plan_keys(KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.GRANT, "r1", KEY), facts(), STORE)
    assert kinds(plan) == [ChangeLedger, EditKeyStore, JoinKeyStoreGroup, UnlockAccount]
    assert isinstance(plan, Plan)
    _record, edit, join, _unlock = plan.actions
    assert isinstance(edit, EditKeyStore) and (edit.key_dir, edit.name, edit.gid) == (KEY_STORE_DIR, "alice", 70001)
    assert edit.create and b"# RequestID: r1\n" in edit.transform(b"")
    assert join == JoinKeyStoreGroup("alice")
    assert plan.result(Applied()).message == f"SSH public key added to {KEY_STORE_DIR}/alice successfully"


def test_in_store_mode_an_adopted_account_keeps_its_home_file() -> None:
    ledger = _alice_with(adopted=True)
    plan = plan_keys(KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.GRANT, "r1", KEY), facts(ledger=ledger), STORE)
    assert kinds(plan) == [ChangeLedger, EditUserFile]
    revoke = plan_keys(
        KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.REVOKE, "r1", None), facts(ledger=ledger), STORE
    )
    assert EditKeyStore not in kinds(revoke)  # the store only ever holds created accounts' keys


def test_a_delete_removes_the_accounts_store_file() -> None:
    plan = plan_user(UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r1"), facts(), CONFIG)
    assert isinstance(plan, Plan)
    removals = [a for a in plan.actions if isinstance(a, EditKeyStore)]
    assert len(removals) == 1 and not removals[0].create and removals[0].transform(b"x") == b""
    assert kinds(plan).index(EditKeyStore) > kinds(plan).index(DeleteAccount)


def _alice_with(*, key_of: tuple[str, ...] = (), sudo_of: tuple[str, ...] = (), adopted: bool = False) -> Ledger:
    ledger = Ledger()
    ledger.record_user("alice", ALICE.uid, adopted=adopted)
    for request_id in key_of:
        ledger.record_key("alice", request_id, "key", KEY.fingerprint())
    for request_id in sudo_of:
        ledger.sudo[request_id] = SudoEntry("alice", None, "2024-01-01T00:00:00Z")
    return ledger


def test_a_key_revoke_that_leaves_another_grant_locks_nothing() -> None:
    # Issue 14 item 5: a live grant is a key or CA line or a sudo rule of any other request.
    for ledger in (_alice_with(key_of=("r1", "r2")), _alice_with(key_of=("r1",), sudo_of=("r2",))):
        plan = plan_keys(
            KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.REVOKE, "r1", None), facts(ledger=ledger), CONFIG
        )
        assert kinds(plan) == [EditKeyStore, EditUserFile, ChangeLedger]


def test_a_last_revoke_locks_only_created_accounts_and_never_in_keep_mode() -> None:
    revoke = KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.REVOKE, "r1", None)
    adopted = plan_keys(revoke, facts(ledger=_alice_with(key_of=("r1",), adopted=True)), CONFIG)
    assert kinds(adopted) == [EditUserFile, ChangeLedger]  # item 1: never lock what the agent did not create
    keep = plan_keys(revoke, facts(ledger=_alice_with(key_of=("r1",))), AgentConfig(user_revoke_mode="keep"))
    assert kinds(keep) == [EditKeyStore, EditUserFile, ChangeLedger]
    lock = plan_keys(revoke, facts(ledger=_alice_with(key_of=("r1",))), AgentConfig(user_revoke_mode="lock"))
    assert kinds(lock) == [EditKeyStore, EditUserFile, ChangeLedger, LockAccount, EndSessions]
    assert isinstance(lock, Plan)
    survived = lock.result(Applied(sessions=SessionsEnded(False, "1 process of alice survived")))
    assert not survived.success and "alice locked and expired, but 1 process of alice survived" in survived.error
    ended = lock.result(Applied(sessions=SessionsEnded(True, "sessions ended")))
    assert ended.success and ended.message.startswith("SSH public key removed") and ended.output


def test_a_sudo_revoke_that_takes_the_last_grant_locks_a_created_account() -> None:
    revoke = SudoRequest(Command.SUDO, "alice", Action.REVOKE, "r2", sudo=False, run_as=None)
    last = plan_sudo(revoke, facts(ledger=_alice_with(sudo_of=("r2",))), CONFIG)
    assert kinds(last) == [UnderSudoersLock, EditLegacySudoers, LockAccount, EndSessions]
    other = plan_sudo(revoke, facts(ledger=_alice_with(key_of=("r1",), sudo_of=("r2",))), CONFIG)
    assert kinds(other) == [UnderSudoersLock, EditLegacySudoers]


def test_a_key_grant_for_a_missing_account_requires_it_in_a_real_run_and_a_dry_run_alike() -> None:
    # Issue 14 item 7: a dry run refuses what a real run refuses. This plan used to carry a note for a dry run
    # ("alice does not exist yet (provisionUser creates it)") and the describing applier planned on; now both
    # appliers stop at RequireAccount with the same answer, and the plan's own answer is that refusal too.
    plan = plan_keys(KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.GRANT, "r1", KEY), facts(None), CONFIG)
    assert kinds(plan) == [RequireAccount]
    assert isinstance(plan, Plan) and isinstance(plan.actions[0], RequireAccount)
    assert plan.actions[0].missing.error == "user alice not found: user: unknown user alice"
    assert plan.result(Applied(stopped=plan.actions[0].missing)).success is False
    assert plan.result(Applied()) == plan.actions[0].missing


def test_a_new_account_is_recorded_before_useradd_and_forgotten_if_it_fails() -> None:
    plan = plan_user(UserRequest(Command.PROVISION_USER, "alice", Action.GRANT, "r1"), facts(None), CONFIG, uid=70002)
    assert kinds(plan) == [ChangeLedger, CreateAccount]
    assert isinstance(plan, Plan) and isinstance(plan.actions[1], CreateAccount)
    assert (plan.actions[1].name, plan.actions[1].uid) == ("alice", 70002)
    assert isinstance(plan.actions[0], ChangeLedger) and plan.actions[0].ahead  # undone if no account is made


def test_a_delete_ends_sessions_and_removes_sudo_rules_before_userdel_and_stops_on_survivors() -> None:
    plan = plan_user(UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r1"), facts(), CONFIG)
    assert kinds(plan) == [EndSessions, UnderSudoersLock, StopIfSurvivors, DeleteAccount, EditKeyStore, ChangeLedger]
    assert isinstance(plan, Plan) and isinstance(plan.actions[2], StopIfSurvivors)
    assert [type(action) for action in plan.actions[2].then] == [LockAccount]
    survived = plan.result(Applied(sessions=SessionsEnded(False, "1 processes survived"), halted=True))
    assert (survived.success, survived.error) == (False, "User alice locked, not deleted: 1 processes survived")
    assert plan.result(Applied(sessions=SessionsEnded(True, "ended"))).message == "User alice deleted; ended"


def test_a_revoke_for_a_deleted_account_still_in_the_ledger_finishes_the_delete() -> None:
    """A delete killed after userdel and before the ledger forgot the user (tests/test_crash_points.py): the retried
    revoke removes the name's sudo rules and its record, so a later account of that name is never taken for ours."""
    request = UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r1")
    plan = plan_user(request, facts(None, _alice_with(sudo_of=("r2",))), CONFIG)
    assert kinds(plan) == [UnderSudoersLock, ChangeLedger]
    assert isinstance(plan, Plan) and plan.result(Applied()).message.endswith("(user alice does not exist)")
    # Nothing of the name in the ledger: nothing to finish, the answer alone.
    assert not isinstance(plan_user(request, facts(None, Ledger()), CONFIG), Plan)


def test_a_lock_revoke_locks_then_ends_sessions() -> None:
    config = dataclasses.replace(CONFIG, user_revoke_mode="lock")
    plan = plan_user(UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r1"), facts(), config)
    assert kinds(plan) == [LockAccount, EndSessions]


def test_a_session_revoke_answers_from_what_ending_the_sessions_came_to() -> None:
    plan = plan_session(SessionRequest(Command.SESSION, "alice", Action.REVOKE, None), facts(), CONFIG)
    assert kinds(plan) == [EndSessions]
    assert isinstance(plan, Plan)
    assert plan.result(Applied(sessions=SessionsEnded(False, "PIDs 7"))).error == "PIDs 7"
    described = plan.result(Applied(sessions=SessionsEnded(True, "would end 2 processes", described=True)))
    assert described.message == "DRY-RUN: Would execute provisionSession for user alice"


def test_only_an_account_the_agent_created_is_unlocked_locked_or_deleted() -> None:
    """Issue 14 item 1: an adopted account (adoptUsers, or in the ledger as adopted) gets no account action at all;
    one that merely has the Go agent's shape (UID = GID in its range, a group of its name) is not the agent's."""
    created = plan_user(UserRequest(Command.PROVISION_USER, "alice", Action.GRANT, "r1"), facts(), CONFIG)
    assert kinds(created) == [UnlockAccount]
    held = Ledger()
    held.record_user("alice", ALICE.uid, adopted=True)
    listed = dataclasses.replace(CONFIG, adopt_users=("alice",))
    for config, ledger in ((CONFIG, held), (listed, held), (listed, Ledger())):
        grant = plan_user(
            UserRequest(Command.PROVISION_USER, "alice", Action.GRANT, "r1"), facts(ledger=ledger), config
        )
        assert UnlockAccount not in kinds(grant)  # at most the adoption's record
        for mode in ("lock", "delete"):
            revoking = dataclasses.replace(config, user_revoke_mode=mode)
            request = UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r1")
            revoke = plan_user(request, facts(ledger=ledger), revoking)
            assert isinstance(revoke, CommandResult) and revoke.success and "adopted" in revoke.message, revoke
    lookalike = plan_user(
        UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r1"), facts(ledger=Ledger()), CONFIG
    )
    assert isinstance(lookalike, CommandResult) and "not created by p0-ssh-agent" in lookalike.message
    with pytest.raises(NotManaged, match="p0-ssh-agent adopt --list"):
        plan_user(UserRequest(Command.PROVISION_USER, "alice", Action.GRANT, "r1"), facts(ledger=Ledger()), CONFIG)
