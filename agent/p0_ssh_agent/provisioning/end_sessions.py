"""provisionSession (revoke only): end every session and process of the user (upstream-protocol.md §6.5).

plan_session is pure: one EndSessions action, which the applier runs through host.sessions: `loginctl
terminate-user <UID>` when logind runs, then SIGTERM to what a /proc scan finds, then SIGKILL rounds that include
kill(-1) sent as the user, which a fork chain cannot outrun. The answer is a success only when no process of the
UID is left; otherwise it is a failure naming the survivors (issue 11 item 5). Root and system accounts are
refused: ending "all processes of UID 0" is not a revoke.
"""

from __future__ import annotations

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import SessionRequest
from p0_ssh_agent.host.actions import Applied, EndSessions, Plan
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.facts import HostFacts
from p0_ssh_agent.provisioning.planning import PlanBuilder


def plan_session(request: SessionRequest, facts: HostFacts, config: AgentConfig) -> Plan | CommandResult:
    name = request.user
    builder = PlanBuilder(facts.ledger)
    record = builder.claim(facts, config.adopt_users)
    if record is None:
        return CommandResult(success=False, error=messages.session_lookup_failed(name, f"user: unknown user {name}"))
    builder.add(EndSessions(record.uid, name))

    def answer(applied: Applied) -> CommandResult:
        ended = applied.sessions
        assert ended is not None  # noqa: S101 - EndSessions ran
        if ended.described:  # a dry run counted the processes: its description says how many
            return CommandResult(success=True, message=messages.dry_run(request.command.value, name))
        if not ended.ended:
            return CommandResult(success=False, error=ended.message)
        return CommandResult(success=True, message=ended.message)

    return builder.plan(answer)
