"""Reconciliation (issue 6): compare what the ledger says the agent granted with what the host holds, report drift
and, with `reconcile: repair`, repair what the ledger owns. A request the agent makes to itself, on the request
line's plan -> apply step:

    facts    read here, under the handlers' locks: per user (the user's lock) the ledger's records
             (LedgerStore.read_user) and ~/.ssh/authorized_keys (the symlink-safe read); then, under the sudoers
             lock, the drop-in and the whole ledger
    drift    provisioning/drift.py, pure: the findings (the kinds and what repair does are listed there) and the
             Plan that repairs them, of the handlers' own actions (EditUserFile, InstallSudoers, ChangeLedger)
    apply    repair mode only: `engine.apply(plan)`, still under the same locks, so the repair acts on exactly the
             facts it was judged on; report mode (and a dry-run engine, whatever the mode) applies nothing
    audit    record_drift: one log line and one audit entry per finding

Locks are the handlers' own (a user's lock around reading the ledger and their file and the repair, the sudoers
lock around reading the drop-in, the ledger and the repair), so a grant in flight is never mistaken for drift.
The order is a grant's: uid-<N>, then sudoers, then the ledger's record locks (a commit's). A user whose account
is gone has no user lock to take: their records are read and forgotten without one (the commit takes the record's
lock). Everything here blocks.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import accounts, audit_trail
from p0_ssh_agent.host.ledger import Ledger
from p0_ssh_agent.host.rootfile import read_root_file
from p0_ssh_agent.provisioning.authorized_keys import key_file_of
from p0_ssh_agent.provisioning.drift import (
    Drift,
    Findings,
    account_gone,
    compare_keys,
    compare_sudo,
    home_keys_path,
)
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.sudo_rules import DROPIN_PATH

__all__ = ["Drift", "inspect_drift", "reconcile", "record_drift"]

log = get_logger(__name__)


def record_drift(drift: Drift, *, mode: str, trail: audit_trail.AuditTrail, dry_run: bool = False) -> None:
    """The one place a drift finding is recorded: a structlog line and an audit entry (host/audit_trail.py)."""
    log.warning(
        "drift",
        drift=drift.kind,
        path=drift.path,
        target_user=drift.user,
        request_id=drift.request_id,
        detail=drift.detail,
        mode=mode,
        repaired=drift.repaired,
    )
    # RESULT: "reported" for a finding left as it is (report mode, or nothing the agent may repair), "failure" for
    # a repair that was tried and failed, "success" for one repaired.
    result: audit_trail.Result = (
        "success" if drift.repaired else "failure" if mode == "repair" and _repairable(drift) else "reported"
    )
    summary = f"{'[dry run] ' if dry_run else ''}drift {drift.kind} in {drift.path}"
    summary += f" (user {drift.user or '-'}, request {drift.request_id or '-'}): {drift.detail}"
    summary += " (repaired)" if drift.repaired else f" ({mode} mode: {result})"
    trail.record(
        audit_trail.AuditEvent(
            event=audit_trail.Event.REPAIRED if drift.repaired else audit_trail.Event.DRIFT,
            origin="reconcile",
            request_id=drift.request_id or "",
            command="reconcile",
            action=mode,
            target_user=drift.user or "",
            result=result,
            summary=summary,
            dry_run=dry_run,
            key_fingerprint=audit_trail.fingerprint_in(drift.detail),
            detail=drift.detail,
            drift=drift.kind,
            path=drift.path,
        ),
    )


def _repairable(drift: Drift) -> bool:
    return drift.kind != "unreadable"  # the operator fixes an unreadable file; the agent never tries


def inspect_drift(config: AgentConfig, state_dir: Path) -> list[Drift]:
    """The drift as `status` and `doctor` show it: a dry-run engine (no lock, no repair), nothing logged or audited."""
    return reconcile(
        Engine.describing(config, state_dir, audit_trail=audit_trail.AuditTrail.off()), repair=False, record=False
    )


def reconcile(engine: Engine, *, repair: bool, record: bool = True) -> list[Drift]:
    """Compare ledger and host; with repair, apply the repair plans (provisioning/drift.py). Never raises for one
    bad file.

    A dry-run engine (dryRun: true, or `status`) only reports: it applies nothing and takes no locks.
    """
    repair = repair and not engine.describes
    found = _reconcile_keys(engine, repair) + _reconcile_sudo(engine, repair)
    if record:
        for drift in found:
            record_drift(
                drift, mode="repair" if repair else "report", trail=engine.audit_trail, dry_run=engine.describes
            )
    return found


def _repaired(engine: Engine, findings: Findings, ledger: Ledger | None, **where: str) -> list[Drift]:
    """Apply the repair (the caller holds its locks): the findings marked repaired, or as found if it failed.
    `ledger`: the records the findings were judged on (None: the whole ledger, read at the first change)."""
    if not findings.repair.actions:
        return findings.drift
    try:
        engine.apply(findings.repair, ledger)
    except AgentError as exc:
        log.error("drift_repair_failed", **where, error=str(exc))
        return findings.drift
    return [replace(drift, repaired=True) for drift in findings.drift]


# --- keys ------------------------------------------------------------------------------------------------------


def _reconcile_user(engine: Engine, user: str, repair: bool) -> list[Drift]:
    record = accounts.lookup_user(user)
    if record is None:  # the account is gone, and its keys with it: no UID, so no user lock
        ledger = engine.store.read_user(user)
        gone = account_gone(user, ledger)
        if repair and gone.repair.actions:
            engine.apply(gone.repair, ledger)  # a failure is the caller's: this user's files are unreadable
        return [replace(drift, repaired=repair) for drift in gone.drift]
    with engine.user_lock(record.uid):
        ledger = engine.store.read_user(user)
        if not ledger.keys.get(user):
            return []
        # keyStore store: a created account's grants are in the key store, the file sshd reads for it.
        key_file = key_file_of(record, ledger, engine.config, engine.key_dir)
        try:
            content = key_file.read()
        except AgentError as exc:
            return [Drift("unreadable", key_file.path, user, None, str(exc))]
        findings = compare_keys(record, ledger, content, engine.config.max_grant_seconds, key_file)
        if not repair:
            return findings.drift
        return _repaired(engine, findings, ledger, path=key_file.path, target_user=user)


def _reconcile_keys(engine: Engine, repair: bool) -> list[Drift]:
    found: list[Drift] = []
    for user in sorted(engine.read_ledger().keys):
        try:
            found.extend(_reconcile_user(engine, user, repair))
        except (AgentError, OSError) as exc:
            found.append(Drift("unreadable", home_keys_path(user), user, None, str(exc)))
    return found


# --- sudo ------------------------------------------------------------------------------------------------------


def _reconcile_sudo(engine: Engine, repair: bool) -> list[Drift]:
    try:
        with engine.lock("sudoers"):
            # The ledger is read under the sudoers lock: a sudo grant changes the drop-in and the ledger's mirror
            # of it under this lock, so the two agree here unless someone edited the drop-in.
            findings = compare_sudo(read_root_file(DROPIN_PATH), engine.read_ledger())
            if not repair:
                return findings.drift
            # The plan's InstallSudoers and ChangeLedger are an UnderSudoersLock's: this lock is already held.
            return _repaired(engine, findings, None, path=DROPIN_PATH)
    except AgentError as exc:
        return [Drift("unreadable", DROPIN_PATH, None, None, str(exc))]
