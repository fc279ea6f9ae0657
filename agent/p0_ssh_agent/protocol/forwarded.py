"""The `call` payload: braekhus's ForwardedRequest in, the agent's ForwardedResponse out (pure).

Shapes are upstream-protocol.md §4 and §5. Parsing is tolerant where upstream versions differed (header values
may be strings or lists; the command may sit at the top level in one old version) and strict about types that
would otherwise be guessed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus

NO_COMMAND_MESSAGE = "Request logged - no command specified"

_SENSITIVE_HEADER = re.compile(r"authorization|cookie|x-api-key|token|secret", re.IGNORECASE)
REDACTED = "[REDACTED]"


class InvalidParams(ValueError):
    """The `call` params are not a ForwardedRequest."""


@dataclass(frozen=True, slots=True)
class ForwardedRequest:
    headers: Mapping[str, str | list[str]]
    method: str
    path: str
    params: Mapping[str, object]
    data: object
    timeout_millis: int | None
    # The command name, worked out once here (_command_name) and carried to the worker, the pipeline and the answer.
    command: str = ""


def _string(params: Mapping[str, object], name: str) -> str:
    value = params.get(name, "")
    if value is None:
        return ""
    if not isinstance(value, str):
        raise InvalidParams(f"{name} must be a string")
    return value


def _headers(value: object) -> dict[str, str | list[str]]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise InvalidParams("headers must be an object")
    headers: dict[str, str | list[str]] = {}
    for name, item in value.items():
        # Node lower-cases names already; a hand-made request might not, and lookups here are by lower case.
        if isinstance(item, str):
            headers[name.lower()] = item
        elif isinstance(item, list) and all(isinstance(v, str) for v in item):
            headers[name.lower()] = list(item)
        elif isinstance(item, int | float) and not isinstance(item, bool):
            headers[name.lower()] = str(item)  # a numeric value from a hand-written backend means its text
        else:
            raise InvalidParams(f"headers[{name!r}] must be a string or a list of strings")
    return headers


def _timeout(options: object) -> int | None:
    if options is None:
        return None
    if not isinstance(options, dict):
        raise InvalidParams("options must be an object")
    value = options.get("timeoutMillis")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise InvalidParams("options.timeoutMillis must be a positive integer")
    return value


def parse_forwarded_request(params: object) -> ForwardedRequest:
    """Validate `call` params (§5.1). Missing members take defaults; present ones must have the right type."""
    if not isinstance(params, dict):
        raise InvalidParams("params must be an object (a ForwardedRequest)")
    query = params.get("params")
    if query is None:
        query = {}
    if not isinstance(query, dict):
        raise InvalidParams("params.params must be an object")
    data = params.get("data")
    return ForwardedRequest(
        headers=_headers(params.get("headers")),
        method=_string(params, "method"),
        path=_string(params, "path"),
        params=query,
        data=data,
        timeout_millis=_timeout(params.get("options")),
        command=_command_name(data, params.get("command")),
    )


def _command_name(data: object, top_level: object) -> str:
    """data.command when data is an object and command a string (§5.2); else the top-level field, which only one
    intermediate Go version sent (§5.1; kept to be tolerant); else "". Any string, hostile ones too: each user of
    it bounds it for its purpose (runtime/jobs.py for locks and logs, the pipeline for an error's echo)."""
    if isinstance(data, dict):
        command = data.get("command")
        if isinstance(command, str):
            return command
    return top_level if isinstance(top_level, str) else ""


def redact_headers(headers: Mapping[str, str | list[str]]) -> dict[str, str | list[str]]:
    """braekhus forwards the caller's authorization header (§12 item 13): never log it."""
    return {name: (REDACTED if _SENSITIVE_HEADER.search(name) else value) for name, value in headers.items()}


@dataclass(frozen=True, slots=True)
class CommandResult:
    success: bool
    message: str = ""
    error: str = ""
    output: str | None = None
    http_status: int | None = None  # overrides 200/500, e.g. 403 for a policy denial, 503 when busy
    policy_denied: bool = False  # the local policy refused it (counted in the metrics; not sent)
    # A structured answer, sent as data["result"] (agent access, issue 17: a read's bytes, an exec's streams; on a
    # failure {"kind": ...}). None for every other command, whose answers stay exactly what they were.
    result: Mapping[str, object] | None = None

    def __post_init__(self) -> None:
        # braekhus copies `status` straight into the HTTP response: a non-HTTP number would fail there, not here.
        if self.http_status is not None and not 100 <= self.http_status <= 599:
            raise ValueError(f"http_status {self.http_status} is not an HTTP status code (100-599)")


# The last whole second timestamp() formatted, and its text: every answer carries one, most share their second.
_last_timestamp: dict[datetime, str] = {}  # at most one entry: the second and its text


def timestamp(now: datetime) -> str:
    """Go's time.Now().UTC().Format(time.RFC3339): whole seconds and "Z". A naive datetime is taken as UTC."""
    if now.tzinfo is not UTC:  # the runtime passes datetime.now(UTC); anything else is converted, not cached
        moment = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%SZ")
    second = now.replace(microsecond=0)
    text = _last_timestamp.get(second)
    if text is None:
        text = second.strftime("%Y-%m-%dT%H:%M:%SZ")
        _last_timestamp.clear()
        _last_timestamp[second] = text
    return text


_STATUS_TEXTS: dict[int, str] = {}  # status -> reason phrase; at most 500 entries (CommandResult bounds statuses)


def status_text(status: int) -> str:
    """The reason phrase Node would send ("OK", "Internal Server Error", "Forbidden", ...)."""
    text = _STATUS_TEXTS.get(status)
    if text is None:
        try:
            text = HTTPStatus(status).phrase
        except ValueError:
            text = "Unknown"
        if 100 <= status <= 599:
            _STATUS_TEXTS[status] = text
    return text


def forwarded_response(result: CommandResult, *, client_id: str, command: str, now: datetime) -> dict[str, object]:
    """The exact upstream shape (§5.4): success carries message (+ output when non-empty), failure carries error;
    an agent-access answer adds its structured `result` (CommandResult.result) last."""
    status = result.http_status or (200 if result.success else 500)
    data: dict[str, object] = {"success": result.success}
    if result.success:
        data["message"] = result.message
    else:
        data["error"] = result.error
    data.update(
        client_id=client_id,
        command=command,
        timestamp=timestamp(now),
        status="completed" if result.success else "failed",
    )
    if result.success and result.output:
        data["output"] = result.output
    if result.result is not None:
        data["result"] = dict(result.result)
    return {
        "headers": {"content-type": "application/json"},
        "status": status,
        "statusText": status_text(status),
        "data": data,
    }
