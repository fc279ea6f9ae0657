"""The executor: one forwarded request in, one CommandResult out.

    ForwardedRequest -> command name -> handler (validated, planned, applied or dry-run) -> CommandResult

Handlers are registered per command name. A request without a command is logged and answered like the Go agent
does (upstream-protocol.md §5.2 step 3); an unknown command fails with the upstream message. Handlers never
raise for expected failures: they return a failed CommandResult whose error names the problem.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.policy_file import load_policy
from p0_ssh_agent.protocol.forwarded import NO_COMMAND_MESSAGE, CommandResult, ForwardedRequest, command_name
from p0_ssh_agent.provisioning import HANDLERS
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.runtime.jobs import JobKey

Handler = Callable[[ExecutionContext, Mapping[str, object]], Awaitable[CommandResult]]


@dataclass
class CommandExecutor:
    context: ExecutionContext
    handlers: Mapping[str, Handler] = field(default_factory=dict)

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        command = command_name(request)
        if not command:
            return CommandResult(success=True, message=NO_COMMAND_MESSAGE)
        handler = self.handlers.get(command)
        if handler is None:
            return CommandResult(success=False, error=f"unknown command: {_printable(command)}")
        data = request.data
        if not isinstance(data, dict):
            return CommandResult(success=False, error="request body must be a JSON object")
        try:
            return await handler(self.context, data)
        except AgentError as exc:
            return CommandResult(success=False, error=str(exc))


def _printable(text: str) -> str:
    """Echo a hostile command name back without control characters and bounded in length."""
    cleaned = "".join(c if c.isprintable() else "?" for c in text[:64])
    return cleaned + ("..." if len(text) > 64 else "")


def build_executor(
    config: AgentConfig, state_dir: Path, audit_trail: AuditTrail, *, dry_run: bool | None = None
) -> CommandExecutor:
    """Raises PolicyError (exit 78) when the local policy does not load: at start-up nothing starts, on SIGHUP
    the supervisor keeps the executor it has, and with it the old policy."""
    policy = load_policy(config.policy_file)
    dry_run = config.dry_run if dry_run is None else dry_run
    context = ExecutionContext(config, state_dir, dry_run, policy, audit_trail=audit_trail)
    return CommandExecutor(context, HANDLERS)
