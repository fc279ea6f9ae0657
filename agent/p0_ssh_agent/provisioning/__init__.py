"""Command handlers: validate the request, then plan (dry-run) or apply it.

Every handler starts with full validation (core.requests), so a hostile field is refused with a message naming
it before anything looks at the host. Read-only commands run for real even in dry-run (upstream-protocol.md §11:
the Go agent's dry-run answered them with nothing, a weak point).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from p0_ssh_agent.core.errors import RequestInvalid
from p0_ssh_agent.core.requests import Command, parse_request
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning import plans, readonly
from p0_ssh_agent.provisioning.context import ExecutionContext

Handler = Callable[[ExecutionContext, Mapping[str, object]], Awaitable[CommandResult]]


def _handler(command: Command) -> Handler:
    async def handle(context: ExecutionContext, data: Mapping[str, object]) -> CommandResult:
        try:
            request = parse_request(command.value, data)
        except RequestInvalid as exc:
            return CommandResult(success=False, error=exc.message)
        if command in readonly.COMMANDS:
            return await readonly.run(request)
        if context.dry_run:
            return CommandResult(success=True, message=f"DRY-RUN: {plans.summary(request)}", output=plans.plan(request))
        return CommandResult(
            success=False,
            error=f"{command.value}: applying changes on the host is not available in this build; use dry-run",
        )

    return handle


HANDLERS: dict[str, Handler] = {command.value: _handler(command) for command in Command}
