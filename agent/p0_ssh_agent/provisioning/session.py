"""provisionSession (revoke only): end every session and process of the user (upstream-protocol.md §6.5).

host.sessions does the work: `loginctl terminate-user <UID>` when logind runs, then a native /proc sweep by UID
(TERM, wait, KILL) that never signals a process it did not first confirm as the user's. Root and system accounts
are refused: ending "all processes of UID 0" is not a revoke.
"""

from __future__ import annotations

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import SessionRequest
from p0_ssh_agent.host import sessions
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine, Plan


def provision_session(engine: Engine, request: SessionRequest, plan: Plan) -> CommandResult:
    name = request.user
    record = engine.managed_user(name)
    if record is None:
        return CommandResult(success=False, error=messages.session_lookup_failed(name, f"user: unknown user {name}"))
    if engine.dry_run:
        count = len(sessions.user_processes(record.uid))
        plan.note(f"end every session and process of {name} (UID {record.uid}): {count} now")
        return CommandResult(success=True, message=messages.dry_run(request.command.value, name))
    result = sessions.terminate_user_sessions(record.uid, name=name)
    return CommandResult(success=True, message=result.message)
