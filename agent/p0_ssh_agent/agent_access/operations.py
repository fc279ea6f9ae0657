"""One agent-access request body, parsed (pure): parse_operation(command, data) -> Operation, or OperationInvalid.

The body is hostile until here. Unlike core/requests.py (which reads P0's commands as Go's encoding/json does, for
compatibility with a backend written against it), this schema is new and strict:

* members are matched by their exact camelCase name (`requestId`, never `requestid`);
* a member the command does not take is refused, and the refusal lists the names (bounded). Above all a plain
  `"cosigner": true` is refused loudly: step-up is a cosignature from an approver's key, never a flag the sender
  sets (cosign.py decides context.cosigner);
* JSON null is a wrong type, not an absent member; a boolean is never a number (Python's bool is an int).

Which members each command takes is COMMAND_MEMBERS, the one table; each member's rule is in MEMBER_RULES.
Messages name the member and what is wrong, never echo a long or binary value (a UCAN or a cosignature is a secret
for the log's purposes, file data is the user's).
"""

from __future__ import annotations

import binascii
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from p0_ssh_agent.agent_access.access_model import (
    DEFAULT_EXEC_SECONDS,
    MAX_EXEC_ARG_BYTES,
    MAX_EXEC_ARGS,
    MAX_EXEC_SECONDS,
    MAX_READ_BYTES,
    MAX_TREE_DEPTH,
    MAX_WRITE_BYTES,
    AccessCommand,
    Operation,
)
from p0_ssh_agent.agent_access.scoped_paths import PathRefused, components
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import REQUEST_ID_RE, USER_NAME_RE, is_user_name, json_type

MAX_HOST_CHARS = 253
MAX_UCAN_BYTES = 16 * 1024
MAX_COSIGNATURE_BYTES = 8 * 1024
MAX_OFFSET = 2**53  # the largest integer a JSON number carries exactly (JavaScript's Number.MAX_SAFE_INTEGER + 1)
# Base64 of MAX_WRITE_BYTES: the text is refused on its length before a byte is decoded.
MAX_DATA_CHARS = 4 * -(-MAX_WRITE_BYTES // 3)
MAX_NAMES_SHOWN = 8  # unknown members listed in a refusal

_REQUEST_ID = re.compile(REQUEST_ID_RE.strip("^$"), re.ASCII)
# RFC 1123 labels: letters, digits and inner hyphens, 1 to 63 characters each.
_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?", re.ASCII)
# Compact JWT/JWS: base64url segments separated by dots; checked so no control character reaches a later message.
_COMPACT_JWS = re.compile(r"[A-Za-z0-9_-]+(?:\.[A-Za-z0-9_-]*)+", re.ASCII)


class OperationInvalid(ValueError):
    """The body is not a valid agent-access request; `message` names the member and what is wrong with it."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


@dataclass(frozen=True)
class CommandMembers:
    required: frozenset[str]
    optional: frozenset[str] = frozenset()


def _members(required: set[str], optional: set[str] | None = None) -> CommandMembers:
    return CommandMembers(frozenset(required), frozenset(optional or ()))


# Every command takes these; `command` repeats the forwarded request's command (it must then be the same).
COMMON_MEMBERS = _members({"requestId", "username", "ucan"}, {"command", "host", "cosignature"})
# The one table of what each command takes besides COMMON_MEMBERS. ssh_file_write: exactly one of offset and
# append (checked in _check_combinations); exec's working directory is `cwd`, not a path it acts on.
COMMAND_MEMBERS: dict[AccessCommand, CommandMembers] = {
    AccessCommand.FILE_READ: _members({"path"}, {"offset", "length"}),
    AccessCommand.FILE_WRITE: _members({"path", "data"}, {"offset", "append", "truncate"}),
    AccessCommand.FILE_CREATE: _members({"path"}, {"data", "overwrite"}),
    AccessCommand.FILE_DELETE: _members({"path"}),
    AccessCommand.FILE_MOVE: _members({"source", "destination"}, {"overwrite"}),
    AccessCommand.FILE_COPY: _members({"source", "destination"}, {"overwrite"}),
    AccessCommand.DIR_LIST: _members({"path"}),
    AccessCommand.DIR_TREE: _members({"path"}, {"depth"}),
    AccessCommand.DIR_CREATE: _members({"path"}),
    AccessCommand.DIR_DELETE: _members({"path"}),
    AccessCommand.DIR_DELETE_RECURSIVE: _members({"path"}),
    AccessCommand.EXEC: _members({"argv"}, {"cwd", "timeoutSeconds"}),
}


def parse_operation(command: str, data: Mapping[str, object]) -> Operation:
    """The Operation `data` asks for under `command` (an AccessCommand value), or OperationInvalid."""
    try:
        access_command = AccessCommand(command)
    except ValueError:
        raise OperationInvalid(f"command {messages.shown(str(command))} is not an agent-access command") from None
    if not isinstance(data, Mapping):
        raise OperationInvalid(f"{command}: the request body must be a JSON object")
    takes = COMMAND_MEMBERS[access_command]
    required, optional = COMMON_MEMBERS.required | takes.required, COMMON_MEMBERS.optional | takes.optional
    _refuse_unknown(access_command, data, required | optional)
    missing = sorted(required - data.keys())
    if missing:
        raise OperationInvalid(f"{command}: missing {', '.join(missing)}")
    values = {name: MEMBER_RULES[name](name, value) for name, value in data.items()}
    if values.get("command", command) != command:
        raise OperationInvalid(f"command: the body says {messages.shown(str(values['command']))}, not {command}")
    _check_combinations(access_command, values)
    return _operation(access_command, values)


def _refuse_unknown(command: AccessCommand, data: Mapping[str, object], allowed: frozenset[str]) -> None:
    unknown = [name for name in data if name not in allowed]
    if not unknown:
        return
    if "cosigner" in unknown:
        raise OperationInvalid(
            "cosigner is not a request member and counts for nothing: step-up is a `cosignature` signed by an "
            "approver key listed on this host"
        )
    shown = ", ".join(messages.shown(str(name), limit=40) for name in unknown[:MAX_NAMES_SHOWN])
    more = f" and {len(unknown) - MAX_NAMES_SHOWN} more" if len(unknown) > MAX_NAMES_SHOWN else ""
    raise OperationInvalid(f"{command}: unknown or not taken by this command: {shown}{more}")


def _check_combinations(command: AccessCommand, values: Mapping[str, object]) -> None:
    if command is not AccessCommand.FILE_WRITE:
        return
    if ("offset" in values) == ("append" in values):
        raise OperationInvalid("ssh_file_write: give exactly one of offset and append")
    if values.get("append") is False:
        raise OperationInvalid("append: must be true when given (give offset to write in place)")
    if values.get("truncate") and values.get("append"):
        raise OperationInvalid("truncate: not with append (an append never cuts the file)")


def _operation(command: AccessCommand, values: Mapping[str, object]) -> Operation:
    """The Operation of values every member's rule has accepted (so each has its rule's type)."""

    def text(name: str) -> str:
        value = values.get(name)
        return value if isinstance(value, str) else ""

    def number(name: str, default: int | None) -> int | None:
        value = values.get(name)
        return value if isinstance(value, int) and not isinstance(value, bool) else default

    data, argv = values.get("data"), values.get("argv")
    if "source" in values:
        paths: tuple[str, ...] = (text("source"), text("destination"))
    else:
        paths = (text("path"),) if "path" in values else ()
    reading = command is AccessCommand.FILE_READ
    return Operation(
        command=command,
        request_id=text("requestId"),
        username=text("username"),
        host=text("host"),
        paths=paths,
        ucan=text("ucan"),
        cosignature=text("cosignature"),
        data=data if isinstance(data, bytes) else b"",
        offset=number("offset", 0 if reading else None),
        length=number("length", MAX_READ_BYTES if reading else None),
        append=values.get("append") is True,
        truncate=values.get("truncate") is True,
        overwrite=values.get("overwrite") is True,
        depth=number("depth", None) or 1,
        argv=argv if isinstance(argv, tuple) else (),
        cwd=text("cwd"),
        timeout_seconds=number("timeoutSeconds", None) or DEFAULT_EXEC_SECONDS,
    )


# --- each member's rule: (member, hostile value) -> the value, or OperationInvalid -------------------------------


def _string(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OperationInvalid(f"{name}: must be a string (got {json_type(value)})")
    return value


def _request_id(name: str, value: object) -> str:
    text = _string(name, value)
    if not _REQUEST_ID.fullmatch(text):
        raise OperationInvalid(f"{name}: {messages.shown(text)} must match {REQUEST_ID_RE}")
    return text


def _username(name: str, value: object) -> str:
    text = _string(name, value)
    if not is_user_name(text):
        raise OperationInvalid(f"{name}: {messages.shown(text)} must match {USER_NAME_RE}")
    return text


def _host(name: str, value: object) -> str:
    text = _string(name, value)
    if len(text) > MAX_HOST_CHARS:
        raise OperationInvalid(f"{name}: longer than {MAX_HOST_CHARS} characters")
    if not all(_HOST_LABEL.fullmatch(label) for label in text.split(".")):
        raise OperationInvalid(f"{name}: {messages.shown(text)} is not a host name (RFC 1123 labels joined by dots)")
    return text


def _compact_token(limit: int) -> Callable[[str, object], str]:
    def rule(name: str, value: object) -> str:
        text = _string(name, value)
        if len(text) > limit:  # characters: a longer text cannot be an ASCII token of `limit` bytes
            raise OperationInvalid(f"{name}: longer than {limit} bytes")
        if not _COMPACT_JWS.fullmatch(text):
            raise OperationInvalid(f"{name}: not in the compact JWS form (base64url segments joined by dots)")
        return text

    return rule


def _path(name: str, value: object) -> str:
    if not isinstance(value, str):
        raise OperationInvalid(f"{name}: must be a string (got {json_type(value)})")
    try:
        components(value, name)
    except PathRefused as exc:
        raise OperationInvalid(str(exc)) from None
    return value


def _data(name: str, value: object) -> bytes:
    text = _string(name, value)
    if len(text) > MAX_DATA_CHARS:
        raise OperationInvalid(f"{name}: more than {MAX_WRITE_BYTES} bytes (the most one call writes)")
    try:
        decoded = binascii.a2b_base64(text, strict_mode=True)
    except (binascii.Error, ValueError):  # ValueError: a non-ASCII character
        raise OperationInvalid(f"{name}: not standard base64 with padding") from None
    if len(decoded) > MAX_WRITE_BYTES:
        raise OperationInvalid(f"{name}: more than {MAX_WRITE_BYTES} bytes (the most one call writes)")
    return decoded


def _boolean(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise OperationInvalid(f"{name}: must be true or false (got {json_type(value)})")
    return value


def _integer(low: int, high: int) -> Callable[[str, object], int]:
    def rule(name: str, value: object) -> int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise OperationInvalid(f"{name}: must be an integer (got {json_type(value)})")
        if not low <= value <= high:
            raise OperationInvalid(f"{name}: must be between {low} and {high}")
        return value

    return rule


def _argv(name: str, value: object) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise OperationInvalid(f"{name}: must be an array of strings (got {json_type(value)})")
    if not 1 <= len(value) <= MAX_EXEC_ARGS:
        raise OperationInvalid(f"{name}: must hold 1 to {MAX_EXEC_ARGS} strings")
    total = 0
    for index, arg in enumerate(value):
        if not isinstance(arg, str):
            raise OperationInvalid(f"{name}[{index}]: must be a string (got {json_type(arg)})")
        if "\x00" in arg:
            raise OperationInvalid(f"{name}[{index}]: contains a NUL byte")
        try:
            total += len(arg.encode("utf-8"))
        except UnicodeEncodeError:
            raise OperationInvalid(f"{name}[{index}]: not valid UTF-8") from None
        if total > MAX_EXEC_ARG_BYTES:
            raise OperationInvalid(f"{name}: more than {MAX_EXEC_ARG_BYTES} bytes in all")
    if not value[0]:
        raise OperationInvalid(f"{name}[0]: the program must not be empty")
    return tuple(value)


MEMBER_RULES: dict[str, Callable[[str, object], object]] = {
    "command": _string,
    "requestId": _request_id,
    "username": _username,
    "host": _host,
    "ucan": _compact_token(MAX_UCAN_BYTES),
    "cosignature": _compact_token(MAX_COSIGNATURE_BYTES),
    "path": _path,
    "source": _path,
    "destination": _path,
    "cwd": _path,
    "data": _data,
    "offset": _integer(0, MAX_OFFSET),
    "length": _integer(1, MAX_READ_BYTES),
    "append": _boolean,
    "truncate": _boolean,
    "overwrite": _boolean,
    "depth": _integer(1, MAX_TREE_DEPTH),
    "argv": _argv,
    "timeoutSeconds": _integer(1, MAX_EXEC_SECONDS),
}
