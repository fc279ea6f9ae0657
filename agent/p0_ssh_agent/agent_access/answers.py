"""What an agent-access request is answered (pure): a Refusal or the worker's reply -> CommandResult.

Every answer carries `result` (protocol/forwarded.py sends it as data["result"]): on success what the worker
reported (a read's base64 bytes, a listing, an exec's streams, exit code and duration), on failure
{"kind": <RefusalKind value>} (and "policy" for a Cedar denial), so a client branches on the kind, never on the
text. The text is specific all the same: "denied by policy ssh:sftp-upload:no-exec (forbid)", "outside the
capability: /var/www/app2 is not under /var/www/app", "not found: /var/www/app/missing.txt".

HTTP statuses (docs/ai-agents.md): invalid 400; disabled, account, capability, outside, step-up, policy and refused
files 403; not found 404; already exists and conflicts 409; too large 413; busy 503; a failed worker 500.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from p0_ssh_agent.agent_access.access_model import (
    WORKER_ERROR_KINDS,
    AccessCommand,
    Operation,
    Refusal,
    RefusalKind,
    WorkerReply,
)
from p0_ssh_agent.core import messages
from p0_ssh_agent.protocol.forwarded import CommandResult

STATUS: Final[dict[RefusalKind, int]] = {
    RefusalKind.INVALID: 400,
    RefusalKind.DISABLED: 403,
    RefusalKind.ACCOUNT: 403,
    RefusalKind.CAPABILITY: 403,
    RefusalKind.OUTSIDE: 403,
    RefusalKind.STEP_UP: 403,
    RefusalKind.POLICY: 403,
    RefusalKind.REFUSED_FILE: 403,
    RefusalKind.NOT_FOUND: 404,
    RefusalKind.EXISTS: 409,
    RefusalKind.CONFLICT: 409,
    RefusalKind.TOO_LARGE: 413,
    RefusalKind.BUSY: 503,
    RefusalKind.FAILED: 500,
}
_PREFIXES: Final[dict[RefusalKind, str]] = {
    RefusalKind.INVALID: "invalid",
    RefusalKind.NOT_FOUND: "not found",
    RefusalKind.EXISTS: "already exists",
    RefusalKind.CONFLICT: "conflict",
    RefusalKind.REFUSED_FILE: "refused",
    RefusalKind.TOO_LARGE: "too large",
    RefusalKind.FAILED: "failed",
}
MAX_WORKER_MESSAGE_CHARS = 512  # the worker's text is hostile input: bounded and made printable before it is sent


def refused(refusal: Refusal) -> CommandResult:
    """The answer to a request the line did not run (or whose run the worker refused)."""
    result: dict[str, object] = {"kind": refusal.kind.value}
    if refusal.policy:
        result["policy"] = refusal.policy
    return CommandResult(
        success=False,
        error=refusal.message,
        http_status=STATUS[refusal.kind],
        policy_denied=refusal.kind is RefusalKind.POLICY,
        result=result,
    )


def worker_refusal(reply: WorkerReply) -> Refusal:
    """A failed reply as the Refusal it amounts to: its kind if it is one the worker may report, else FAILED."""
    try:
        kind = RefusalKind(reply.error_kind)
    except ValueError:
        kind = RefusalKind.FAILED
    if kind not in WORKER_ERROR_KINDS:
        kind = RefusalKind.FAILED
    text = printable(reply.message) or "the worker gave no reason"
    return Refusal(kind, f"{_PREFIXES[kind]}: {text}")


def answered(operation: Operation, reply: WorkerReply) -> CommandResult:
    """The answer to an operation the worker ran: its result, and a one-line summary as the message."""
    if not reply.ok:
        return refused(worker_refusal(reply))
    return CommandResult(success=True, message=summary(operation, reply.result), result=dict(reply.result))


def summary(operation: Operation, result: Mapping[str, object]) -> str:
    """One readable line for the answer's message (and the audit entry), from the operation and the worker's
    numbers; never the content."""
    command, paths = operation.command, operation.paths
    where = paths[0] if paths else operation.cwd or "the prefix"
    match command:
        case AccessCommand.FILE_READ:
            return f"read {_number(result, 'length')} bytes from {where}"
        case AccessCommand.FILE_WRITE | AccessCommand.FILE_CREATE:
            verb = "created" if command is AccessCommand.FILE_CREATE else "wrote"
            return f"{verb} {where} ({len(operation.data)} bytes written)"
        case AccessCommand.FILE_MOVE | AccessCommand.FILE_COPY:
            verb = "moved" if command is AccessCommand.FILE_MOVE else "copied"
            return f"{verb} {paths[0]} to {paths[1]}"
        case AccessCommand.DIR_LIST | AccessCommand.DIR_TREE:
            cut = " (truncated)" if result.get("truncated") is True else ""
            return f"listed {where} ({_number(result, 'entries')} entries{cut})"
        case AccessCommand.EXEC:
            streams = result.get("truncatedStreams")
            truncated = [name for name in ("stdout", "stderr") if isinstance(streams, list) and name in streams]
            cut = f", {' and '.join(truncated)} truncated" if truncated else ""
            ended = _exit(result)
            return f"ran {messages.shown(operation.argv[0])} in {where}: {ended}{cut}"
        case _:
            verbs = {
                AccessCommand.FILE_DELETE: "deleted",
                AccessCommand.DIR_CREATE: "created directory",
                AccessCommand.DIR_DELETE: "deleted directory",
                AccessCommand.DIR_DELETE_RECURSIVE: "deleted directory tree",
            }
            return f"{verbs.get(command, command.value)} {where}"


def _exit(result: Mapping[str, object]) -> str:
    if result.get("timedOut") is True:
        return "timed out"
    code, signal = result.get("exitCode"), result.get("signal")
    if isinstance(code, int) and not isinstance(code, bool):
        return f"exit {code}"
    if isinstance(signal, int) and not isinstance(signal, bool):
        return f"killed by signal {signal}"
    return "exit ?"


def _number(result: Mapping[str, object], *names: str) -> str:
    """The first of `names` the result holds as a count: an int, or a list's length."""
    for name in names:
        value = result.get(name)
        if isinstance(value, bool):
            continue
        if isinstance(value, int):
            return str(value)
        if isinstance(value, list):
            return str(len(value))
    return "?"


def printable(text: str) -> str:
    """Hostile text (a worker's message) on one line, without control characters, bounded."""
    cleaned = "".join(char if char.isprintable() else "?" for char in text[:MAX_WORKER_MESSAGE_CHARS])
    return cleaned + ("..." if len(text) > MAX_WORKER_MESSAGE_CHARS else "")
