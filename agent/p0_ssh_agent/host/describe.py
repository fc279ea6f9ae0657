"""The describing applier: what a dry run runs in place of the host's (host/apply.py). It changes nothing.

Each action is checked as the host's applier would check it (the symlink-safe walk, visudo on the new sudoers
text, the account checks) and described: `run: <argv>` for a command, a unified diff for a file, a note for ending
sessions (with how many processes there are now). What a real run refuses it refuses with the same answer (a
missing account, sudo not installed: issue 14 item 7), and it stops where a real run would. It takes no lock (a
dry run may run unprivileged) and its ledger store commits nothing; the ledger is no part of a description.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field
from typing import ClassVar, assert_never

from p0_ssh_agent.core.sudoers import LEGACY_FILE
from p0_ssh_agent.host import account_changes, key_store_files, sessions
from p0_ssh_agent.host.actions import (
    Applied,
    ChangeLedger,
    CreateAccount,
    DeleteAccount,
    DeleteLeftoverGroup,
    Description,
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
from p0_ssh_agent.host.ledger import Ledger, LedgerStore
from p0_ssh_agent.host.rootfile import read_root_file
from p0_ssh_agent.host.safefile import preview_in_user_dir
from p0_ssh_agent.host.sudoers_install import check_sudo_installed, preview_dropin, preview_legacy_file


@dataclass(frozen=True)
class DescribingApplier:
    store: LedgerStore  # without a lock directory: it commits nothing
    processes: sessions.ProcessTable = field(default_factory=sessions.HostProcesses)
    describes: ClassVar[bool] = True

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def user_lock(self, uid: int) -> contextlib.AbstractContextManager[None]:
        return contextlib.nullcontext()

    def apply(self, plan: Plan, ledger: Ledger | None = None) -> Applied:
        applied = Applied()
        self._actions(plan.actions, applied)
        return applied

    def _actions(self, actions: tuple[HostAction, ...], applied: Applied) -> None:
        for action in actions:
            if applied.done:  # stopped where a real run stops (a missing account, survivors)
                return
            self._action(action, applied)

    def _action(self, action: HostAction, applied: Applied) -> None:
        match action:
            case ChangeLedger() | StopIfSurvivors():
                pass  # the ledger is no part of a description; sessions always "end" in one
            case CreateAccount() | UnlockAccount() | LockAccount() | DeleteAccount() | DeleteLeftoverGroup():
                self._account(action, applied.description)
            case EndSessions(uid, name):
                count = len(self.processes.pids(uid))
                applied.description.note(f"end every session and process of {name} (UID {uid}): {count} now")
                applied.sessions = SessionsEnded(True, f"would end {count} processes", described=True)
            case RequireAccount(missing):
                applied.stopped = missing
            case RequireSudo():
                check_sudo_installed()
            case JoinKeyStoreGroup(name):
                for argv in key_store_files.planned_join(name):
                    applied.description.command(argv)
            case LeaveKeyStoreGroup(name):
                for argv in key_store_files.planned_leave(name):
                    applied.description.command(argv)
            case EditUserFile() | EditKeyStore() | UnderSudoersLock() | InstallSudoers() | EditLegacySudoers():
                self._file(action, applied)
            case _:
                assert_never(action)

    def _file(
        self,
        action: EditUserFile | EditKeyStore | UnderSudoersLock | InstallSudoers | EditLegacySudoers,
        applied: Applied,
    ) -> None:
        described = applied.description
        match action:
            case EditUserFile():
                described.file(
                    preview_in_user_dir(
                        home=action.home,
                        uid=action.uid,
                        gid=action.gid,
                        subdir=action.subdir,
                        filename=action.filename,
                        transform=action.transform,
                        create=action.create,
                    )
                )
            case EditKeyStore(key_dir, name, gid, transform, create):
                described.file(
                    key_store_files.edit_key_file(name, gid, transform, create=create, write=False, key_dir=key_dir)
                )
            case UnderSudoersLock(path, then):
                self._actions(then(read_root_file(path)), applied)
            case InstallSudoers(text, repair_only):
                if not repair_only:
                    edit = preview_dropin(text)
                    if edit.changed:
                        described.file(edit)
            case EditLegacySudoers(transform):
                if os.path.lexists(LEGACY_FILE):
                    described.file(preview_legacy_file(transform))

    def _account(
        self,
        action: CreateAccount | UnlockAccount | LockAccount | DeleteAccount | DeleteLeftoverGroup,
        described: Description,
    ) -> None:
        match action:
            case CreateAccount(name, uid, leftover_group):
                for argv in account_changes.planned_create_user(name, uid=uid, leftover_group=leftover_group):
                    described.command(argv)
            case UnlockAccount(name, adopted):
                if account_changes.is_locked(name):
                    for argv in account_changes.planned_unlock_user(name, adopted=adopted):
                        described.command(argv)
            case LockAccount(name, adopted):
                for argv in account_changes.planned_lock_user(name, adopted=adopted):
                    described.command(argv)
            case DeleteAccount(name, _uid, adopted):
                for argv in account_changes.planned_delete_user(name, adopted=adopted):
                    described.command(argv)
            case DeleteLeftoverGroup(name, gid):
                for argv in account_changes.planned_delete_leftover_group(name, gid=gid):
                    described.command(argv)
