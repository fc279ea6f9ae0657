"""Read-only commands, collected natively (no shell): listUsers now; runAudit and sudosh export with issue 4."""

from __future__ import annotations

import json
import pwd

import trio

from p0_ssh_agent.core.requests import Command, ProvisioningRequest
from p0_ssh_agent.protocol.forwarded import CommandResult

NOLOGIN_SHELLS = frozenset({"/sbin/nologin", "/usr/sbin/nologin", "/bin/false", "/usr/bin/false"})
COMMANDS = frozenset({Command.LIST_USERS})


def login_users(entries: list[pwd.struct_passwd]) -> list[str]:
    """Users with a login shell, in NSS order (upstream-protocol.md §6.7)."""
    return [e.pw_name for e in entries if e.pw_shell and e.pw_shell not in NOLOGIN_SHELLS]


async def run(request: ProvisioningRequest) -> CommandResult:
    entries = await trio.to_thread.run_sync(pwd.getpwall)
    names = login_users(entries)
    # Upstream answered "null" for an empty list (§12 item 19); "[]" parses the same for any JSON reader.
    return CommandResult(success=True, message=f"found {len(names)} users", output=json.dumps(names))
