"""When an account's last grant goes, its access goes with it (issue 14 item 5).

A JIT user can append a key line of their own to ~/.ssh/authorized_keys while a grant lasts; removing the agent's
marked pair alone leaves that line working. So when a revoke (a key or CA revoke, a sudo revoke, the expiry sweep,
`revoke-all`, the offline revoke: all of them go through these handlers) leaves an account the agent CREATED with
no live grant, the same plan locks it (`usermod -L -e 1`: sshd then refuses every key, the user's own included)
and ends its sessions.

A live grant is what the ledger holds for the user: a key or CA line of any request, a sudo rule. The account
entry itself is not one (provisionUser gives an account, not access). Never for an adopted account (the agent did
not create it: item 1), and never with `userRevokeMode: keep`, the Go agent's behaviour, which `doctor` and
`status` then name as leaving the user's own keys working. `delete` locks here too: deleting is provisionUser's.

The lock is undone by the next grant of any kind (key, CA, sudo, provisionUser) for a created account, so a key
grant needs no provisionUser grant before it (UnlockAccount runs usermod only if the account is locked).
"""

from __future__ import annotations

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import Answer, Applied, EndSessions, LockAccount, UnlockAccount
from p0_ssh_agent.host.ledger import Ledger
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.facts import HostFacts, created_by_agent
from p0_ssh_agent.provisioning.planning import PlanBuilder

KEEP_LEAVES_OWN_KEYS = (
    "userRevokeMode is keep: when a created account's last grant is revoked or expires, the account is not locked, "
    "so any key its user added to ~/.ssh/authorized_keys during the grant still logs in"
)


def end_access_if_last(
    builder: PlanBuilder, facts: HostFacts, record: UserRecord, config: AgentConfig, *, after: Ledger | None = None
) -> bool:
    """Add LockAccount + EndSessions when the plan so far (builder.ledger, or `after`: the records as the plan's
    changes under a lock will leave them) leaves a created account with no live grant; True if it did. Even when
    this revoke removed nothing: a retry after a crash between the ledger commit and the lock converges."""
    if config.user_revoke_mode == "keep" or not created_by_agent(facts, record):
        return False
    if (builder.ledger if after is None else after).grants_held(record.name):
        return False
    builder.add(LockAccount(record.name, config.adopt_users), EndSessions(record.uid, record.name))
    return True


def unlock_for_grant(builder: PlanBuilder, facts: HostFacts, record: UserRecord, config: AgentConfig) -> None:
    """A grant for a created account undoes an earlier lock (a no-op, no usermod, if it is not locked)."""
    if created_by_agent(facts, record):
        builder.add(UnlockAccount(record.name, config.adopt_users))


def locked_answer(name: str, result: CommandResult) -> Answer:
    """The revoke's answer: its own message (the backend's, unchanged), with what locking and ending the sessions
    came to as its output; a failure if processes survived (a retry of the revoke locks and ends them again)."""

    def answer(applied: Applied) -> CommandResult:
        sessions = applied.sessions
        if sessions is None or sessions.described:
            return result
        note = f"no grant left: {name} locked and expired"
        if not sessions.ended:
            return CommandResult(success=False, error=f"{result.message}; {note}, but {sessions.message}")
        return CommandResult(success=True, message=result.message, output=f"{note}; {sessions.message}")

    return answer
