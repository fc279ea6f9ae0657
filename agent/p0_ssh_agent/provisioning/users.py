"""provisionUser: create the JIT account on grant; on revoke keep, lock or delete it (userRevokeMode).

Compared with the Go agent (upstream-protocol.md §6.2, §12 items 5, 20, 21): an existing account is only "already
there" when it is ours (facts.claim); UIDs come from the ledger's high-water mark under the accounts lock (the pipeline
takes it, and reads the facts under it, for an account to create) and are checked as UID, GID and home owner; a
failed useradd is rolled back; and a revoke really takes access away.

plan_user is pure; the one thing it needs that the facts do not hold, a free UID for an account to create, is read
by new_uid (under the accounts lock) before it. The plans, in the order the applier (host/apply.py) runs them:

    grant, new account    check the name -> ledger records the intent -> groupadd + useradd (a failure: the ledger
                          forgets the intent if no account was made: host/apply.py undoes what was recorded ahead)
    grant, half-made      (killed between groupadd and useradd: the intent and its group are there, nothing else:
                          facts.own_leftover_group) ledger records the intent again, same UID -> useradd into it
    grant, our account    usermod -U -e '' if an earlier revoke locked it
    revoke, lock          usermod -L -e 1 -> end its sessions
    revoke, delete        end its sessions -> its sudo rules out of the drop-in -> (processes left: lock it, fail)
                          -> userdel -r (still logged in: end its sessions again, retry) -> the ledger forgets it
    revoke, no account    (lock or delete; the ledger still holds it: a delete cut off after userdel, or a creation
                          killed before useradd) its sudo rules out -> groupdel the group a half-made creation
                          left (facts.own_leftover_group) -> the ledger forgets it

Only for an account the ledger says the agent created (facts.created_by_agent; issue 14 item 1). An adopted one
(adoptUsers, or a Go agent account adopted by `p0-ssh-agent adopt`) gets keys and sudo rules only: a grant changes
nothing on it (an admin's `usermod -L -e 1` stays), a revoke never locks, unlocks or deletes it (its keys and rules
go with their own revokes).
"""

from __future__ import annotations

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import Action, UserRequest
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.actions import (
    Applied,
    CreateAccount,
    DeleteAccount,
    DeleteLeftoverGroup,
    EditKeyStore,
    EndSessions,
    LockAccount,
    Plan,
    StopIfSurvivors,
    UnlockAccount,
)
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning import sudo_rules
from p0_ssh_agent.provisioning.facts import HostFacts, NotManaged, claim, created_by_agent, own_leftover_group
from p0_ssh_agent.provisioning.planning import PlanBuilder

REVOKE_MODES = ("keep", "lock", "delete")


def new_uid(request: UserRequest, facts: HostFacts, adopted: tuple[str, ...]) -> int | None:
    """The UID for the account a grant is to create (I/O: NSS and the homes; the pipeline holds the accounts lock
    and found no such account under it, so nobody creates it meanwhile); None when no account is to be created."""
    if request.action is not Action.GRANT or claim(facts, adopted) is not None:
        return None
    # Before anything is recorded or allocated: a name no new account may have changes nothing at all.
    accounts.check_new_account_name(request.user)
    recorded = own_leftover_group(facts)
    if recorded is not None:  # the retry of a creation killed before useradd: its UID, taken by its group already
        return recorded
    return accounts.allocate_uid(high_water=facts.ledger.uid_high_water)


def plan_user(
    request: UserRequest, facts: HostFacts, config: AgentConfig, uid: int | None = None
) -> Plan | CommandResult:
    """`uid`: new_uid's, for an account to create."""
    if request.action is Action.GRANT:
        return _grant(request.user, facts, config.adopt_users, uid)
    return _revoke(request, facts, config)


def _grant(name: str, facts: HostFacts, adopted: tuple[str, ...], uid: int | None) -> Plan | CommandResult:
    builder = PlanBuilder(facts.ledger)
    record = builder.claim(facts, adopted)
    if record is not None:
        if created_by_agent(facts, record):
            # An account we created is granted again: undo an earlier revoke's lock, if any.
            builder.add(UnlockAccount(name, adopted))
        # An adopted one stays exactly as its admin left it, locked or not: not ours to unlock.
        return builder.plan(CommandResult(success=True, message=messages.USER_EXISTS))
    # A creation killed between groupadd and useradd: its group is joined, with the UID recorded for it (new_uid's).
    recorded = own_leftover_group(facts)
    uid = recorded if recorded is not None else uid
    if uid is None:
        raise ValueError(f"plan_user: no UID for the account {name} to create (new_uid)")
    now = builder.now
    # The intent goes into the ledger first: after a crash mid-useradd the half-made account is still ours.
    builder.change_ledger(lambda ledger: ledger.record_user(name, uid, now=now), ahead=True)
    builder.add(CreateAccount(name, uid, leftover_group=recorded is not None))
    return builder.plan(CommandResult(success=True, message=messages.user_created(name, uid)))


def _revoke(request: UserRequest, facts: HostFacts, config: AgentConfig) -> Plan | CommandResult:
    name, mode, adopted = request.user, config.user_revoke_mode, config.adopt_users
    if mode == "keep":
        return CommandResult(success=True, message=messages.USER_REVOKE_HANDLED)
    try:
        record = claim(facts, adopted)
    except NotManaged as exc:
        # Not ours: a revoke has nothing to take away here, and succeeding keeps the backend's retries quiet.
        return CommandResult(success=True, message=f"{messages.USER_REVOKE_HANDLED} ({exc}: left as it is)")
    if record is None:
        gone = CommandResult(success=True, message=f"{messages.USER_REVOKE_HANDLED} (user {name} does not exist)")
        if name not in facts.ledger.users:
            return gone
        # The account is gone but the ledger still holds it: a delete that was cut off (killed after userdel,
        # before the ledger forgot the user; tests/test_crash_points.py), or a creation killed before useradd.
        # Finish it, so a later account of the same name, made by someone else, is never taken for the agent's:
        # its rules, the group a half-made creation left, and its record go.
        builder = PlanBuilder(facts.ledger)
        builder.add(sudo_rules.remove_user_rules(name))
        leftover = own_leftover_group(facts)
        if leftover is not None:
            builder.add(DeleteLeftoverGroup(name, leftover))
        builder.change_ledger(lambda ledger: ledger.forget_user(name))
        return builder.plan(gone)
    if not created_by_agent(facts, record):
        # Adopted: its keys and sudo rules go with their own revokes; the account is not the agent's to lock or delete.
        return CommandResult(
            success=True,
            message=f"{messages.USER_REVOKE_HANDLED} (user {name} is adopted, not created by p0-ssh-agent: "
            "account left as it is)",
        )
    builder = PlanBuilder(facts.ledger)
    # Grants of this same request are being revoked by their own commands (they share the requestId, §6.9);
    # grants of other requests mean someone else still has access through this account.
    remaining = builder.ledger.grants_held(name, besides=request.request_id)
    if remaining:
        return builder.plan(
            CommandResult(
                success=True,
                message=f"{messages.USER_REVOKE_HANDLED} ({name} still holds {remaining} other grant(s); account kept)",
            )
        )
    if mode == "lock":
        builder.add(LockAccount(name, adopted), EndSessions(record.uid, name))

        def locked(applied: Applied) -> CommandResult:
            assert applied.sessions is not None  # noqa: S101 - EndSessions ran
            if not applied.sessions.ended:
                return CommandResult(
                    success=False, error=f"User {name} locked and expired, but {applied.sessions.message}"
                )
            return CommandResult(success=True, message=f"User {name} locked and expired; {applied.sessions.message}")

        return builder.plan(locked)
    builder.add(
        EndSessions(record.uid, name),
        sudo_rules.remove_user_rules(name),  # a later account of the same name must not inherit them
        # userdel refuses (exit 8) while processes are left. Locked meanwhile, so nothing new starts as the user;
        # the backend's retry of the revoke deletes the account.
        StopIfSurvivors(then=(LockAccount(name, adopted),)),
        DeleteAccount(name, record.uid, adopted),
        # Its file in the key store (keyStore store) goes with it: a later account of the same name starts empty.
        EditKeyStore(facts.key_dir, name, record.gid, lambda _content: b"", create=False),
    )
    builder.change_ledger(lambda ledger: ledger.forget_user(name))

    def deleted(applied: Applied) -> CommandResult:
        assert applied.sessions is not None  # noqa: S101 - EndSessions ran
        if not applied.sessions.ended:
            return CommandResult(success=False, error=f"User {name} locked, not deleted: {applied.sessions.message}")
        return CommandResult(success=True, message=f"User {name} deleted; {applied.sessions.message}")

    return builder.plan(deleted)
