"""What the audit trail records (pure: no socket, no file): the event types, one entry's fields, the two encodings
(journald's native datagram, a JSON line) and the event for a provisioning request.

host/audit_trail.py sends them; docs/audit.md lists the fields and each event type's MESSAGE_ID.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from typing import TYPE_CHECKING, Final, Literal

from p0_ssh_agent.adapters.logging import redact_text
from p0_ssh_agent.core.requests import (
    Action,
    CaKeyRequest,
    KeyRequest,
    ProvisioningRequest,
    SessionRequest,
    SudoRequest,
    UserRequest,
    public_key_of,
)
from p0_ssh_agent.core.sshkeys import SshPublicKey

if TYPE_CHECKING:
    from p0_ssh_agent.protocol.forwarded import CommandResult

SYSLOG_IDENTIFIER = "p0-ssh-agent"
# Free text is capped so an entry always fits one datagram (journald's limit is the socket buffer, ~200 KiB).
MAX_TEXT_CHARS = 4096
KEY_REDACTED = "[KEY]"

_FINGERPRINT = re.compile(r"SHA256:[A-Za-z0-9+/]{43}")
# journald refuses other field names; ours are fixed, this only guards against a typo in this module.
_FIELD_NAME = re.compile(r"[A-Z][A-Z0-9_]{0,63}")


class Event(StrEnum):
    GRANT = "grant"  # a provisioning grant applied (or planned, in a dry run)
    REVOKE = "revoke"  # a revoke applied: from the backend, `revoke-all` or the offline revoke
    DENIED = "denied"  # a change the local policy refused
    FAILED = "failed"  # a change that was tried and failed (any origin)
    EXPIRED = "expired"  # a grant older than maxGrantSeconds revoked by the agent
    DRIFT = "drift"  # reconciliation found the host differing from the ledger
    REPAIRED = "repaired"  # ... and repaired it (reconcile: repair)
    REVOKE_ALL = "revoke-all"  # the summary of a `revoke-all` or offline revoke run
    AGENT_ACCESS = "agent-access"  # an ssh_* operation (issue 17): run, refused or failed, or described (dry run)


# Fixed forever: operators filter and alert on these (journalctl MESSAGE_ID=...). Generated once with uuid4().hex.
MESSAGE_IDS: Final[dict[Event, str]] = {
    Event.GRANT: "f33b033a953543769449f6852a6b4d59",
    Event.REVOKE: "25ecb00d02f340d19fccfff32483f70c",
    Event.DENIED: "f9d6ec39349149ada9f53ca4bdfd041d",
    Event.FAILED: "658835cd27204fec853a5d3a5290bba3",
    Event.EXPIRED: "e275b32dfecc45ed9de20065ced1d29e",
    Event.DRIFT: "94a389eaabf94695b6e4c2ed088ac8c6",
    Event.REPAIRED: "ff1e8e62d8fc4d8da7aea850bc6cbb38",
    Event.REVOKE_ALL: "1bd524267e964d0fb70f46774e644c81",
    Event.AGENT_ACCESS: "81dba57e11784f07abf1918314059521",
}
# syslog priorities: 6 info for what went as asked, 4 warning for what an operator should look at.
_PRIORITY: Final[dict[Event, int]] = {
    Event.GRANT: 6,
    Event.REVOKE: 6,
    Event.EXPIRED: 6,
    Event.REVOKE_ALL: 6,
    Event.DENIED: 4,
    Event.FAILED: 4,
    Event.DRIFT: 4,
    Event.REPAIRED: 4,  # repaired, but someone or something edited the host behind the agent's back
    Event.AGENT_ACCESS: 6,  # a refused or failed one is 4 (AuditEvent.priority)
}

Origin = Literal["request", "expiry", "reconcile", "revoke-all", "offline-revoke"]
Result = Literal["success", "failure", "denied", "reported"]


@dataclass(frozen=True, slots=True)
class AuditEvent:
    event: Event
    origin: Origin  # who started the change: a request (backend or `command`), or the agent's own guard
    request_id: str
    command: str
    action: str
    target_user: str
    result: Result
    summary: str  # MESSAGE: one readable line
    policy: str = ""
    dry_run: bool = False
    key_fingerprint: str = ""
    run_as: str = ""
    error: str = ""
    detail: str = ""
    drift: str = ""
    path: str = ""
    secrets: tuple[str, ...] = ()  # text cut out of every free-text field (the request's own key), never sent
    access: AccessFacts | None = None  # an agent-access event's own fields

    def priority(self) -> int:
        if self.result == "failure" or (self.event is Event.AGENT_ACCESS and self.result == "denied"):
            return 4
        return _PRIORITY[self.event]

    def fields(self) -> list[tuple[str, str]]:
        """journald's fields, fixed ones always (empty when unknown, so a filter on them is well-defined)."""
        fields = [
            ("MESSAGE", _one_line(self._clean(self.summary))),
            ("MESSAGE_ID", MESSAGE_IDS[self.event]),
            ("PRIORITY", str(self.priority())),
            ("SYSLOG_IDENTIFIER", SYSLOG_IDENTIFIER),
            ("EVENT", self.event.value),
            ("ORIGIN", self.origin),
            ("REQUEST_ID", self.request_id),
            ("COMMAND", self.command),
            ("ACTION", self.action),
            ("TARGET_USER", self.target_user),
            ("RESULT", self.result),
            ("POLICY", self.policy),
            ("DRY_RUN", "true" if self.dry_run else "false"),
        ]
        optional = (
            ("KEY_FINGERPRINT", self.key_fingerprint),
            ("RUN_AS", self.run_as),
            ("ERROR", self._clean(self.error)),
            ("DETAIL", self._clean(self.detail)),
            ("DRIFT", self.drift),
            ("PATH", self._clean(self.path)),
        )
        access = tuple((name, self._clean(value)) for name, value in self.access.fields()) if self.access else ()
        return fields + [(name, value) for name, value in (*optional, *access) if value]

    def _clean(self, text: str) -> str:
        text = redact_text(text)
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, KEY_REDACTED)
        return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…(truncated)"


@dataclass(frozen=True, slots=True)
class AccessFacts:
    """What an agent-access entry adds (docs/audit.md): who asked with what, and what it came to. Sizes and digests
    of the content only: never the content, the UCAN, a cosignature or a signature."""

    paths: tuple[str, ...]  # PATH, and DESTINATION for a move or copy
    issuer: str  # the UCAN's `iss`
    approver: str = ""  # the cosignature's approver key id, when one was checked
    outcome: str = ""  # "ok", or the refusal kind (access_model.RefusalKind values)
    bytes_read: int | None = None
    bytes_written: int | None = None
    content_sha256: str = ""  # of the bytes a write or create carried
    exit_code: int | None = None
    duration_ms: int | None = None
    argv_sha256: str = ""  # an exec's command line, as the cosignature binds it

    def fields(self) -> tuple[tuple[str, str], ...]:
        numbers = (
            ("BYTES_READ", self.bytes_read),
            ("BYTES_WRITTEN", self.bytes_written),
            ("EXIT_CODE", self.exit_code),
            ("DURATION_MS", self.duration_ms),
        )
        return (
            ("PATH", self.paths[0] if self.paths else ""),
            ("DESTINATION", self.paths[1] if len(self.paths) > 1 else ""),
            ("ISSUER", self.issuer),
            ("APPROVER", self.approver),
            ("OUTCOME", self.outcome),
            ("CONTENT_SHA256", self.content_sha256),
            ("ARGV_SHA256", self.argv_sha256),
            *((name, str(value)) for name, value in numbers if value is not None),
        )


def access_event(
    *,
    request_id: str,
    command: str,
    username: str,
    result: Result,
    facts: AccessFacts,
    dry_run: bool,
    policy: str = "",
    error: str = "",
) -> AuditEvent:
    """The entry for one agent-access operation (agent_access/line.py records it)."""
    where = f" {facts.paths[0]}" + (f" -> {facts.paths[1]}" if len(facts.paths) > 1 else "") if facts.paths else ""
    summary = f"{'[dry run] ' if dry_run else ''}{command} as {username or '-'}{where} (request {request_id or '-'}"
    summary += f", issuer {facts.issuer})" if facts.issuer else ")"
    summary += f": {result}" + (f" by policy {policy}" if result == "denied" and policy else "")
    return AuditEvent(
        event=Event.AGENT_ACCESS,
        origin="request",
        request_id=request_id,
        command=command,
        action="",
        target_user=username,
        result=result,
        summary=summary + (f": {error}" if error else ""),
        policy=policy,
        dry_run=dry_run,
        error=error,
        access=facts,
    )


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


# --- encodings -------------------------------------------------------------------------------------------------


def journal_datagram(fields: list[tuple[str, str]]) -> bytes:
    """systemd's native protocol: "NAME=value\\n", or for a value holding a newline NAME\\n, a 64-bit
    little-endian length, the value, \\n (the form sd_journal_sendv uses)."""
    parts: list[bytes] = []
    for name, value in fields:
        if not _FIELD_NAME.fullmatch(name):
            raise ValueError(f"invalid journal field name {name!r}")
        data = value.encode("utf-8", "backslashreplace")
        if b"\n" in data:
            parts.append(name.encode("ascii") + b"\n" + struct.pack("<Q", len(data)) + data + b"\n")
        else:
            parts.append(name.encode("ascii") + b"=" + data + b"\n")
    return b"".join(parts)


def json_line(fields: list[tuple[str, str]], now: datetime) -> bytes:
    """One JSON object and a newline: lower-case keys, a UTC timestamp, priority as a number, dry_run a boolean."""
    entry: dict[str, object] = {"timestamp": now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")}
    for name, value in fields:
        if name == "SYSLOG_IDENTIFIER":
            continue
        key = name.lower()
        entry[key] = int(value) if key == "priority" else (value == "true") if key == "dry_run" else value
    return json.dumps(entry, ensure_ascii=False, separators=(",", ":")).encode("utf-8") + b"\n"


# --- provisioning requests ---------------------------------------------------------------------------------------


def key_secrets(key: SshPublicKey | None) -> tuple[str, ...]:
    """What must never appear in an entry: the key's line and its base64 blob (the part that identifies it)."""
    return () if key is None else (key.line(), key.line().split()[1])


def request_event(
    request: ProvisioningRequest,
    result: CommandResult,
    *,
    dry_run: bool,
    policy: str = "",
    denied: bool = False,
    origin: Origin = "request",
) -> AuditEvent | None:
    """The event for one request, or None for the read-only commands (they change nothing)."""
    if not isinstance(request, UserRequest | KeyRequest | CaKeyRequest | SudoRequest | SessionRequest):
        return None
    key = public_key_of(request)
    run_as = ""
    if isinstance(request, SudoRequest) and request.action is Action.GRANT and request.sudo:
        run_as = request.run_as or "ALL"
    result_word: Result
    if denied:
        event, result_word = Event.DENIED, "denied"
    elif not result.success:
        event, result_word = Event.FAILED, "failure"
    else:
        event, result_word = (Event.GRANT if request.action is Action.GRANT else Event.REVOKE), "success"
    request_id = request.request_id or ""
    fingerprint = key.fingerprint() if key is not None else ""
    summary = f"{'[dry run] ' if dry_run else ''}{request.command.value} {request.action.value} for {request.user}"
    summary += f" (request {request_id or '-'}"
    summary += f", key {fingerprint})" if fingerprint else ")"
    summary += f": {result_word}" + (f" by policy {policy}" if denied and policy else "")
    error = "" if result.success and not denied else (result.error or result.message)
    return AuditEvent(
        event=event,
        origin=origin,
        request_id=request_id,
        command=request.command.value,
        action=request.action.value,
        target_user=request.user,
        result=result_word,
        summary=summary + (f": {error}" if error else ""),
        policy=policy,
        dry_run=dry_run,
        key_fingerprint=fingerprint,
        run_as=run_as,
        error=error,
        secrets=key_secrets(key),
    )


def fingerprint_in(text: str) -> str:
    """The first SHA256 fingerprint named in a detail ("key line SHA256:... is gone"), for KEY_FINGERPRINT."""
    found = _FINGERPRINT.search(text)
    return found.group(0) if found else ""
