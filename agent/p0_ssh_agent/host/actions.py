"""What a change is to do on the host, as data: a Plan is a tuple of actions and the answer they lead to.

The handlers (provisioning/authorized_keys.py, sudo_rules.py, users.py, end_sessions.py) build plans from a
request and its facts without touching the host; an applier runs them:

    host/apply.py     HostApplier        runs the actions in order, under the locks and with the rollbacks they name
    host/describe.py  DescribingApplier  changes nothing: reads what it must, read-only, and describes each action
                                         (commands, unified diffs, notes): what a dry run answers

Where a file must be read under a lock the applier takes (authorized_keys under the user's lock, which the pipeline
holds; the sudoers drop-in under the sudoers lock), the action carries a pure transform of what is read, so the
plan stays pure and either applier can run it. Ledger changes are pure functions of the ledger too: the applier
applies them, in order, to the records the request read (the facts) and commits each one (the describing applier
commits nothing, and the ledger is no part of a description).
"""

from __future__ import annotations

import contextlib
import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from p0_ssh_agent.host.ledger import Ledger, LedgerStore
from p0_ssh_agent.host.safefile import FileEdit
from p0_ssh_agent.host.sessions import ProcessTable
from p0_ssh_agent.protocol.forwarded import CommandResult

_DIFF_LINE_LIMIT = 400  # a dry run of a 10,000-line file shows the change, not the whole file

LedgerChange = Callable[[Ledger], object]


@dataclass(frozen=True)
class ChangeLedger:
    """One ledger commit: `change` applied to the records as the plan's earlier actions left them.

    ahead: a record made ahead of the effect it stands for (a grant's, so that a crash in between leaves the ledger
    claiming a little more than the host holds, never less). The applier undoes it (commits the records as they
    were before it) when the next effect fails, for any reason, without leaving anything behind, or when the plan
    stops before that effect ran: a failure the agent sees leaves the ledger as it was. What an earlier grant had
    recorded stays, since the records go back to what the request read. False: a change that follows its effect
    (a revoke's, a mirror of the drop-in), kept whatever comes after it."""

    change: LedgerChange
    ahead: bool = False


@dataclass(frozen=True)
class EditUserFile:
    """<home>/<subdir>/<filename> := transform(its bytes), through host/safefile.py's symlink-safe walk (the
    caller holds the user's lock). create False: a missing file stays missing (a revoke). keep_owner: owner and
    modes of ~/.ssh and the file are left as they are, and a file whose content stays the same is not written (a
    revoke in an account the agent does not manage: it removes only its own pair and hands nothing to the user)."""

    home: str
    uid: int
    gid: int
    subdir: str
    filename: str
    transform: Callable[[bytes], bytes]
    create: bool = True
    keep_owner: bool = False


@dataclass(frozen=True)
class EditKeyStore:
    """The account's file in the key store (host/key_store_files.py) := transform(its bytes); create False: a missing
    file stays missing (a revoke). An empty result removes it. The caller holds the user's lock."""

    key_dir: str  # <state directory>/keys: the sshd drop-in names the same directory
    name: str
    gid: int
    transform: Callable[[bytes], bytes]
    create: bool = True


@dataclass(frozen=True)
class JoinKeyStoreGroup:
    """Make the account a member of the key store's group, so that sshd reads its keys from the store (and only
    from there: core/sshd_key_store.py); nothing if it is one already."""

    name: str


@dataclass(frozen=True)
class LeaveKeyStoreGroup:
    """Take the account out of the key store's group, so that sshd reads its ~/.ssh/authorized_keys again (the
    grants moved home: provisioning/key_store_move.py); nothing if it is no member."""

    name: str


@dataclass(frozen=True)
class UnderSudoersLock:
    """Under the sudoers lock: read the drop-in at `path` (None: no such file) and run the actions `then` makes
    of its content (pure: parse, change, render; the ledger mirror that follows the file)."""

    path: str
    then: Callable[[bytes | None], tuple[HostAction, ...]]


@dataclass(frozen=True)
class InstallSudoers:
    """Make the drop-in hold `text` (None: remove it), checked by visudo before and after it goes live, the old
    file put back on failure. repair_only: the content is what the file holds already; a real run rewrites it
    anyway (it repairs a drop-in that lost its mode), a description leaves it out."""

    text: str | None
    repair_only: bool = False


@dataclass(frozen=True)
class EditLegacySudoers:
    """Take lines out of the Go agent's /etc/sudoers-p0 (transform), if the file exists, checked like the drop-in."""

    transform: Callable[[bytes], bytes]


@dataclass(frozen=True)
class RequireAccount:
    """The account must exist by now: the plan stops here with `missing`, in a real run and a dry run alike (a dry
    run answers what a real run would; issue 14 item 7)."""

    missing: CommandResult


@dataclass(frozen=True)
class RequireSudo:
    """sudo must be installed and its drop-in directory usable (host/sudoers_install.py check_sudo_installed);
    else the request is refused with SudoUnavailable (412), in a real run and a dry run alike."""


@dataclass(frozen=True)
class CreateAccount:
    """groupadd + useradd with UID = GID = uid (host/accounts.py create_user, which rolls back a failed useradd).
    A failure that leaves no account undoes the intent recorded ahead of it; a half-made account stays recorded.
    leftover_group: a retry of a creation killed between groupadd and useradd (the ledger holds its intent, with
    this UID; provisioning/facts.py own_leftover_group): the group it left is joined, not made again."""

    name: str
    uid: int
    leftover_group: bool = False


@dataclass(frozen=True)
class UnlockAccount:
    """Undo an earlier revoke's lock, if the account is locked (usermod -U -e '')."""

    name: str
    adopted: tuple[str, ...]


@dataclass(frozen=True)
class LockAccount:
    """usermod -L -e 1: sshd then refuses even a valid key."""

    name: str
    adopted: tuple[str, ...]


@dataclass(frozen=True)
class DeleteAccount:
    """userdel -r; when userdel finds the user still logged in, its sessions are ended again and it is retried."""

    name: str
    uid: int
    adopted: tuple[str, ...]


@dataclass(frozen=True)
class DeleteLeftoverGroup:
    """groupdel the group a creation killed between groupadd and useradd left (GID = gid, no member), checked
    again at the effect; a group already gone is not an error."""

    name: str
    gid: int


@dataclass(frozen=True)
class EndSessions:
    """End every session and process of the UID (host/sessions.py); what came of it is the Applied's `sessions`."""

    uid: int
    name: str


@dataclass(frozen=True)
class StopIfSurvivors:
    """If the last EndSessions left processes: run `then` and stop the plan there (the answer says why)."""

    then: tuple[HostAction, ...] = ()


HostAction = (
    ChangeLedger
    | EditUserFile
    | EditKeyStore
    | JoinKeyStoreGroup
    | LeaveKeyStoreGroup
    | UnderSudoersLock
    | InstallSudoers
    | EditLegacySudoers
    | RequireAccount
    | RequireSudo
    | CreateAccount
    | UnlockAccount
    | LockAccount
    | DeleteAccount
    | DeleteLeftoverGroup
    | EndSessions
    | StopIfSurvivors
)


@dataclass(frozen=True)
class SessionsEnded:
    """What ending a user's sessions came to. described: a dry run only counted the processes."""

    ended: bool
    message: str
    described: bool = False


@dataclass
class Description:
    """What a change did or, in a dry run, would do: commands and unified diffs, in order.

    File steps keep the edit and render their diff only in text(): diffing a 10,000-line authorized_keys on
    every grant was a measurable share of its time."""

    steps: list[str | FileEdit] = field(default_factory=list)

    def command(self, argv: list[str]) -> None:
        self.steps.append("run: " + shlex.join(argv))

    def note(self, text: str) -> None:
        self.steps.append(text)

    def file(self, edit: FileEdit) -> None:
        self.steps.append(edit)

    def text(self) -> str:
        return "\n".join(step if isinstance(step, str) else render_edit(step) for step in self.steps)


@dataclass
class Applied:
    """What an applier did: the description of every step (the describing applier's; the host's leaves it empty),
    what ending sessions came to, and the result a RequireAccount stopped the plan with."""

    description: Description = field(default_factory=Description)
    sessions: SessionsEnded | None = None
    stopped: CommandResult | None = None
    halted: bool = False  # a StopIfSurvivors stopped the plan

    @property
    def done(self) -> bool:
        return self.stopped is not None or self.halted


Answer = CommandResult | Callable[[Applied], CommandResult]


@dataclass(frozen=True)
class Plan:
    """A change, as data: the actions in order and the answer (a function of what they came to, when that
    depends on it, as ending sessions does). No actions: already done."""

    actions: tuple[HostAction, ...]
    answer: Answer

    def result(self, applied: Applied) -> CommandResult:
        if applied.stopped is not None:
            return applied.stopped
        return self.answer(applied) if callable(self.answer) else self.answer


def render_edit(edit: FileEdit) -> str:
    if not edit.changed:
        return f"unchanged: {edit.path}"
    if edit.after is None:
        return f"remove: {edit.path}"
    before = (edit.before or b"").decode("utf-8", "replace").splitlines(keepends=True)
    after = edit.after.decode("utf-8", "replace").splitlines(keepends=True)
    label_before = edit.path if edit.before is not None else "/dev/null"
    diff = list(difflib.unified_diff(before, after, label_before, edit.path, n=1))
    shown = diff[:_DIFF_LINE_LIMIT]
    if len(diff) > len(shown):
        shown.append(f"... {len(diff) - len(shown)} more diff lines\n")
    return "".join(line if line.endswith("\n") else line + "\n\\ No newline at end of file\n" for line in shown).rstrip(
        "\n"
    )


class Applier(Protocol):
    """What runs a Plan: the host's (host/apply.py) or the describing one (host/describe.py). It also owns what a
    change needs around its plan: the locks, the ledger's store, where processes are found."""

    @property
    def describes(self) -> bool:
        """True: nothing on the host changes; the Applied's description is the dry run's answer."""
        ...

    @property
    def store(self) -> LedgerStore: ...

    @property
    def processes(self) -> ProcessTable: ...

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]: ...

    def user_lock(self, uid: int) -> contextlib.AbstractContextManager[None]: ...

    def apply(self, plan: Plan, ledger: Ledger | None = None) -> Applied:
        """Run `plan`. `ledger`: the records the request read (its facts), which its ChangeLedger actions change
        in turn; None (the agent's own sweeps): the whole ledger, read when the first change needs it."""
        ...
