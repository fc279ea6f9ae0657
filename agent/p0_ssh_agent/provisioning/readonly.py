"""Read-only commands, collected natively (no shell): listUsers, runAudit, collectSudoshRecordings.

They run for real even in dry-run (upstream-protocol.md §11: the Go agent's dry-run answered them with nothing).
Outputs are capped at 1 MiB with a truncation marker (host.inventory.cap_output).
"""

from __future__ import annotations

from pathlib import Path

from p0_ssh_agent.core import gojson, messages
from p0_ssh_agent.core.requests import AuditRequest, ListUsersRequest, SudoshRequest
from p0_ssh_agent.host import inventory, sudosh
from p0_ssh_agent.protocol.forwarded import CommandResult

ReadOnlyRequest = ListUsersRequest | AuditRequest | SudoshRequest


def run_read_only(request: ReadOnlyRequest, key_dir: Path | None = None) -> CommandResult:
    """Blocking: call it from a worker thread. key_dir: the key store, whose files runAudit shows too."""
    if isinstance(request, ListUsersRequest):
        names = inventory.list_users()
        # Go's json.Marshal, byte for byte (core/gojson.py), except for one thing: upstream answered "null" for an
        # empty list (§12 item 19); "[]" means the same to any reader that expects a list.
        output = gojson.marshal_strings(names)
        return CommandResult(success=True, message=messages.users_found(len(names)), output=output)
    if isinstance(request, AuditRequest):
        return CommandResult(
            success=True, message=messages.AUDIT_COMPLETED, output=inventory.run_audit(key_dir=key_dir)
        )
    try:
        output = sudosh.collect_sudosh(request.user, request.start, request.end)
    except sudosh.SudoshLogMissing as exc:
        return CommandResult(success=False, error=messages.sudosh_failed("exit status 1", str(exc)))
    return CommandResult(success=True, message=messages.SUDOSH_COLLECTED, output=output)
