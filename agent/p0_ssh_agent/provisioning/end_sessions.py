"""provisionSession (revoke only): end every session and process of the user (upstream-protocol.md §6.5).

host.sessions does the work: `loginctl terminate-user <UID>` when logind runs, then SIGTERM to what a /proc scan
finds, then SIGKILL rounds that include kill(-1) sent as the user, which a fork chain cannot outrun. The answer is a
success only when no process of the UID is left; otherwise it is a failure naming the survivors (issue 11 item 5).
Root and system accounts are refused: ending "all processes of UID 0" is not a revoke.
"""

from __future__ import annotations

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import SessionRequest
from p0_ssh_agent.host import sessions
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine, LedgerRecords, Plan
from p0_ssh_agent.provisioning.facts import HostFacts, claimed_account


def provision_session(
    engine: Engine, request: SessionRequest, facts: HostFacts, records: LedgerRecords, plan: Plan
) -> CommandResult:
    name = request.user
    record = claimed_account(facts, records, engine.config.adopt_users)
    if record is None:
        return CommandResult(success=False, error=messages.session_lookup_failed(name, f"user: unknown user {name}"))
    if engine.dry_run:
        count = len(engine.processes.pids(record.uid))
        plan.note(f"end every session and process of {name} (UID {record.uid}): {count} now")
        return CommandResult(success=True, message=messages.dry_run(request.command.value, name))
    result = sessions.terminate_user_sessions(record.uid, name=name, processes=engine.processes)
    if not result.ended:
        return CommandResult(success=False, error=result.message)
    return CommandResult(success=True, message=result.message)
