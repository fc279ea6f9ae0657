"""Typed provisioning requests parsed from a call's `data` object (pure).

Every field is validated before anything looks at the host (upstream-protocol.md §5.3, §12). Keys match
case-insensitively, as Go's encoding/json does, and unknown keys are ignored (both as upstream, so a newer
backend's extra fields do not break us); two keys that fold to the same name are refused as ambiguous.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from p0_ssh_agent.core.errors import RequestInvalid
from p0_ssh_agent.core.sshkeys import SshPublicKey, parse_public_key

USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
REQUEST_ID_RE = re.compile(r"[A-Za-z0-9_-]{1,128}")
ABSENT_KEY_VALUES = ("", "N/A")
MAX_UNIX_TIME = 9999999999


class Command(StrEnum):
    PROVISION_USER = "provisionUser"
    AUTHORIZED_KEYS = "provisionAuthorizedKeys"
    CA_KEYS = "provisionCAKeys"
    SUDO = "provisionSudo"
    SESSION = "provisionSession"
    LIST_USERS = "listUsers"
    RUN_AUDIT = "runAudit"
    COLLECT_SUDOSH = "collectSudoshRecordings"


class Action(StrEnum):
    GRANT = "grant"
    REVOKE = "revoke"


@dataclass(frozen=True, slots=True)
class UserRequest:
    command: Command
    user: str
    action: Action
    request_id: str


@dataclass(frozen=True, slots=True)
class KeyRequest:
    command: Command
    user: str
    action: Action
    request_id: str
    key: SshPublicKey | None


@dataclass(frozen=True, slots=True)
class CaKeyRequest:
    command: Command
    user: str
    action: Action
    request_id: str
    ca_key: SshPublicKey | None


@dataclass(frozen=True, slots=True)
class SudoRequest:
    command: Command
    user: str
    action: Action
    request_id: str
    sudo: bool
    run_as: str | None  # None means ALL


@dataclass(frozen=True, slots=True)
class SessionRequest:
    command: Command
    user: str
    action: Action
    request_id: str | None


@dataclass(frozen=True, slots=True)
class ReadOnlyRequest:
    command: Command


@dataclass(frozen=True, slots=True)
class SudoshRequest:
    command: Command
    user: str
    start: int
    end: int


ProvisioningRequest = (
    UserRequest | KeyRequest | CaKeyRequest | SudoRequest | SessionRequest | ReadOnlyRequest | SudoshRequest
)


class _Fields:
    """Case-insensitive access to the request's members, refusing ambiguous spellings."""

    def __init__(self, data: Mapping[str, object]) -> None:
        self._values: dict[str, object] = {}
        for key, value in data.items():
            folded = key.lower()
            if folded in self._values:
                raise RequestInvalid(key, f"{key}: given twice with different spellings")
            self._values[folded] = value

    def raw(self, name: str) -> object:
        return self._values.get(name.lower())

    def string(self, name: str, *, required: bool) -> str | None:
        value = self.raw(name)
        if value is None:
            if required:
                raise RequestInvalid(name, f"{name} is required")
            return None
        if not isinstance(value, str):
            raise RequestInvalid(name, f"{name} must be a JSON string")
        return value


def _printable(value: str) -> str:
    return "".join(c if c.isprintable() else "?" for c in value[:40])


def _user(fields: _Fields, name: str = "userName") -> str:
    value = fields.string(name, required=True) or ""
    if not USER_NAME_RE.fullmatch(value):
        raise RequestInvalid(name, f"invalid {name} {_printable(value)!r}: must match ^[a-z_][a-z0-9_-]{{0,31}}$")
    return value


def _request_id(fields: _Fields, *, required: bool = True) -> str | None:
    value = fields.string("requestId", required=required)
    if value is None:
        return None
    if not REQUEST_ID_RE.fullmatch(value):
        raise RequestInvalid(
            "requestId", f"invalid requestId {_printable(value)!r}: must match ^[A-Za-z0-9_-]{{1,128}}$"
        )
    return value


def _action(fields: _Fields) -> Action:
    value = fields.string("action", required=True)
    try:
        return Action(value or "")
    except ValueError:
        raise RequestInvalid("action", "invalid action: must be 'grant' or 'revoke'") from None


def _key(fields: _Fields, name: str) -> SshPublicKey | None:
    value = fields.string(name, required=False)
    if value is None or value.strip() in ABSENT_KEY_VALUES:
        return None
    return parse_public_key(value, field=name)


def _time(fields: _Fields, name: str, default: int) -> int:
    value = fields.string(name, required=False)
    if not value:
        return default
    if value.isdigit() and value.isascii():
        seconds = int(value)
    else:
        try:
            seconds = int(datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp())
        except ValueError:
            raise RequestInvalid(
                name,
                f"invalid {name} format {_printable(value)!r}: must be a unix timestamp or ISO 8601 "
                "(e.g. 2024-01-01T00:00:00Z)",
            ) from None
    if not 0 <= seconds <= MAX_UNIX_TIME:
        raise RequestInvalid(name, f"{name} is out of range")
    return seconds


def parse_request(command: str, data: Mapping[str, object]) -> ProvisioningRequest:
    try:
        cmd = Command(command)
    except ValueError:
        raise RequestInvalid("command", f"unknown command: {_printable(command)}") from None
    fields = _Fields(data)
    if cmd in (Command.LIST_USERS, Command.RUN_AUDIT):
        return ReadOnlyRequest(cmd)
    if cmd is Command.COLLECT_SUDOSH:
        start, end = _time(fields, "startTime", 0), _time(fields, "endTime", MAX_UNIX_TIME)
        return SudoshRequest(cmd, _user(fields), start, end)
    user = _user(fields)
    action = _action(fields)
    if cmd is Command.SESSION:
        if action is not Action.REVOKE:
            raise RequestInvalid(
                "action", "ProvisionSession only supports 'revoke' action to terminate SSH connections"
            )
        return SessionRequest(cmd, user, action, _request_id(fields, required=False))
    request_id = _request_id(fields) or ""
    if cmd is Command.PROVISION_USER:
        return UserRequest(cmd, user, action, request_id)
    if cmd is Command.AUTHORIZED_KEYS:
        return KeyRequest(cmd, user, action, request_id, _key(fields, "publicKey"))
    if cmd is Command.CA_KEYS:
        return CaKeyRequest(cmd, user, action, request_id, _key(fields, "caPublicKey"))
    sudo = fields.raw("sudo")
    if sudo is None:
        sudo = False
    if not isinstance(sudo, bool):
        raise RequestInvalid("sudo", "sudo must be a JSON boolean (true or false), not a string or number")
    run_as = fields.string("runAsUser", required=False)
    if run_as in (None, "", "ALL"):
        run_as = None
    elif not USER_NAME_RE.fullmatch(run_as):
        raise RequestInvalid("runAsUser", f"invalid runAsUser {_printable(run_as)!r}: a user name or ALL")
    return SudoRequest(cmd, user, action, request_id, sudo, run_as)
