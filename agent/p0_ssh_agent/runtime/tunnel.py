"""The tunnel: keep one authenticated WebSocket to the P0 tunnel server alive, forever.

Each attempt makes a fresh JWT, opens TCP (directly or through an HTTP CONNECT proxy), TLS for wss://, then the
WebSocket handshake with `Authorization: Bearer`, and runs a Session until it ends. Between attempts it waits on
a fixed period with a random phase (runtime/backoff.py PhasedRetry: uniform over [0, 11 s] after a drop, then
11 s per failed attempt, unless configured: RetrySettings), so a fleet that a backend restart dropped at once
comes back spread over one period; the phase is drawn anew once `setClientId` succeeds, not merely when the socket
opens (a server that accepts and then drops us must not be hammered). A 503 or 429 handshake with `Retry-After`
waits what the server asks (bounded, plus a random phase). A 401/403 keeps the process up with a backoff of up to
5 minutes: exiting would only turn a registration problem into a systemd restart loop (upstream-protocol.md §3.5).

The supervisor builds the tunnel before READY=1, and the first attempt starts after it: what only a connection
needs (trio-websocket, wsproto and h11; jose for the token; runtime/connection.py) is imported by the attempt,
not by this module (issue 16: start to READY).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.config.values import is_loopback_host
from p0_ssh_agent.errors import AgentError, ConfigError
from p0_ssh_agent.identity.signing_key import AgentKey
from p0_ssh_agent.protocol.jsonrpc import MAX_FRAME_BYTES
from p0_ssh_agent.runtime import status_text
from p0_ssh_agent.runtime.backoff import RetrySettings, retry_after_seconds
from p0_ssh_agent.runtime.http_connect import ProxySettings
from p0_ssh_agent.runtime.session_settings import Activity, SessionSettings
from p0_ssh_agent.runtime.trust import tls_context
from p0_ssh_agent.runtime.tunnel_pins import PinMismatch
from p0_ssh_agent.runtime.worker import Worker

if TYPE_CHECKING:
    from trio_websocket import WebSocketConnection

    from p0_ssh_agent.runtime.connection import Session
    from p0_ssh_agent.runtime.health import Health

log = get_logger(__name__)

CONNECT_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 2.0
# The library must buffer a whole message before we can look at it, so its limit is the agent's frame limit:
# a frame over it closes the connection (1009, the agent reconnects) instead of sitting in memory to be refused.
# The library counts characters, the parser UTF-8 bytes: a frame of at most MAX_FRAME_BYTES characters but more
# bytes still gets the parser's polite -32600 refusal.
LIBRARY_MAX_MESSAGE_BYTES = MAX_FRAME_BYTES
# The handshake refusals whose Retry-After the agent honours (RFC 9110 §10.2.3, RFC 6585 §4).
RETRY_AFTER_STATUSES = frozenset({429, 503})


@dataclass(frozen=True)
class TunnelSettings:
    """Everything that, when it changes on reload, needs a new connection."""

    url: str
    client_id: str
    key: AgentKey
    ca_file: str | None
    proxy: ProxySettings | None
    pins: tuple[str, ...] = ()  # tunnelPins (runtime/tunnel_pins.py): empty means the CA check alone


class ActivityStream(trio.abc.Stream):
    """A transparent stream wrapper that records when bytes last arrived (pings count as life)."""

    def __init__(self, inner: trio.abc.Stream, activity: Activity) -> None:
        self._inner = inner
        self._activity = activity

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        await self._inner.send_all(data)

    async def wait_send_all_might_not_block(self) -> None:
        await self._inner.wait_send_all_might_not_block()

    async def receive_some(self, max_bytes: int | None = None) -> bytes | bytearray:
        data = await self._inner.receive_some(max_bytes)
        if data:
            self._activity.touch()
        return data

    async def send_eof(self) -> None:
        if isinstance(self._inner, trio.abc.HalfCloseableStream):
            await self._inner.send_eof()

    async def aclose(self) -> None:
        await self._inner.aclose()


class Tunnel:
    def __init__(
        self,
        settings: TunnelSettings,
        session_settings: SessionSettings,
        worker: Worker,
        report: Callable[[str], None],
        *,
        on_link: Callable[[bool], None] | None = None,
        health: Health | None = None,
        retry: RetrySettings | None = None,
    ) -> None:
        self.settings = settings
        self._health = health  # told each attempt, success and end, with its reason (runtime/health.py)
        # Told True when setClientId succeeds and False when that session ends (runtime/periodic.py: offline revoke,
        # reconcile after a reconnect).
        self._on_link = on_link
        self.session_settings = session_settings
        self._worker = worker
        self._report = report
        retry = retry or RetrySettings()  # None: the documented defaults (11 s; 30 s growing to 5 minutes)
        self._backoff = retry.reconnect()
        self._auth_backoff = retry.unauthorized()
        self._attempt_scope: trio.CancelScope | None = None
        self.session: Session | None = None
        self.connected_once = trio.Event()
        self.stopped = trio.Event()
        self._closing = False

    def reconnect(self, settings: TunnelSettings | None = None) -> None:
        """Drop the current connection (or wait) and connect again at once, with new settings if given."""
        if settings is not None:
            self.settings = settings
        self._backoff.reset()
        if self._attempt_scope is not None:
            self._attempt_scope.cancel()

    def set_retry(self, retry: RetrySettings) -> None:
        """Reload: the next waits use the new ceilings; how far each backoff has grown carries over."""
        self._backoff = retry.reconnect(self._backoff)
        self._auth_backoff = retry.unauthorized(self._auth_backoff)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while not self._closing:
                with trio.CancelScope() as scope:
                    self._attempt_scope = scope
                    delay, text = await self._attempt()
                    if not self._closing:
                        self._report(text)
                        await trio.sleep(delay)
                self._attempt_scope = None
        finally:
            self.stopped.set()

    async def _attempt(self) -> tuple[float, str]:
        """One connection attempt, run to its end. Returns (delay, status text) for the wait that follows."""
        from trio_websocket import ConnectionRejected, HandshakeError  # the connection's own (module docstring)

        url = self.settings.url
        if self._health is not None:
            self._health.connecting()
        self._report(status_text.connecting(url))
        http_status: int | None = None
        retry_after: float | None = None  # what a 503/429 asked for
        try:
            reason = await self._connect_and_serve()
        except Exception as raised:  # one connection's failure, whatever it is, must never end the agent
            # The connection runs in a nursery, so its failure arrives wrapped in an exception group.
            exc = _unwrap(raised)
            if isinstance(exc, ConnectionRejected):
                reason = status_text.rejected(exc.status_code, url)
                http_status = exc.status_code
                if exc.status_code in (401, 403):
                    delay = self._auth_backoff.next_delay()
                    log.error("handshake_unauthorized", status=exc.status_code, hint=reason)
                    if self._health is not None:
                        self._health.ended(reason, http_status)
                    return delay, status_text.unauthorized(exc.status_code, url, delay)
                if exc.status_code in RETRY_AFTER_STATUSES:
                    retry_after = _retry_after(exc.headers)
                    if retry_after is not None:
                        reason = status_text.with_retry_after(reason, retry_after)
                log.error("handshake_rejected", status=exc.status_code, hint=reason)
            elif isinstance(exc, OSError | trio.TooSlowError | HandshakeError | trio.BrokenResourceError | AgentError):
                reason = _describe(exc)
                if isinstance(exc, PinMismatch):  # not a flaky network: someone else's key, or an unannounced change
                    log.error("tunnel_pin_mismatch", reason=reason)
                else:
                    log.warning("connect_failed", reason=reason)
            else:
                reason = _unexpected(exc, raised)
        if self._health is not None and not self._closing:
            self._health.ended(reason, http_status)
        delay = self._backoff.next_delay() if retry_after is None else self._backoff.after_retry_after(retry_after)
        return delay, status_text.retrying(delay, reason)

    async def _connect_and_serve(self) -> str:
        from p0_ssh_agent.identity.token import make_token
        from p0_ssh_agent.runtime.backend_dial import connect_websocket

        settings = self.settings
        refuse_clear_text(settings.url)
        activity = Activity()
        token = make_token(settings.key, settings.client_id)
        streams: list[ActivityStream] = []

        def wrap(stream: trio.abc.Stream) -> ActivityStream:
            wrapped = ActivityStream(stream, activity)
            streams.append(wrapped)
            return wrapped

        async with trio.open_nursery() as nursery:
            try:
                ws = await connect_websocket(
                    settings.url,
                    headers=[(b"authorization", f"Bearer {token}".encode())],
                    # ws:// (loopback only) never uses one, and loading the CA store costs about 2 MiB.
                    ssl_context=tls_context(settings.ca_file) if _secure(settings.url) else None,
                    proxy=settings.proxy,
                    connect_timeout=CONNECT_TIMEOUT_SECONDS,
                    max_message_size=LIBRARY_MAX_MESSAGE_BYTES,
                    nursery=nursery,
                    stream_wrapper=wrap,
                    pins=settings.pins,
                )
                reason = await self._serve(ws, activity)
            finally:
                # The connection is over, however it ended, so its TCP (or TLS) stream is closed here. trio-websocket
                # does not always do it: after refusing a message over max_message_size it sends close 1009, marks
                # the connection closed and stops reading, and a later aclose() returns at once. The socket stayed
                # open, one per oversized frame, and a backend still writing that frame blocked on it for ever.
                for stream in streams:
                    await trio.aclose_forcefully(stream)
            nursery.cancel_scope.cancel()
        return reason

    async def _serve(self, ws: WebSocketConnection, activity: Activity) -> str:
        from p0_ssh_agent.runtime.connection import Session

        session = Session(ws, self.session_settings, self._worker, activity)
        self.session = session
        url = self.settings.url

        linked = False

        def registered() -> None:
            nonlocal linked
            self._backoff.reset()
            self._auth_backoff.reset()
            self.connected_once.set()
            since = datetime.now(UTC)
            if self._health is not None:
                self._health.connected(since)
            self._report(status_text.connected(url, since))
            log.info("connected", url=status_text.display_url(url), client_id=self.settings.client_id)
            if self._on_link is not None:
                linked = True
                self._on_link(True)

        try:
            reason = await session.run(registered)
        finally:
            self.session = None
            if linked and self._on_link is not None:
                self._on_link(False)
            with trio.move_on_after(CLOSE_TIMEOUT_SECONDS) as cleanup:
                cleanup.shield = True
                # 1001 "going away" on shutdown; 1000 when we drop a connection to make a new one
                await ws.aclose(code=1001 if self._closing else 1000)
        log.warning("disconnected", reason=reason)
        return reason

    def shutdown(self) -> None:
        """Close the WebSocket with 1001 (going away) and stop reconnecting; `stopped` is set when done."""
        self._closing = True
        session = self.session
        if session is not None:
            session.close("agent shutting down")
        elif self._attempt_scope is not None:
            self._attempt_scope.cancel()


def refuse_clear_text(url: str) -> None:
    """The token is a bearer credential: plain ws:// only to loopback. Config loading checks this too; checking it
    here, before a token exists, makes it hold however the settings were built (a reload, a test, a tool)."""
    parts = urlsplit(url)
    if parts.scheme.lower() == "ws" and not is_loopback_host(parts.hostname or ""):
        raise ConfigError(
            f"refusing ws:// to {parts.hostname}: the agent's token would travel in clear text; use wss://"
        )


def _retry_after(headers: Sequence[tuple[bytes, bytes]]) -> float | None:
    """The seconds a refusal's Retry-After header asks for, or None when there is none or it does not parse."""
    for name, value in headers:
        if name.lower() == b"retry-after":
            return retry_after_seconds(value.decode("latin-1"), datetime.now(UTC))
    return None


def _secure(url: str) -> bool:
    return urlsplit(url).scheme.lower() == "wss"


def _unwrap(exc: BaseException) -> BaseException:
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return exc


def _unexpected(inner: BaseException, raised: Exception) -> str:
    """Describe (and log) a failure the connection code did not foresee; the tunnel then backs off and retries."""
    from wsproto.utilities import LocalProtocolError

    if isinstance(inner, LocalProtocolError):
        # trio-websocket answers a ping the server sent while we were closing; wsproto refuses the pong. Benign:
        # the connection was ending anyway.
        reason = "the connection ended while a ping was being answered"
        log.warning("disconnected_while_closing", reason=reason)
        return reason
    log.error("connection_crashed", error=f"{type(inner).__name__}: {inner}", exc_info=raised)
    return f"unexpected error: {type(inner).__name__}"


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no connection within {CONNECT_TIMEOUT_SECONDS:.0f}s"
    # trio reports TLS failures as BrokenResourceError caused by the ssl error
    cause = exc.__cause__ if isinstance(exc, trio.BrokenResourceError) else exc
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return f"TLS failed: {cause.reason or cause}"
    if isinstance(exc, OSError):
        if exc.strerror:
            return exc.strerror
        # trio.open_tcp_stream raises OSError("all attempts to connect to host:port failed") from a group holding
        # the real errors ("Connection refused"); without them STATUS would only say "OSError".
        causes = exc.__cause__.exceptions if isinstance(exc.__cause__, BaseExceptionGroup) else ()
        details = sorted({cause.strerror for cause in causes if isinstance(cause, OSError) and cause.strerror})
        text = str(exc) or type(exc).__name__
        return f"{text}: {', '.join(details)}" if details else text
    text = str(exc) or type(exc).__name__
    return text
