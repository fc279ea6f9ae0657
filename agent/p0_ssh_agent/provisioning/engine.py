"""What every host change shares: its applier (which owns the locks and the ledger's store), the configuration,
and the audit trail.

Handlers are pure (they plan: host/actions.py); the applier runs their plans, blocking, in a worker thread. Which
applier is the pipeline's choice (Engine.for_run): the host's (host/apply.py) or, in a dry run, the describing one
(host/describe.py), which changes nothing, takes no lock and commits nothing. Cross-process exclusion (the daemon
and a `p0-ssh-agent command` by hand) comes from flock files in <state_dir>/locks, taken in this order so two
requests never deadlock:

    accounts  ->  uid-<N> (one user's files)  ->  sudoers  ->  ledger (innermost, held only for a commit)

The pipeline takes the first lock a request needs (the user's, or the accounts lock for provisionUser on a user with
no account: a creation, or the groupdel of a half-made one's group) around gathering its facts and applying its
plan; the ledger is read once then (provisioning/facts.py), and each change of it is one commit (host/ledger.py
LedgerRecords).
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_SUBDIR
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import sessions
from p0_ssh_agent.host.actions import Applied, Applier, Description, Plan
from p0_ssh_agent.host.apply import HostApplier
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.describe import DescribingApplier
from p0_ssh_agent.host.ledger import Ledger, LedgerCorrupt, LedgerRecords, LedgerStore

__all__ = ["LOCK_SUBDIR", "Applied", "Description", "Engine", "LedgerRecords", "Plan"]

LOCK_SUBDIR = "locks"


@dataclass(frozen=True)
class Engine:
    config: AgentConfig
    state_dir: Path
    applier: Applier
    # Where every change and refusal is recorded (host/audit_trail.py): handed in by whoever runs the engine, never
    # a default, so no caller can forget the trail. AuditTrail.off() for engines that only look.
    audit_trail: AuditTrail = field(kw_only=True)

    @classmethod
    def on_host(
        cls,
        config: AgentConfig,
        state_dir: Path,
        *,
        audit_trail: AuditTrail,
        processes: sessions.ProcessTable | None = None,
        ledger_store: LedgerStore | None = None,
    ) -> Engine:
        """An engine whose plans change the host. `processes`: where users' processes are found and ended (tests
        of processes that outlive SIGKILL pass a table of their own); `ledger_store`: tests pass one that counts."""
        lock_dir = str(state_dir / LOCK_SUBDIR)
        store = ledger_store or LedgerStore(state_dir, lock_dir)
        applier = HostApplier(lock_dir, store, processes or sessions.HostProcesses())
        return cls(config, state_dir, applier, audit_trail=audit_trail)

    @classmethod
    def describing(
        cls,
        config: AgentConfig,
        state_dir: Path,
        *,
        audit_trail: AuditTrail,
        processes: sessions.ProcessTable | None = None,
        ledger_store: LedgerStore | None = None,
    ) -> Engine:
        """An engine whose plans are only described (a dry run, or a command that only looks)."""
        store = ledger_store or LedgerStore(state_dir, None)
        applier = DescribingApplier(store, processes or sessions.HostProcesses())
        return cls(config, state_dir, applier, audit_trail=audit_trail)

    @classmethod
    def for_run(cls, config: AgentConfig, state_dir: Path, *, dry_run: bool, audit_trail: AuditTrail) -> Engine:
        """The pipeline's choice of applier: a dry run (dryRun, --dry-run) describes, anything else applies."""
        make = cls.describing if dry_run else cls.on_host
        return make(config, state_dir, audit_trail=audit_trail)

    def as_dry_run(self) -> Engine:
        """The same engine with the describing applier (same processes, a store that commits nothing)."""
        store = LedgerStore(self.state_dir, None)
        return dataclasses.replace(self, applier=DescribingApplier(store, self.applier.processes))

    def with_processes(self, processes: sessions.ProcessTable) -> Engine:
        return dataclasses.replace(self, applier=dataclasses.replace(self.applier, processes=processes))  # type: ignore[type-var]

    @property
    def describes(self) -> bool:
        """Whether this engine's plans change nothing: what the agent's own sweeps' audit entries call a dry run."""
        return self.applier.describes

    # --- locks and the ledger's store, the applier's ----------------------------------------------------------

    @property
    def key_dir(self) -> str:
        """The key store's directory (core/sshd_key_store.py): <state directory>/keys."""
        return str(self.state_dir / KEY_STORE_SUBDIR)

    @property
    def lock_dir(self) -> str:
        return str(self.state_dir / LOCK_SUBDIR)

    def lock(self, name: str) -> contextlib.AbstractContextManager[None]:
        """A named global lock; the describing applier takes none (a dry run may run unprivileged)."""
        return self.applier.lock(name)

    def user_lock(self, uid: int) -> contextlib.AbstractContextManager[None]:
        return self.applier.user_lock(uid)

    def adopted(self) -> tuple[str, ...]:
        return self.config.adopt_users

    @property
    def store(self) -> LedgerStore:
        return self.applier.store

    def apply(self, plan: Plan, ledger: Ledger | None = None) -> Applied:
        return self.applier.apply(plan, ledger)

    # --- for the agent's own sweeps (reconcile, expiry, revoke-all), which look at every user ------------------

    def read_ledger(self) -> Ledger:
        """The whole ledger as it is now. A dry run by an unprivileged user, who cannot read it, sees an empty one."""
        try:
            return self.store.read_all()
        except LedgerCorrupt:
            raise
        except AgentError:
            if self.describes:
                return Ledger()
            raise
