"""What every host change shares: locks, the ledger, the ownership rule, and the plan a dry run prints.

Handlers are synchronous and blocking (they run useradd, visudo, fsync); the async layer calls them in a worker
thread. Cross-process exclusion (the daemon and a `p0-ssh-agent command` by hand) comes from flock files in
<state_dir>/locks, taken in this order so two requests never deadlock:

    accounts  ->  uid-<N> (one user's files)  ->  sudoers  ->  ledger (innermost, held only for load-change-save)

Ownership (issue 4, upstream-protocol.md §12 item 5): the agent touches an account only if it created it (the
ledger says so), the operator adopted it (`adoptUsers`), or the Go agent created it (a user in the JIT range
65536-90000 whose primary group has its name and GID = UID; adopted into the ledger on first sight, so a migration
from the Go agent keeps working). Root and system accounts are refused even when adopted by mistake.
"""

from __future__ import annotations

import contextlib
import difflib
import grp
import shlex
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.errors import AgentError, PermissionProblem
from p0_ssh_agent.host import accounts, locks, sessions
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import Ledger, LedgerCorrupt, load_ledger, save_ledger
from p0_ssh_agent.host.safefile import FileEdit

LOCK_SUBDIR = "locks"
_DIFF_LINE_LIMIT = 400  # a dry run of a 10,000-line file shows the change, not the whole file


class NotManaged(PermissionProblem):
    """The target account exists but is not the agent's to change."""


@dataclass
class Plan:
    """What a change did or, in a dry run, would do: commands and unified diffs, in order.

    File steps keep the edit and render their diff only in text(): a real grant records its edits but nobody reads
    them, and diffing a 10,000-line authorized_keys on every grant was a measurable share of its time."""

    steps: list[str | FileEdit] = field(default_factory=list)

    def command(self, argv: list[str]) -> None:
        self.steps.append("run: " + shlex.join(argv))

    def note(self, text: str) -> None:
        self.steps.append(text)

    def file(self, edit: FileEdit) -> None:
        self.steps.append(edit)

    def text(self) -> str:
        return "\n".join(step if isinstance(step, str) else render_edit(step) for step in self.steps)


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


@dataclass(frozen=True)
class Engine:
    config: AgentConfig
    state_dir: Path
    dry_run: bool
    # Where users' processes are found and ended: the host's. Tests of what a revoke answers when processes
    # outlive SIGKILL pass a table of their own (no real process can be made unkillable on demand).
    processes: sessions.ProcessTable = field(default_factory=sessions.HostProcesses)
    # Where every change and refusal is recorded (host/audit_trail.py): handed in by whoever runs the engine, never
    # a default, so no caller can forget the trail. AuditTrail.off() for engines that only look.
    audit_trail: AuditTrail = field(kw_only=True)

    # --- locks ------------------------------------------------------------------------------------------------

    @property
    def lock_dir(self) -> str:
        return str(self.state_dir / LOCK_SUBDIR)

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A named global lock; a dry run changes nothing and takes none (it may run unprivileged)."""
        if self.dry_run:
            return contextlib.nullcontext()
        return locks.global_lock(name, lock_dir=self.lock_dir)

    def user_lock(self, uid: int) -> contextlib.AbstractContextManager[None]:
        if self.dry_run:
            return contextlib.nullcontext()
        return locks.user_file_lock(uid, lock_dir=self.lock_dir)

    # --- ledger -----------------------------------------------------------------------------------------------

    def read_ledger(self) -> Ledger:
        """The ledger as it is now. A dry run by an unprivileged user, who cannot read it, plans with an empty one."""
        try:
            return load_ledger(self.state_dir)
        except LedgerCorrupt:
            raise
        except AgentError:
            if self.dry_run:
                return Ledger()
            raise

    @contextlib.contextmanager
    def ledger(self) -> Iterator[Ledger]:
        """Load, let the caller change, save (only if the block ends normally and this is not a dry run)."""
        with self.lock("ledger"):
            ledger = self.read_ledger()
            yield ledger
            if not self.dry_run:
                save_ledger(ledger, self.state_dir)

    def update_ledger(self, change: Callable[[Ledger], object]) -> None:
        with self.ledger() as ledger:
            change(ledger)

    # --- ownership --------------------------------------------------------------------------------------------

    def adopted(self) -> tuple[str, ...]:
        return self.config.adopt_users

    def ownership(self, record: UserRecord, ledger: Ledger) -> Ownership:
        """The ownership rule alone (root and system accounts are judged by accounts.manage_refusal): in the ledger
        with the same UID, adoptable (adoptUsers or the Go agent's), in the ledger with another UID, or foreign."""
        entry = ledger.users.get(record.name)
        if entry is not None:
            return "owned" if entry.uid == record.uid else "uid-changed"
        return "adoptable" if record.name in self.adopted() or is_go_agent_user(record) else "foreign"

    def managed_user(self, name: str) -> UserRecord | None:
        """The account if it exists and the agent may change it; None if it does not exist; NotManaged otherwise.

        Takes the ledger lock itself (to adopt a user): never call it while holding that lock.
        """
        record = accounts.lookup_user(name)
        if record is None:
            return None
        current = self.read_ledger()
        refusal = accounts.manage_refusal(record, adopted=self.adopted())
        if refusal is not None:
            raise NotManaged(refusal)
        claim = self.ownership(record, current)
        if claim == "owned":
            return record
        if claim == "uid-changed":
            raise NotManaged(
                f"refusing to manage {name}: the agent created it with UID {current.users[name].uid}, but it now has "
                f"UID {record.uid} (deleted and re-created by someone else?); remove it from the ledger to adopt it"
            )
        if claim == "adoptable":
            self.update_ledger(lambda led: led.record_user(name, record.uid, adopted=True))
            return record
        raise NotManaged(
            f"refusing to manage {name}: the account exists but was not created by p0-ssh-agent; "
            "list it under adoptUsers in the configuration to let the agent manage it"
        )


Ownership = Literal["owned", "adoptable", "uid-changed", "foreign"]


def is_go_agent_user(record: UserRecord) -> bool:
    """The Go agent's accounts: UID in 65536-90000 with a primary group of the same name and GID = UID (§6.2)."""
    if not accounts.JIT_UID_LOW <= record.uid <= accounts.JIT_UID_HIGH or record.gid != record.uid:
        return False
    try:
        return grp.getgrgid(record.gid).gr_name == record.name
    except KeyError:
        return False
