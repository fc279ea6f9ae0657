"""The words the agent uses for its connection state, in `STATUS=` and in the log (pure).

Every text an operator can see in `systemctl status p0-ssh-agent` is built here, so docs/connection.md can list
them all and a test can check that docs and code agree.
"""

from __future__ import annotations

from datetime import datetime
from urllib.parse import urlsplit, urlunsplit

HANDSHAKE_HINTS: dict[int, str] = {
    401: "key not registered with P0, or the clock is skewed",
    403: "client not authorised for this organisation",
    404: "wrong WebSocket path in tunnelHost",
}


def display_url(url: str) -> str:
    """The tunnel URL without any user:password part, safe to show and log."""
    parts = urlsplit(url)
    if parts.username is None and parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port is not None:
        host = f"{host}:{parts.port}"
    return urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))


def starting() -> str:
    return "starting"


def connecting(url: str) -> str:
    return f"connecting to {display_url(url)}"


def connected(url: str, since: datetime) -> str:
    return f"connected to {display_url(url)} since {since.strftime('%Y-%m-%dT%H:%M:%SZ')}"


def retrying(seconds: float, reason: str) -> str:
    return f"retrying in {seconds:.0f}s: {reason}"


def rejected(status: int, url: str) -> str:
    """The reason text for a handshake the server refused with an HTTP status."""
    hint = HANDSHAKE_HINTS.get(status)
    base = f"handshake rejected by {display_url(url)} with HTTP {status}"
    return f"{base} ({hint})" if hint else base


def with_retry_after(reason: str, seconds: float) -> str:
    """A refusal's reason with the wait the server asked for (a 503 or 429 with Retry-After)."""
    return f"{reason}, Retry-After {seconds:.0f}s"


def unauthorized(status: int, url: str, seconds: float) -> str:
    return f"unauthorized (HTTP {status}), retrying in {seconds:.0f}s: {rejected(status, url)}"


def reload_failed(error: str) -> str:
    return f"configuration reload failed, still running with the previous one: {error}"


def stopping() -> str:
    return "stopping"
