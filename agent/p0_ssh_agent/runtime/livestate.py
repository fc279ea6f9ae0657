"""The daemon's live state, as `p0-ssh-agent status` reads it from the runtime directory (no trio here).

The daemon keeps `<runtimeDir>/status.json` (0600, root's) current: written to a temporary file and renamed, so
a reader never sees half a document, and readable while the daemon is busy (no socket to answer). Whether the
daemon that wrote it still runs is not read from the file: the daemon holds an exclusive flock(2) on
`<runtimeDir>/agent.lock` for its whole life, and the kernel drops that lock when the process dies, however it
dies (kill -9 included). A reader that can take the lock itself knows that nobody holds it, so whatever state
file is there was left by a dead agent. A pid check would need the pid to be ours and not reused; the lock
needs neither.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

DEFAULT_RUNTIME_DIR = Path("/run/p0-ssh-agent")
STATE_FILE = "status.json"
LOCK_FILE = "agent.lock"
METRICS_FILE = "p0-ssh-agent.prom"
STATE_MODE = 0o600
MAX_STATE_BYTES = 1 << 20
MAX_DIGESTED_BYTES = 16 << 20

# What the tunnel is doing; `status` maps these to its exit codes (diagnostics/live_checks.py).
LinkState = Literal["starting", "connecting", "connected", "retrying", "refused", "stopping"]


def resolve_runtime_dir(configured: Path | None) -> Path:
    """Deliberately not $RUNTIME_DIRECTORY: `status`, run from a shell, must find the same place as the daemon."""
    return configured or DEFAULT_RUNTIME_DIR


def stamp(when: datetime | None) -> str | None:
    return None if when is None else when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def file_digest(path: Path | None) -> str | None:
    """sha256 of a file as it is now (None when there is none); bounded, never follows a symlink."""
    if path is None:
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None
        return "sha256:" + hashlib.sha256(handle.read(MAX_DIGESTED_BYTES)).hexdigest()


def classify_end(reason: str, http_status: int | None) -> str:
    """A reconnect reason for the metrics label, from the texts session.py and tunnel.py give (bounded set)."""
    if http_status in (401, 403):
        return "unauthorized"
    if http_status is not None:
        return "rejected"
    for prefix, label in (
        ("connection closed by server", "server_closed"),
        ("heartbeat failed", "heartbeat"),
        ("setClientId failed", "set_client_id"),
        ("nothing received", "silent"),
        ("send failed", "send_failed"),
        ("TLS", "tls"),
        ("unexpected error", "crash"),
        ("agent shutting down", "shutdown"),
        ("session ended", "other"),
    ):
        if reason.startswith(prefix):
            return label
    return "network"


@dataclass
class LiveState:
    """What the daemon publishes. Mutated from the event loop only."""

    pid: int
    started_at: datetime
    backend_url: str
    client_id: str
    dry_run: bool
    link: LinkState = "starting"
    status_text: str = "starting"
    connected_since: datetime | None = None
    last_set_client_id: dict[str, Any] | None = None  # {"at", "answer"} or {"at", "error"}
    last_error: dict[str, Any] | None = None  # {"at", "text", "http_status"}
    reconnects: int = 0
    reconnects_by_reason: dict[str, int] = field(default_factory=dict)
    grants_in_force: int | None = None
    next_expiry: datetime | None = None
    managed_users: int | None = None
    policy_file: str = ""
    policy_digest: str | None = None
    config_file: str | None = None
    config_digest: str | None = None
    reload_failed: bool = False
    reload_error: str | None = None
    last_reload_at: datetime | None = None
    agent_access: bool = False  # agentAccess in the configuration in force (ssh_* requests served, or 403)

    def connection_ended(self, reason: str, http_status: int | None, now: datetime) -> str:
        """Record a connection (or attempt) that ended; returns the reconnect reason label."""
        label = classify_end(reason, http_status)
        self.reconnects += 1
        self.reconnects_by_reason[label] = self.reconnects_by_reason.get(label, 0) + 1
        self.last_error = {"at": stamp(now), "text": reason, "http_status": http_status}
        self.link = "refused" if label == "unauthorized" else "retrying"
        self.connected_since = None
        if label in ("set_client_id", "heartbeat"):
            self.last_set_client_id = {"at": stamp(now), "error": reason.split(": ", 1)[-1]}
        return label

    def document(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "pid": self.pid,
            "started_at": stamp(self.started_at),
            "link": self.link,
            "status_text": self.status_text,
            "backend_url": self.backend_url,
            "client_id": self.client_id,
            "dry_run": self.dry_run,
            "connected_since": stamp(self.connected_since),
            "last_set_client_id": self.last_set_client_id,
            "last_error": self.last_error,
            "reconnects": self.reconnects,
            "reconnects_by_reason": dict(sorted(self.reconnects_by_reason.items())),
            "grants_in_force": self.grants_in_force,
            "next_expiry": stamp(self.next_expiry),
            "managed_users": self.managed_users,
            "policy_file": self.policy_file,
            "policy_digest": self.policy_digest,
            "config_file": self.config_file,
            "config_digest": self.config_digest,
            "reload_failed": self.reload_failed,
            "reload_error": self.reload_error,
            "last_reload_at": stamp(self.last_reload_at),
            "agent_access": self.agent_access,
        }


# --- the reading side (`status`) ------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiveRead:
    """running: True (the lock is held), False (nobody holds it), None (cannot tell: not root, or broken)."""

    running: bool | None
    document: dict[str, Any] | None  # the state file, when it could be read and parsed
    problem: str = ""  # why `running` is None or the document is missing


def read_live_state(runtime_dir: Path) -> LiveRead:
    running, problem = _lock_held(runtime_dir / LOCK_FILE)
    document, doc_problem = _read_document(runtime_dir / STATE_FILE)
    return LiveRead(running, document, problem or doc_problem)


def _lock_held(path: Path) -> tuple[bool | None, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return False, ""
    except PermissionError:
        return None, f"cannot open {path}: permission denied (run status as root)"
    except OSError as exc:
        return None, f"cannot open {path}: {exc.strerror}"
    try:
        # A shared lock for a moment: it cannot be had while the daemon holds its exclusive one.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
            return True, ""
        return None, f"cannot lock {path}: {exc.strerror}"
    finally:
        os.close(fd)  # also releases our lock, if we got it
    return False, ""


def _read_document(path: Path) -> tuple[dict[str, Any] | None, str]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return None, ""
    except OSError as exc:
        return None, f"cannot read {path}: {exc.strerror} (run status as root)"
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            return None, f"{path} is not a regular file"
        raw = handle.read(MAX_STATE_BYTES + 1)
    if len(raw) > MAX_STATE_BYTES:
        return None, f"{path} is larger than {MAX_STATE_BYTES} bytes: not written by the agent"
    try:
        document = json.loads(raw)
    except ValueError:
        return None, f"{path} is not JSON"
    if not isinstance(document, dict):
        return None, f"{path} is not a JSON object"
    return document, ""
