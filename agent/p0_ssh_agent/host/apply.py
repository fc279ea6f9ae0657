"""The host's applier: runs a Plan's actions (host/actions.py) in order, for real.

Each action keeps the crash-safe order and the rollbacks its handler relies on:

* ChangeLedger commits at once (the handlers put a grant's record before the file edit and a revoke's after it,
  so a crash in between leaves the ledger claiming a little more than the host holds, never less);
* EditUserFile refused as unsafe (UnsafePath: a symlinked ~/.ssh, a foreign owner) runs its `if_refused` first,
  so a grant the host never held leaves no ledger trace, then raises;
* UnderSudoersLock reads the drop-in under the sudoers lock and runs what its content makes (InstallSudoers:
  visudo before the rename and on the whole tree after it, the old file put back on failure; then the ledger's
  mirror of it);
* CreateAccount runs create_user (which rolls back a failed useradd) and, if the account does not exist
  afterwards, the `if_failed` actions (the ledger forgets the intent it recorded first);
* DeleteAccount retries once after ending the user's sessions again when userdel finds it still logged in;
* EndSessions keeps what it came to; StopIfSurvivors stops the plan when processes survived.

Blocking: the pipeline calls it in a worker thread, holding the user's lock (or the accounts lock).
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import ClassVar, assert_never

from p0_ssh_agent.core.sudoers import LEGACY_FILE
from p0_ssh_agent.host import account_changes, accounts, locks, sessions
from p0_ssh_agent.host.actions import (
    Applied,
    ChangeLedger,
    CreateAccount,
    DeleteAccount,
    EditLegacySudoers,
    EditUserFile,
    EndSessions,
    HostAction,
    InstallSudoers,
    LockAccount,
    Plan,
    RequireAccount,
    RequireSudo,
    SessionsEnded,
    StopIfSurvivors,
    UnderSudoersLock,
    UnlockAccount,
)
from p0_ssh_agent.host.ledger import Ledger, LedgerRecords, LedgerStore
from p0_ssh_agent.host.rootfile import read_root_file
from p0_ssh_agent.host.safefile import UnsafePath, edit_in_user_dir
from p0_ssh_agent.host.sudoers_install import check_sudo_installed, edit_legacy_file, install_dropin


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
        run.actions(plan.actions)
        return run.applied


@dataclass
class _Run:
    applier: HostApplier
    records: LedgerRecords | None
    applied: Applied = field(default_factory=Applied)

    def actions(self, actions: tuple[HostAction, ...]) -> None:
        for action in actions:
            if self.applied.done:
                return
            self.action(action)

    def action(self, action: HostAction) -> None:
        match action:
            case ChangeLedger() | EditUserFile() | UnderSudoersLock() | InstallSudoers() | EditLegacySudoers():
                self._file(action)
            case RequireAccount() | CreateAccount() | UnlockAccount() | LockAccount() | DeleteAccount():
                self._account(action)
            case RequireSudo():
                check_sudo_installed()
            case EndSessions() | StopIfSurvivors():
                self._sessions(action)
            case _:
                assert_never(action)

    def _file(
        self, action: ChangeLedger | EditUserFile | UnderSudoersLock | InstallSudoers | EditLegacySudoers
    ) -> None:
        match action:
            case ChangeLedger(change):
                if self.records is None:  # a sweep: the whole ledger as it is now (under the caller's locks)
                    self.records = LedgerRecords(self.applier.store, self.applier.store.read_all())
                self.records.change(change)
            case EditUserFile():
                try:
                    edit_in_user_dir(
                        home=action.home,
                        uid=action.uid,
                        gid=action.gid,
                        subdir=action.subdir,
                        filename=action.filename,
                        transform=action.transform,
                        create=action.create,
                    )
                except UnsafePath:
                    self.actions(action.if_refused)  # refused before anything was written
                    raise
            case UnderSudoersLock(path, then):
                with self.applier.lock("sudoers"):
                    self.actions(then(read_root_file(path)))
            case InstallSudoers(text):
                install_dropin(text)
            case EditLegacySudoers(transform):
                if os.path.lexists(LEGACY_FILE):  # most hosts never ran the Go agent: no visudo needed then
                    edit_legacy_file(transform)

    def _account(self, action: RequireAccount | CreateAccount | UnlockAccount | LockAccount | DeleteAccount) -> None:
        match action:
            case RequireAccount(missing):
                self.applied.stopped = missing
            case CreateAccount(name, uid, if_failed):
                try:
                    account_changes.create_user(name, uid=uid)
                except BaseException:
                    if accounts.lookup_user(name) is None:
                        self.actions(if_failed)
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

    def _sessions(self, action: EndSessions | StopIfSurvivors) -> None:
        match action:
            case EndSessions(uid, name):
                self.applied.sessions = self._end_sessions(uid, name)
            case StopIfSurvivors(then):
                if self.applied.sessions is not None and not self.applied.sessions.ended:
                    self.actions(then)
                    self.applied.halted = True

    def _end_sessions(self, uid: int, name: str) -> SessionsEnded:
        result = sessions.terminate_user_sessions(uid, name=name, processes=self.applier.processes)
        return SessionsEnded(result.ended, result.message)
