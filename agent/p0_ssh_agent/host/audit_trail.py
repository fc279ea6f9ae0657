"""The audit trail (issue 6): one journald entry per change to the host, and per refusal, with fixed fields.

    trail = AuditTrail.from_config(config, os.environ)   one per process that records, handed to whoever records
    trail.record_request(request, result, dry_run=..., policy=..., denied=...)   after each provisioning request
    trail.record(AuditEvent(...))                                                 expiry, drift, revoke-all

Every entry carries the same fields (docs/audit.md lists them and the MESSAGE_ID of each event type), so
`journalctl -u p0-ssh-agent REQUEST_ID=abc` finds a grant's whole history: the grant, its revoke, its expiry, drift
found in it. Entries go to journald over its native protocol (not through stdout, where a field would be text in
MESSAGE and could not be matched), and, with `auditFile` set, to a JSON-lines file for hosts without journald.

Never in an entry: a public key (only its SHA256 fingerprint), a JWT, an Authorization header. Free text (errors,
details) passes through the log redactor and has the request's own key cut out, in case a message quoted it.

Auditing never fails a change: every error is caught, and a destination that stops accepting entries is logged
once (again only after it worked in between), not once per entry.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import socket
import stat
import struct
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Final, Literal

from p0_ssh_agent.adapters.logging import get_logger, redact_text
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
    from p0_ssh_agent.config import AgentConfig
    from p0_ssh_agent.protocol.forwarded import CommandResult

log = get_logger(__name__)

JOURNAL_SOCKET_ENV = "P0_SSH_AGENT_JOURNAL_SOCKET"  # tests point it at their own socket; "" turns journald off
DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket"
SYSLOG_IDENTIFIER = "p0-ssh-agent"
# A stalled journald must not stall the event loop that calls record_request: wait this long, then drop and log.
SEND_TIMEOUT_SECONDS = 1.0
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

    def priority(self) -> int:
        return 4 if self.result == "failure" else _PRIORITY[self.event]

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
        return fields + [(name, value) for name, value in optional if value]

    def _clean(self, text: str) -> str:
        text = redact_text(text)
        for secret in self.secrets:
            if secret:
                text = text.replace(secret, KEY_REDACTED)
        return text if len(text) <= MAX_TEXT_CHARS else text[:MAX_TEXT_CHARS] + "…(truncated)"


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


# --- destinations ----------------------------------------------------------------------------------------------

Observer = Callable[[AuditEvent], None]


class AuditTrail:
    """Where entries go: journald's socket ("" for none) and, with auditFile set, a JSON-lines file.

    One per process that records (the daemon's supervisor builds one and hands it down; each CLI command that
    changes the host builds its own), so nothing about it is module state: a test builds one aimed at its own socket.
    Observers are told every event before it is sent (the daemon's metrics count denials, expiries and drift from
    here, runtime/health.py); like record(), they may be called from worker threads."""

    def __init__(
        self,
        *,
        journal_socket: str = DEFAULT_JOURNAL_SOCKET,
        audit_file: Path | None = None,
        observers: Iterable[Observer] = (),
    ) -> None:
        self.journal_socket = journal_socket
        self.audit_file = audit_file
        self.observers: tuple[Observer, ...] = tuple(observers)
        self._lock = threading.Lock()
        self._journal: socket.socket | None = None  # one unbound datagram socket: no socket per entry
        self._failing: set[tuple[str, str]] = set()  # (destination, where) whose failure was already logged

    @classmethod
    def from_config(
        cls, config: AgentConfig | None, env: Mapping[str, str], *, observers: Iterable[Observer] = ()
    ) -> AuditTrail:
        """The trail a configuration asks for: its auditFile, and journald's socket (JOURNAL_SOCKET_ENV in env, so
        tests and containers can aim it elsewhere or turn it off with "")."""
        return cls(
            journal_socket=env.get(JOURNAL_SOCKET_ENV, DEFAULT_JOURNAL_SOCKET),
            audit_file=config.audit_file if config is not None else None,
            observers=observers,
        )

    @classmethod
    def off(cls) -> AuditTrail:
        """A trail that records nothing: for the read-only tools (status, doctor, policy test) that never change
        the host, and for tests that do not look at the trail."""
        return cls(journal_socket="", audit_file=None)

    def reconfigure(self, config: AgentConfig) -> None:
        """After a successful reload: the audit file follows the configuration (journald's socket stays open)."""
        self.audit_file = config.audit_file

    def open(self) -> None:
        """Open the journald socket now, at start-up, so the daemon's descriptor count is the same idle as after
        its first audited request (a steady fd count is how a leak shows; one opened lazily looks like one)."""
        if self.journal_socket:
            self._sender()

    def close(self) -> None:
        with self._lock:
            if self._journal is not None:
                self._journal.close()
                self._journal = None

    @contextlib.contextmanager
    def observing(self, observer: Observer) -> Iterator[None]:
        """Tell `observer` every event recorded while the block runs (the daemon's metrics, while it runs)."""
        with self._lock:
            self.observers = (*self.observers, observer)
        try:
            yield
        finally:
            with self._lock:
                self.observers = tuple(o for o in self.observers if o is not observer)

    def record(self, event: AuditEvent) -> None:
        """Send one event to journald and, with an audit file, to the JSON-lines file. Never raises."""
        try:
            for observer in self.observers:
                observer(event)
            fields = event.fields()
            self.send_journal(journal_datagram(fields))
            audit_file = self.audit_file
            if audit_file is not None:
                self.append_line(audit_file, json_line(fields, datetime.now(UTC)))
        except Exception as exc:  # an audit bug must never fail or undo the change it records
            self._failed("audit", "", f"{type(exc).__name__}: {exc}")

    def record_request(
        self,
        request: ProvisioningRequest,
        result: CommandResult,
        *,
        dry_run: bool,
        policy: str = "",
        denied: bool = False,
    ) -> None:
        """Audit one provisioning request after it ran (or was refused). Read-only commands are skipped. Never
        raises. Cheap enough for the event loop: one datagram on a shared socket, and with a file one append."""
        try:
            event = request_event(request, result, dry_run=dry_run, policy=policy, denied=denied)
        except Exception as exc:  # see record()
            self._failed("audit", "", f"{type(exc).__name__}: {exc}")
            return
        if event is not None:
            self.record(event)

    def send_journal(self, datagram: bytes) -> None:
        path = self.journal_socket
        if not path:
            return
        try:
            self._sender().sendto(datagram, path)
        except (FileNotFoundError, ConnectionRefusedError):
            return  # no journald here (a container, a test): the audit file, if set, is the trail
        except OSError as exc:
            self._failed("journald", path, exc.strerror or str(exc))
            return
        self._worked("journald", path)

    def append_line(self, path: Path, line: bytes) -> None:
        """One write() per line on an O_APPEND descriptor: concurrent writers never interleave within a line.

        Opened per entry, so a rotated file (logrotate renames it) is followed without a reload. O_NOFOLLOW: a
        symlink planted at the path is refused, not written through; O_NONBLOCK: a FIFO there cannot hang us."""
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(path, flags, 0o600)
        except OSError as exc:
            reason = "is a symlink (refused)" if exc.errno == errno.ELOOP else (exc.strerror or str(exc))
            self._failed("file", str(path), reason)
            return
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                self._failed("file", str(path), "not a regular file (refused)")
                return
            if info.st_mode & 0o077:
                os.fchmod(fd, 0o600)  # the trail names users and requests: no one else reads it
            written = os.write(fd, line)
            if written != len(line):
                self._failed("file", str(path), f"short write: {written} of {len(line)} bytes")
                return
        except OSError as exc:
            self._failed("file", str(path), exc.strerror or str(exc))
            return
        finally:
            os.close(fd)
        self._worked("file", str(path))

    def _sender(self) -> socket.socket:
        with self._lock:  # one socket shared by every thread that audits
            if self._journal is None:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
                sock.settimeout(SEND_TIMEOUT_SECONDS)
                self._journal = sock
            return self._journal

    def _failed(self, destination: str, where: str, error: str) -> None:
        with self._lock:
            if (destination, where) in self._failing:
                return
            self._failing.add((destination, where))
        log.error("audit_write_failed", destination=destination, path=where, error=error)

    def _worked(self, destination: str, where: str) -> None:
        if (destination, where) not in self._failing:  # the common case, without the lock
            return
        with self._lock:
            self._failing.discard((destination, where))
        log.info("audit_write_recovered", destination=destination, path=where)


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
