"""provisionUser: create the JIT account on grant; on revoke keep, lock or delete it (userRevokeMode).

Compared with the Go agent (upstream-protocol.md §6.2, §12 items 5, 20, 21): an existing account is only "already
there" when it is ours (facts.claim); UIDs come from the ledger's high-water mark under the accounts lock (the pipeline
takes it, and reads the facts under it, for an account to create) and are checked as UID, GID and home owner; a
failed useradd is rolled back; and a revoke really takes access away.
"""

from __future__ import annotations

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import Action, UserRequest
from p0_ssh_agent.host import accounts, sessions
from p0_ssh_agent.host.ledger import Ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning import sudo_rules
from p0_ssh_agent.provisioning.engine import Engine, LedgerRecords, Plan
from p0_ssh_agent.provisioning.facts import HostFacts, NotManaged, claimed_account

REVOKE_MODES = ("keep", "lock", "delete")


def provision_user(
    engine: Engine, request: UserRequest, facts: HostFacts, records: LedgerRecords, plan: Plan
) -> CommandResult:
    if request.action is Action.GRANT:
        return _grant(engine, request.user, facts, records, plan)
    return _revoke(engine, request, facts, records, plan)


def _grant(engine: Engine, name: str, facts: HostFacts, records: LedgerRecords, plan: Plan) -> CommandResult:
    record = claimed_account(facts, records, engine.adopted())
    if record is not None:
        return _reactivate(engine, name, plan)
    # Before the ledger records the intent: a name no new account may have changes nothing at all.
    accounts.check_new_account_name(name)
    # The pipeline holds the accounts lock and found no such account under it: nobody creates it meanwhile.
    uid = accounts.allocate_uid(high_water=records.committed.uid_high_water)
    # The intent goes into the ledger first: after a crash mid-useradd the half-made account is still ours.
    records.change(lambda ledger: ledger.record_user(name, uid))
    try:
        _record, argvs = accounts.create_user(name, uid=uid, dry_run=engine.dry_run)
    except BaseException:
        records.change(lambda ledger: _forget_if_absent(ledger, name))
        raise
    for argv in argvs:
        plan.command(argv)
    return CommandResult(success=True, message=messages.user_created(name, uid))


def _forget_if_absent(ledger: Ledger, name: str) -> None:
    if accounts.lookup_user(name) is None:
        ledger.users.pop(name, None)


def _reactivate(engine: Engine, name: str, plan: Plan) -> CommandResult:
    """An account we manage is granted again: undo an earlier revoke's lock, if any."""
    if accounts.is_locked(name):
        for argv in accounts.unlock_user(name, dry_run=engine.dry_run, adopted=engine.adopted()):
            plan.command(argv)
    return CommandResult(success=True, message=messages.USER_EXISTS)


def _other_grants(ledger: Ledger, name: str, request_id: str) -> int:
    keys = sum(1 for rid in ledger.keys.get(name, {}) if rid != request_id)
    rules = sum(1 for rid, entry in ledger.sudo.items() if entry.user == name and rid != request_id)
    return keys + rules


def _revoke(
    engine: Engine, request: UserRequest, facts: HostFacts, records: LedgerRecords, plan: Plan
) -> CommandResult:
    name, mode = request.user, engine.config.user_revoke_mode
    if mode == "keep":
        return CommandResult(success=True, message=messages.USER_REVOKE_HANDLED)
    try:
        record = claimed_account(facts, records, engine.adopted())
    except NotManaged as exc:
        # Not ours: a revoke has nothing to take away here, and succeeding keeps the backend's retries quiet.
        return CommandResult(success=True, message=f"{messages.USER_REVOKE_HANDLED} ({exc}: left as it is)")
    if record is None:
        return CommandResult(success=True, message=f"{messages.USER_REVOKE_HANDLED} (user {name} does not exist)")
    # Grants of this same request are being revoked by their own commands (they share the requestId, §6.9);
    # grants of other requests mean someone else still has access through this account.
    remaining = _other_grants(records.committed, name, request.request_id)
    if remaining:
        return CommandResult(
            success=True,
            message=f"{messages.USER_REVOKE_HANDLED} ({name} still holds {remaining} other grant(s); account kept)",
        )
    if mode == "lock":
        for argv in accounts.lock_user(name, dry_run=engine.dry_run, adopted=engine.adopted()):
            plan.command(argv)
        ended, outcome = _end_sessions(engine, record.uid, name, plan)
        if not ended:
            return CommandResult(success=False, error=f"User {name} locked and expired, but {outcome}")
        return CommandResult(success=True, message=f"User {name} locked and expired; {outcome}")
    ended, outcome = _end_sessions(engine, record.uid, name, plan)
    sudo_rules.remove_user_rules(engine, name, plan, records)  # a later account of the same name must not inherit them
    if not ended:
        # userdel refuses (exit 8) while processes are left. Locked meanwhile, so nothing new starts as the user;
        # the backend's retry of the revoke deletes the account.
        accounts.lock_user(name, adopted=engine.adopted())
        return CommandResult(success=False, error=f"User {name} locked, not deleted: {outcome}")
    try:
        argvs = accounts.delete_user(name, dry_run=engine.dry_run, adopted=engine.adopted())
    except accounts.UserBusy:
        _end_sessions(engine, record.uid, name, plan)
        argvs = accounts.delete_user(name, dry_run=engine.dry_run, adopted=engine.adopted())
    for argv in argvs:
        plan.command(argv)
    records.change(lambda ledger: ledger.forget_user(name))
    return CommandResult(success=True, message=f"User {name} deleted; {outcome}")


def _end_sessions(engine: Engine, uid: int, name: str, plan: Plan) -> tuple[bool, str]:
    """(whether no process of the user is left, what to say); a dry run only notes how many there are now."""
    if engine.dry_run:
        count = len(engine.processes.pids(uid))
        plan.note(f"end every session and process of {name} (UID {uid}): {count} now")
        return True, f"would end {count} processes"
    result = sessions.terminate_user_sessions(uid, name=name, processes=engine.processes)
    return result.ended, result.message
