"""The host's applier: runs a Plan's actions (host/actions.py) in order, for real.

Each action keeps the crash-safe order and the rollbacks its handler relies on:

* ChangeLedger commits at once (the handlers put a grant's record before the file edit and a revoke's after it,
  so a crash in between leaves the ledger claiming a little more than the host holds, never less);
* a change recorded ahead of its effect (ChangeLedger.ahead: a grant's record, an adoption, a new account's intent)
  is undone, one commit back to the records as they were before it, when the next effect fails for any reason
  (an unsafe path, ENXIO, a full disk, visudo rejecting, a failed useradd, a full ledger) and left nothing behind,
  or when the plan stops before it: a failure the agent sees leaves the ledger as it was. An effect that failed
  after changing the host (a file renamed but not synced: EditNotDurable; a useradd that left an account) keeps
  its record. Only a crash (kill -9) between record and effect leaves a record of more than the host holds;
* UnderSudoersLock reads the drop-in under the sudoers lock and runs what its content makes (InstallSudoers:
  visudo before the rename and on the whole tree after it, the old file put back on failure; then the ledger's
  mirror of it);
* CreateAccount runs create_user (which rolls back a failed useradd); DeleteLeftoverGroup, delete_leftover_group;
* DeleteAccount retries once after ending the user's sessions again when userdel finds it still logged in;
* EndSessions keeps what it came to; StopIfSurvivors stops the plan when processes survived.

Blocking: the pipeline calls it in a worker thread, holding the user's lock (or the accounts lock).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import ClassVar, assert_never

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.core.sudoers import LEGACY_FILE
from p0_ssh_agent.host import account_changes, accounts, key_store_files, locks, sessions
from p0_ssh_agent.host.actions import (
    Applied,
    ChangeLedger,
    CreateAccount,
    DeleteAccount,
    DeleteLeftoverGroup,
    EditKeyStore,
    EditLegacySudoers,
    EditUserFile,
    EndSessions,
    HostAction,
    InstallSudoers,
    JoinKeyStoreGroup,
    LeaveKeyStoreGroup,
    LockAccount,
    Plan,
    RequireAccount,
    RequireSudo,
    SessionsEnded,
    StopIfSurvivors,
    UnderSudoersLock,
    UnlockAccount,
)
from p0_ssh_agent.host.ledger import Ledger, LedgerRecords, LedgerStore, copy_ledger
from p0_ssh_agent.host.rootfile import read_root_file
from p0_ssh_agent.host.safefile import EditNotDurable, edit_in_user_dir
from p0_ssh_agent.host.sudoers_install import check_sudo_installed, edit_legacy_file, install_dropin

log = get_logger(__name__)


@dataclass(frozen=True)
class HostApplier:
    lock_dir: str
    store: LedgerStore
    processes: sessions.ProcessTable = field(default_factory=sessions.HostProcesses)
    describes: ClassVar[bool] = False

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return locks.global_lock(name, lock_dir=self.lock_dir)

    def user_lock(self, uid: int) -> contextlib.AbstractContextManager[None]:
        return locks.user_file_lock(uid, lock_dir=self.lock_dir)

    def apply(self, plan: Plan, ledger: Ledger | None = None) -> Applied:
        run = _Run(self, None if ledger is None else LedgerRecords(self.store, ledger))
        try:
            run.actions(plan.actions)
        finally:
            # After a failure, or a plan stopped (RequireAccount, StopIfSurvivors) before the effect recorded ahead.
            run.undo_ahead()
        return run.applied


@dataclass
class _Run:
    applier: HostApplier
    records: LedgerRecords | None
    applied: Applied = field(default_factory=Applied)
    # The records as committed before the first change recorded ahead of an effect that has not succeeded yet.
    before_ahead: Ledger | None = None

    def actions(self, actions: tuple[HostAction, ...]) -> None:
        for action in actions:
            if self.applied.done:
                return
            self.action(action)

    def action(self, action: HostAction) -> None:
        match action:
            case ChangeLedger() | UnderSudoersLock() | RequireAccount() | StopIfSurvivors():
                self._step(action)  # no effect of its own (UnderSudoersLock: those of `then`, one by one)
            case EditUserFile() | EditKeyStore() | InstallSudoers() | EditLegacySudoers():
                with self._effect():
                    self._file(action)
            case JoinKeyStoreGroup(name):
                with self._effect():
                    key_store_files.join_store_group(name)
            case LeaveKeyStoreGroup(name):
                with self._effect():
                    key_store_files.leave_store_group(name)
            case CreateAccount() | UnlockAccount() | LockAccount() | DeleteAccount() | DeleteLeftoverGroup():
                with self._effect():
                    self._account(action)
            case EndSessions():
                with self._effect():
                    self.applied.sessions = self._end_sessions(action.uid, action.name)
            case RequireSudo():
                check_sudo_installed()  # a check before anything is read or written: nothing to undo
            case _:
                assert_never(action)

    @contextlib.contextmanager
    def _effect(self) -> Iterator[None]:
        """An effect on the host: if it succeeds, what was recorded ahead of it now stands for what the host holds;
        if it changed the host and then failed, too (the exception goes on either way). Any other failure
        propagates, and apply() undoes the records made ahead of it."""
        try:
            yield
        except EditNotDurable:
            self.before_ahead = None  # renamed into place: the record is true
            raise
        self.before_ahead = None

    def undo_ahead(self) -> None:
        """Commit the records as they were before the changes made ahead of an effect that never happened."""
        before, self.before_ahead = self.before_ahead, None
        if before is None or self.records is None:
            return
        try:
            self.records.commit(before)
        except Exception as exc:  # the failure that got us here is the one to answer with
            log.error("ledger_undo_failed", error=str(exc), note="the ledger claims a grant the host does not hold")

    def _step(self, action: ChangeLedger | UnderSudoersLock | RequireAccount | StopIfSurvivors) -> None:
        match action:
            case ChangeLedger(change, ahead):
                if self.records is None:  # a sweep: the whole ledger as it is now (under the caller's locks)
                    self.records = LedgerRecords(self.applier.store, self.applier.store.read_all())
                if ahead and self.before_ahead is None:
                    self.before_ahead = copy_ledger(self.records.committed)
                self.records.change(change)
            case UnderSudoersLock(path, then):
                with self.applier.lock("sudoers"):
                    self.actions(then(read_root_file(path)))
            case RequireAccount(missing):
                self.applied.stopped = missing
            case StopIfSurvivors(then):
                if self.applied.sessions is not None and not self.applied.sessions.ended:
                    self.actions(then)
                    self.applied.halted = True

    def _file(self, action: EditUserFile | EditKeyStore | InstallSudoers | EditLegacySudoers) -> None:
        match action:
            case EditUserFile():
                edit_in_user_dir(
                    home=action.home,
                    uid=action.uid,
                    gid=action.gid,
                    subdir=action.subdir,
                    filename=action.filename,
                    transform=action.transform,
                    create=action.create,
                    keep_owner=action.keep_owner,
                )
            case EditKeyStore(key_dir, name, gid, transform, create):
                key_store_files.edit_key_file(name, gid, transform, create=create, key_dir=key_dir)
            case InstallSudoers(text):
                install_dropin(text)
            case EditLegacySudoers(transform):
                if os.path.lexists(LEGACY_FILE):  # most hosts never ran the Go agent: no visudo needed then
                    edit_legacy_file(transform)

    def _account(
        self, action: CreateAccount | UnlockAccount | LockAccount | DeleteAccount | DeleteLeftoverGroup
    ) -> None:
        match action:
            case CreateAccount(name, uid, leftover_group):
                try:
                    account_changes.create_user(name, uid=uid, leftover_group=leftover_group)
                except BaseException:
                    if accounts.lookup_user(name) is not None:
                        self.before_ahead = None  # a half-made account is ours: its intent stays recorded
                    raise
            case UnlockAccount(name, adopted):
                if account_changes.is_locked(name):
                    account_changes.unlock_user(name, adopted=adopted)
            case LockAccount(name, adopted):
                account_changes.lock_user(name, adopted=adopted)
            case DeleteAccount(name, uid, adopted):
                try:
                    account_changes.delete_user(name, adopted=adopted)
                except accounts.UserBusy:
                    self._end_sessions(uid, name)
                    account_changes.delete_user(name, adopted=adopted)
            case DeleteLeftoverGroup(name, gid):
                account_changes.delete_leftover_group(name, gid=gid)

    def _end_sessions(self, uid: int, name: str) -> SessionsEnded:
        result = sessions.terminate_user_sessions(uid, name=name, processes=self.applier.processes)
        return SessionsEnded(result.ended, result.message)
