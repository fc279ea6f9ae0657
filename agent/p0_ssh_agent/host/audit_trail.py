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
import os
import socket
import stat
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.core.requests import ProvisioningRequest
from p0_ssh_agent.host.audit_events import (
    KEY_REDACTED,
    MAX_TEXT_CHARS,
    MESSAGE_IDS,
    SYSLOG_IDENTIFIER,
    AuditEvent,
    Event,
    Origin,
    Result,
    fingerprint_in,
    journal_datagram,
    json_line,
    key_secrets,
    request_event,
)

if TYPE_CHECKING:
    from p0_ssh_agent.config import AgentConfig
    from p0_ssh_agent.protocol.forwarded import CommandResult

log = get_logger(__name__)

# A stalled journald must not stall the event loop that calls record_request: wait this long, then drop and log.
SEND_TIMEOUT_SECONDS = 1.0

JOURNAL_SOCKET_ENV = "P0_SSH_AGENT_JOURNAL_SOCKET"  # tests point it at their own socket; "" turns journald off
DEFAULT_JOURNAL_SOCKET = "/run/systemd/journal/socket"
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


__all__ = [  # the event model is host/audit_events.py; recorders import it from here with the trail
    "KEY_REDACTED",
    "MAX_TEXT_CHARS",
    "MESSAGE_IDS",
    "SYSLOG_IDENTIFIER",
    "AuditEvent",
    "AuditTrail",
    "Event",
    "Observer",
    "Origin",
    "Result",
    "fingerprint_in",
    "journal_datagram",
    "json_line",
    "key_secrets",
    "request_event",
]
