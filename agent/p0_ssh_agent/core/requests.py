"""Typed provisioning requests parsed from a call's hostile `data` object (pure).

    parse_request(command, data) -> UserRequest | KeyRequest | ... | SudoshRequest, or raise RequestInvalid

Every field is checked before anything looks at the host (upstream-protocol.md §5.3, and §12 for what the Go agent
let through). Reading the members works like Go's encoding/json, which the backend was written against:

* keys match case-insensitively (`userName`, `UserName`, `username`);
* unknown keys are ignored, as upstream does, so a newer backend's extra fields do not break us;
* a JSON type that does not fit any known member fails the whole request, whichever command it is, with Go's
  "failed to unmarshal ProvisioningRequest" prefix; JSON null counts as absent, as in Go.

Where Go is loose we are stricter: two keys that fold to the same member are refused as ambiguous, and a
non-ASCII key that Unicode case-folds onto a member (Go folds the Kelvin sign K onto k and the long s onto s) is
refused as a look-alike rather than silently used.

Revocations read only what they use (user, action, requestId). A revoke is keyed by requestId alone, and refusing
one because of an unused `publicKey` or `runAsUser` would leave access in place, for example a key with options
that the Go agent once wrote verbatim and that the backend sends again on revoke. Their JSON types are still
checked, as Go does.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from enum import StrEnum

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.sshkeys import SshPublicKey, parse_public_key

__all__ = [
    "REQUEST_ID_RE",
    "RESERVED_USER_NAMES",
    "USER_NAME_RE",
    "Action",
    "AuditRequest",
    "CaKeyRequest",
    "Change",
    "Command",
    "KeyRequest",
    "ListUsersRequest",
    "ProvisioningRequest",
    "Query",
    "RequestInvalid",
    "SessionRequest",
    "SudoRequest",
    "SudoshRequest",
    "UserRequest",
    "is_user_name",
    "parse_change",
    "parse_request",
]

# Anchored for readability in messages; always applied with re.fullmatch, so a trailing "\n" never passes the `$`.
USER_NAME_RE = r"^[a-z_][a-z0-9_-]{0,31}$"
REQUEST_ID_RE = r"^[A-Za-z0-9_-]{1,128}$"
_USER_NAME = re.compile(USER_NAME_RE.strip("^$"), re.ASCII)
_REQUEST_ID = re.compile(REQUEST_ID_RE.strip("^$"), re.ASCII)
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}", re.ASCII)
_RFC3339 = re.compile(
    r"(?P<date>[0-9]{4}-[0-9]{2}-[0-9]{2})T(?P<time>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.[0-9]{1,9})?"
    r"(?:(?P<utc>Z)|(?P<sign>[+-])(?P<hours>[0-9]{2}):(?P<minutes>[0-9]{2}))",
    re.ASCII,
)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)

# Accounts that are never a P0 user, whatever the host's passwd says. This list is only a first line: host/ checks
# ownership (the agent's own UID range and ledger) before it touches any account.
RESERVED_USER_NAMES = frozenset(
    {
        "root", "daemon", "bin", "sys", "sync", "games", "man", "lp", "mail", "news", "uucp", "proxy", "www-data",
        "backup", "list", "irc", "gnats", "_gnats", "nobody", "_apt", "sshd", "messagebus", "polkitd", "adm",
        "halt", "shutdown", "operator", "ftp", "nfsnobody",
    }
)  # fmt: skip
_RESERVED_PREFIXES = ("systemd-",)

ABSENT_KEY_VALUES = ("", "N/A")  # N/A is the SSM document's default for "no key"
RUN_AS_ALL = "ALL"
DEFAULT_START = 0
DEFAULT_END = 9999999999


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
    key: SshPublicKey | None  # None: absent, "" or "N/A"; always None on revoke


@dataclass(frozen=True, slots=True)
class CaKeyRequest:
    command: Command
    user: str
    action: Action
    request_id: str
    key: SshPublicKey | None  # the CA's key (caPublicKey); None: absent, "" or "N/A"; always None on revoke


@dataclass(frozen=True, slots=True)
class SudoRequest:
    command: Command
    user: str
    action: Action
    request_id: str
    # True when the grant asks for sudo, by "sudo": true or by naming runAsUser: upstream grants in both cases
    # and skips only when neither is given (§6.4). Always False on revoke, which removes by requestId.
    sudo: bool
    run_as: str | None  # None means ALL


@dataclass(frozen=True, slots=True)
class SessionRequest:
    command: Command
    user: str
    action: Action  # always REVOKE: the command has no grant
    request_id: str | None


@dataclass(frozen=True, slots=True)
class ListUsersRequest:
    command: Command


@dataclass(frozen=True, slots=True)
class AuditRequest:
    command: Command


@dataclass(frozen=True, slots=True)
class SudoshRequest:
    command: Command
    user: str
    start: int  # unix seconds, inclusive
    end: int


Change = UserRequest | KeyRequest | CaKeyRequest | SudoRequest | SessionRequest
"""A request that changes the host: it goes through facts, decision, plan and apply (provisioning/pipeline.py)."""
Query = ListUsersRequest | AuditRequest | SudoshRequest
"""A read-only request: it runs for real, even in a dry run."""
ProvisioningRequest = Change | Query

_STRING_MEMBERS = ("userName", "action", "requestId", "publicKey", "caPublicKey", "runAsUser", "startTime", "endTime")
_BOOLEAN_MEMBERS = ("sudo",)
_BY_FOLDED_NAME = {name.casefold(): name for name in (*_STRING_MEMBERS, *_BOOLEAN_MEMBERS)}


def public_key_of(request: ProvisioningRequest) -> SshPublicKey | None:
    """The key a key or CA-key request carries (None for every other request, and for revokes)."""
    return request.key if isinstance(request, KeyRequest | CaKeyRequest) else None


def is_user_name(value: str) -> bool:
    """True for a syntactically valid user name (USER_NAME_RE), reserved or not."""
    return _USER_NAME.fullmatch(value) is not None


def json_type(value: object) -> str:
    """The JSON name of a parsed value's type, for "must be a string (got number)" messages (agent_access too)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "array"
    return "object" if isinstance(value, Mapping) else type(value).__name__


class _Members:
    """The request's known members, found as Go finds them, type-checked, and refused when ambiguous."""

    def __init__(self, data: Mapping[str, object]) -> None:
        self._strings: dict[str, str] = {}
        self._booleans: dict[str, bool] = {}
        spelled: dict[str, str] = {}
        for key, value in data.items():
            member = _BY_FOLDED_NAME.get(key.casefold())
            if member is None:
                continue  # unknown keys are ignored, as Go's encoding/json does (see the module docstring)
            if not key.isascii():
                raise RequestInvalid(member, f"invalid key {messages.shown(key)}: looks like {member} but is not ASCII")
            if member in spelled:
                raise RequestInvalid(
                    member, f"ambiguous request: both {spelled[member]!r} and {key!r} name the member {member}"
                )
            spelled[member] = key
            self._store(member, value)

    def _store(self, member: str, value: object) -> None:
        if value is None:
            return  # JSON null leaves the member at its zero value, as in Go
        if member in _BOOLEAN_MEMBERS:
            if not isinstance(value, bool):
                raise RequestInvalid(
                    member, messages.unmarshal_failed(f"{member} must be a JSON boolean (got {json_type(value)})")
                )
            self._booleans[member] = value
        elif not isinstance(value, str):
            raise RequestInvalid(
                member, messages.unmarshal_failed(f"{member} must be a JSON string (got {json_type(value)})")
            )
        else:
            self._strings[member] = value

    def text(self, member: str) -> str:
        return self._strings.get(member, "")

    def flag(self, member: str) -> bool:
        return self._booleans.get(member, False)


MISSING_USER_DETAIL = "userName missing or empty"


def _user(members: _Members, *, allow_reserved: bool = False, looked_up: bool = False) -> str:
    """`looked_up`: the Go agent looks the user up by name for this command (key grants) instead of checking the
    name's syntax, so an empty name gets its "user  not found" there; our detail follows the Go prefix."""
    name = members.text("userName")
    if not name:
        if looked_up:
            raise RequestInvalid("userName", messages.user_not_found("", MISSING_USER_DETAIL))
        raise RequestInvalid("userName", f"{messages.invalid_user_name(USER_NAME_RE)} ({MISSING_USER_DETAIL})")
    if not is_user_name(name):
        raise RequestInvalid(
            "userName", f"{messages.invalid_user_name(USER_NAME_RE)} (userName {messages.shown(name)})"
        )
    if not allow_reserved and (name in RESERVED_USER_NAMES or name.startswith(_RESERVED_PREFIXES)):
        raise RequestInvalid("userName", f"invalid userName: {name} is a reserved system account")
    return name


def _action(members: _Members) -> Action:
    try:
        return Action(members.text("action"))
    except ValueError:
        raise RequestInvalid("action", messages.INVALID_ACTION) from None


def _request_id(members: _Members, *, required: bool) -> str | None:
    value = members.text("requestId")
    if not value:
        if required:
            raise RequestInvalid("requestId", "invalid requestId: missing or empty")
        return None
    if not _REQUEST_ID.fullmatch(value):
        raise RequestInvalid("requestId", f"invalid requestId {messages.shown(value)}: must match {REQUEST_ID_RE}")
    return value


def _key(members: _Members, member: str, action: Action) -> SshPublicKey | None:
    value = members.text(member)
    if action is Action.REVOKE or value in ABSENT_KEY_VALUES:
        return None
    return parse_public_key(value, field=member)


def _unix_seconds(members: _Members, member: str, default: int) -> int:
    value = members.text(member)
    if not value:
        return default
    if _UNIX_SECONDS.fullmatch(value):
        return int(value)
    match = _RFC3339.fullmatch(value)
    if match is not None:
        try:
            offset = timedelta(0)
            if match["utc"] is None:
                offset = timedelta(hours=int(match["hours"]), minutes=int(match["minutes"]))
                offset = -offset if match["sign"] == "-" else offset
            naive = datetime.fromisoformat(f"{match['date']}T{match['time']}")
            seconds = (naive.replace(tzinfo=timezone(offset)) - _EPOCH) // timedelta(seconds=1)
        except ValueError:
            pass  # month 13, hour 25, offset 24:00 and the like: reported below with the upstream message
        else:
            if seconds >= 0:
                return seconds
    raise RequestInvalid(member, messages.invalid_time(member, value))


def _user_request(command: Command, members: _Members) -> UserRequest:
    user, action = _user(members), _action(members)
    return UserRequest(command, user, action, _request_id(members, required=True) or "")


def _key_request(command: Command, members: _Members) -> KeyRequest:
    user, action = _user(members, looked_up=True), _action(members)
    request_id = _request_id(members, required=True) or ""
    return KeyRequest(command, user, action, request_id, _key(members, "publicKey", action))


def _ca_key_request(command: Command, members: _Members) -> CaKeyRequest:
    user, action = _user(members, looked_up=True), _action(members)
    request_id = _request_id(members, required=True) or ""
    return CaKeyRequest(command, user, action, request_id, _key(members, "caPublicKey", action))


def _sudo_request(command: Command, members: _Members) -> SudoRequest:
    user, action = _user(members), _action(members)
    request_id = _request_id(members, required=True) or ""
    if action is Action.REVOKE:
        return SudoRequest(command, user, action, request_id, sudo=False, run_as=None)
    run_as_text = members.text("runAsUser")
    if run_as_text in ("", RUN_AS_ALL):
        run_as = None
    elif is_user_name(run_as_text):
        run_as = run_as_text
    else:
        raise RequestInvalid(
            "runAsUser",
            f"invalid runAsUser {messages.shown(run_as_text)}: must be ALL or a user name matching {USER_NAME_RE}",
        )
    return SudoRequest(command, user, action, request_id, sudo=members.flag("sudo") or bool(run_as_text), run_as=run_as)


def _session_request(command: Command, members: _Members) -> SessionRequest:
    user = _user(members)
    if members.text("action") != Action.REVOKE:
        raise RequestInvalid("action", messages.SESSION_REVOKE_ONLY)
    return SessionRequest(command, user, Action.REVOKE, _request_id(members, required=False))


def _sudosh_request(command: Command, members: _Members) -> SudoshRequest:
    # Read-only: a reserved account's recordings may be exported, so only the syntax is checked. The exact user
    # name also keeps the export from matching another user's files (§12 item 15 is host/'s to fix).
    user = _user(members, allow_reserved=True)
    start = _unix_seconds(members, "startTime", DEFAULT_START)
    end = _unix_seconds(members, "endTime", DEFAULT_END)
    if end < start:
        raise RequestInvalid("endTime", f"invalid endTime: {end} is before startTime {start}")
    return SudoshRequest(command, user, start, end)


_PARSERS: dict[Command, Callable[[Command, _Members], ProvisioningRequest]] = {
    Command.PROVISION_USER: _user_request,
    Command.AUTHORIZED_KEYS: _key_request,
    Command.CA_KEYS: _ca_key_request,
    Command.SUDO: _sudo_request,
    Command.SESSION: _session_request,
    Command.LIST_USERS: lambda command, _members: ListUsersRequest(command),
    Command.RUN_AUDIT: lambda command, _members: AuditRequest(command),
    Command.COLLECT_SUDOSH: _sudosh_request,
}


def parse_request(command: str, data: Mapping[str, object]) -> ProvisioningRequest:
    """Validate one request completely; raise RequestInvalid naming the first field that is wrong."""
    try:
        known = Command(command)
    except ValueError:
        raise RequestInvalid("command", messages.unknown_command(command)) from None
    # Members are found and type-checked for every command, as Go unmarshals the whole struct every time.
    return _PARSERS[known](known, _Members(data))


def parse_change(command: str, data: Mapping[str, object]) -> Change:
    """parse_request for a command that changes the host (the agent's own requests, tests); RequestInvalid for a
    read-only one."""
    request = parse_request(command, data)
    if isinstance(request, ListUsersRequest | AuditRequest | SudoshRequest):
        raise RequestInvalid("command", f"{command} changes nothing on the host")
    return request
