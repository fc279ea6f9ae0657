"""What every host change shares: locks, the ledger's store, and the plan a dry run prints.

Handlers are synchronous and blocking (they run useradd, visudo, fsync); the pipeline calls them in a worker
thread. Cross-process exclusion (the daemon and a `p0-ssh-agent command` by hand) comes from flock files in
<state_dir>/locks, taken in this order so two requests never deadlock:

    accounts  ->  uid-<N> (one user's files)  ->  sudoers  ->  ledger (innermost, held only for a commit)

The pipeline takes the first lock a request needs (the user's, or the accounts lock for a user to create) around
gathering its facts and applying its change; the ledger is read once then (provisioning/facts.py), and each change
of it is one LedgerRecords.commit.
"""

from __future__ import annotations

import contextlib
import difflib
import shlex
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import locks, sessions
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import (
    Ledger,
    LedgerCorrupt,
    LedgerStore,
    copy_ledger,
    user_view,
    users_in,
)
from p0_ssh_agent.host.safefile import FileEdit

LOCK_SUBDIR = "locks"
_DIFF_LINE_LIMIT = 400  # a dry run of a 10,000-line file shows the change, not the whole file


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
    # The ledger's store; None: the state directory's (tests pass one that counts its reads).
    ledger_store: LedgerStore | None = field(default=None, kw_only=True)

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

    def adopted(self) -> tuple[str, ...]:
        return self.config.adopt_users

    @property
    def store(self) -> LedgerStore:
        """The ledger's store; a dry run's commits write nothing (and take no lock)."""
        if self.ledger_store is not None:
            return self.ledger_store
        return LedgerStore(self.state_dir, None if self.dry_run else self.lock_dir)

    # --- for the agent's own sweeps (reconcile, expiry, revoke-all), which look at every user ------------------

    def read_ledger(self) -> Ledger:
        """The whole ledger as it is now. A dry run by an unprivileged user, who cannot read it, sees an empty one."""
        try:
            return self.store.read_all()
        except LedgerCorrupt:
            raise
        except AgentError:
            if self.dry_run:
                return Ledger()
            raise


@dataclass
class LedgerRecords:
    """The ledger records one request read (once), and the commits it makes from them.

    Every commit stores only the users whose records the change touched (LedgerStore.commit replaces every user
    `before` or `after` names), so a snapshot of the whole ledger (a sudo request's) never overwrites a concurrent
    change to someone else."""

    store: LedgerStore
    committed: Ledger

    def after(self, change: Callable[[Ledger], object]) -> Ledger:
        """The ledger after `change` (pure: a copy; nothing is stored)."""
        result = copy_ledger(self.committed)
        change(result)
        return result

    def commit(self, after: Ledger) -> None:
        touched = {name for name in users_in(self.committed) | users_in(after) if _differs(self.committed, after, name)}
        if touched:
            self.store.commit(_only(self.committed, touched), _only(after, touched))
        self.committed = copy_ledger(after)

    def change(self, change: Callable[[Ledger], object]) -> None:
        self.commit(self.after(change))


def _differs(before: Ledger, after: Ledger, name: str) -> bool:
    old, new = user_view(before, name), user_view(after, name)
    return (old.users, old.keys, old.sudo) != (new.users, new.keys, new.sudo)


def _only(ledger: Ledger, names: set[str]) -> Ledger:
    """The records of `names` in `ledger` (with its UID high-water mark)."""
    result = Ledger(uid_high_water=ledger.uid_high_water)
    for name in names:
        view = user_view(ledger, name)
        result.users.update(view.users)
        result.keys.update(view.keys)
        result.sudo.update(view.sudo)
    return result
