"""systemd notification (sd_notify(3)): READY, STATUS, WATCHDOG, RELOADING and STOPPING datagrams.

Written on the stdlib socket module rather than the `sdnotify` package (sdnotify.SystemdNotifier, 0.3.2),
because that class:
* reads NOTIFY_SOCKET from os.environ only, so the environment cannot be passed in (tests, `start`'s env);
* either swallows every error silently (nothing to log) or, with debug=True, raises them, including a
  TypeError from its constructor when NOTIFY_SOCKET is unset: neither is "log once, never raise";
* connects once in its constructor, so a socket that is gone stays gone for the life of the process;
* encodes as Latin-1, so a STATUS text with any other character raises instead of being sent as UTF-8.

Systemd going away (a re-exec, a container stop) must never kill the agent: a failed send is logged once and
every later failure stays quiet until a send succeeds again.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping

from p0_ssh_agent.adapters.logging import get_logger

log = get_logger(__name__)

# STATUS= is shown by `systemctl status`; a line longer than a terminal helps nobody, and a text that embeds
# network input must not grow without bound.
MAX_STATUS_CHARS = 500


class Notifier:
    """Sends sd_notify messages to $NOTIFY_SOCKET; a silent no-op when the variable is unset."""

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        environ = os.environ if env is None else env
        self._address = _socket_address(environ.get("NOTIFY_SOCKET", ""))
        self.enabled: bool = self._address is not None
        # No socket, no point in pinging: the supervisor skips its watchdog task when this is None.
        self.watchdog_interval: float | None = _watchdog_interval(environ) if self.enabled else None
        self._failing = False

    def ready(self, status: str | None = None) -> None:
        self._send("READY=1", status)

    def status(self, text: str) -> None:
        self._send(None, text)

    def watchdog(self) -> None:
        self._send("WATCHDOG=1", None)

    def stopping(self, status: str | None = None) -> None:
        self._send("STOPPING=1", status)

    def reloading(self) -> None:
        # Type=notify-reload (systemd 253+) needs MONOTONIC_USEC with RELOADING=1; older systemd ignores it.
        self._send(f"RELOADING=1\nMONOTONIC_USEC={time.monotonic_ns() // 1000}", None)

    def _send(self, state: str | None, status: str | None) -> None:
        if self._address is None:
            return
        lines = [state] if state else []
        if status is not None:
            lines.append(f"STATUS={single_line(status)}")
        message = "\n".join(lines).encode("utf-8", "replace")
        try:
            # Non-blocking: a datagram socket whose reader is slow (a busy or hung PID 1) fills up, and a
            # blocking send would then freeze the event loop, the very thing the watchdog exists to catch.
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC | socket.SOCK_NONBLOCK) as sock:
                sock.sendto(message, self._address)
        except OSError as exc:
            if not self._failing:
                self._failing = True
                log.warning(
                    "sd_notify_failed",
                    socket=_display(self._address),
                    error=exc.strerror or type(exc).__name__,
                    hint="systemd will not see status or watchdog pings until this recovers",
                )
            return
        if self._failing:
            self._failing = False
            log.info("sd_notify_recovered", socket=_display(self._address))


def single_line(text: str) -> str:
    """STATUS= ends at the first newline, and whatever follows would be read as another assignment (a
    STATUS text built from network input could otherwise send READY=1 or WATCHDOG=1)."""
    flat = " ".join(text.replace("\x00", " ").splitlines()).strip()
    return flat if len(flat) <= MAX_STATUS_CHARS else flat[: MAX_STATUS_CHARS - 1] + "…"


def _socket_address(value: str) -> str | bytes | None:
    """A filesystem path, or "@name" for Linux's abstract namespace (a leading NUL byte on the wire)."""
    if value.startswith("@") and len(value) > 1:
        return b"\x00" + value[1:].encode()
    if value.startswith("/"):
        return value
    # Unset, empty, or something sd_notify(3) does not define (vsock: addresses are systemd 254+ only).
    return None


def _watchdog_interval(env: Mapping[str, str]) -> float | None:
    """Half of WATCHDOG_USEC, as sd_watchdog_enabled(3) recommends; None when the watchdog is off or meant
    for another process (WATCHDOG_PID set to a different pid)."""
    try:
        usec = int(env.get("WATCHDOG_USEC", ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    pid = env.get("WATCHDOG_PID")
    if pid is not None:
        try:
            if int(pid) != os.getpid():
                return None
        except ValueError:
            return None
    return usec / 2 / 1_000_000


def _display(address: str | bytes) -> str:
    return "@" + address[1:].decode(errors="replace") if isinstance(address, bytes) else address
