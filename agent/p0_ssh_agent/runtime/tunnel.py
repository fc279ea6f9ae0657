"""The tunnel: keep one authenticated WebSocket to the P0 tunnel server alive, forever.

Each attempt makes a fresh JWT, opens TCP (directly or through an HTTP CONNECT proxy), TLS for wss://, then the
WebSocket handshake with `Authorization: Bearer`, and runs a Session until it ends. Between attempts it waits
with full-jitter exponential backoff (1 s doubling to 30 s); the backoff resets once `setClientId` succeeds,
not merely when the socket opens (a server that accepts and then drops us must not be hammered). A 401/403
keeps the process up with a backoff of up to 5 minutes: exiting would only turn a registration problem into a
systemd restart loop (upstream-protocol.md §3.5).
"""

from __future__ import annotations

import ssl
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import urlsplit

import trio
from trio_websocket import ConnectionRejected, HandshakeError, WebSocketConnection, wrap_client_stream

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.identity.keys import AgentKey
from p0_ssh_agent.identity.token import make_token
from p0_ssh_agent.protocol.jsonrpc import MAX_FRAME_BYTES
from p0_ssh_agent.runtime import status
from p0_ssh_agent.runtime.backoff import AUTH_BACKOFF_CAP, Backoff
from p0_ssh_agent.runtime.proxy import ProxySettings, open_tunnel_stream
from p0_ssh_agent.runtime.session import Activity, Session, SessionSettings
from p0_ssh_agent.runtime.worker import Worker

log = get_logger(__name__)

CONNECT_TIMEOUT_SECONDS = 30.0
CLOSE_TIMEOUT_SECONDS = 2.0
# Frames up to MAX_FRAME_BYTES are parsed and refused politely; only far larger ones make the library drop the
# connection (it must buffer a whole message before we can look at it).
LIBRARY_MAX_MESSAGE_BYTES = 16 * MAX_FRAME_BYTES
# The library's reader blocks when its queue is full, and while blocked it answers no pings. Our reader never
# waits on the network except to send a short error reply, so a modest queue is enough.
MESSAGE_QUEUE_SIZE = 64


@dataclass(frozen=True)
class TunnelSettings:
    """Everything that, when it changes on reload, needs a new connection."""

    url: str
    client_id: str
    key: AgentKey
    ca_file: str | None
    proxy: ProxySettings | None


@dataclass(frozen=True)
class Endpoint:
    secure: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def parse_endpoint(url: str) -> Endpoint:
    parts = urlsplit(url)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise AgentError(f"tunnelHost {status.display_url(url)!r} is not a ws:// or wss:// URL")
    secure = parts.scheme == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource = f"{resource}?{parts.query}"
    return Endpoint(secure, parts.hostname, parts.port or (443 if secure else 80), resource)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """The system trust store, or only `tunnelCaFile` when set (a private CA pins the backend)."""
    if ca_file:
        return ssl.create_default_context(cafile=ca_file)
    return ssl.create_default_context()


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


class Rejected(Exception):
    def __init__(self, status_code: int) -> None:
        super().__init__(status_code)
        self.status_code = status_code


async def open_stream(endpoint: Endpoint, settings: TunnelSettings) -> trio.abc.Stream:
    stream: trio.abc.Stream
    if settings.proxy is not None:
        stream = await open_tunnel_stream(
            endpoint.host, endpoint.port, settings.proxy, timeout=CONNECT_TIMEOUT_SECONDS
        )
    else:
        stream = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    if endpoint.secure:
        tls = trio.SSLStream(
            stream, tls_context(settings.ca_file), server_hostname=endpoint.host, https_compatible=True
        )
        await tls.do_handshake()
        stream = tls
    return stream


class Tunnel:
    def __init__(
        self,
        settings: TunnelSettings,
        session_settings: SessionSettings,
        worker: Worker,
        report: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.session_settings = session_settings
        self._worker = worker
        self._report = report
        self._backoff = Backoff()
        self._auth_backoff = Backoff(base=30.0, cap=AUTH_BACKOFF_CAP)
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
        url = self.settings.url
        self._report(status.connecting(url))
        try:
            reason = await self._connect_and_serve()
        except Rejected as exc:
            reason = status.rejected(exc.status_code, url)
            if exc.status_code in (401, 403):
                delay = self._auth_backoff.next_delay()
                log.error("handshake_unauthorized", status=exc.status_code, hint=reason)
                return delay, status.unauthorized(exc.status_code, url, delay)
            log.error("handshake_rejected", status=exc.status_code, hint=reason)
        except (OSError, trio.TooSlowError, HandshakeError, trio.BrokenResourceError, AgentError) as exc:
            reason = _describe(exc)
            log.warning("connect_failed", reason=reason)
        delay = self._backoff.next_delay()
        return delay, status.retrying(delay, reason)

    async def _connect_and_serve(self) -> str:
        settings = self.settings
        endpoint = parse_endpoint(settings.url)
        activity = Activity()
        token = make_token(settings.key, settings.client_id)
        async with trio.open_nursery() as nursery:
            with trio.fail_after(CONNECT_TIMEOUT_SECONDS):
                raw = await open_stream(endpoint, settings)
                try:
                    ws = await wrap_client_stream(
                        nursery,
                        ActivityStream(raw, activity),
                        endpoint.host_header,
                        endpoint.resource,
                        extra_headers=[(b"authorization", f"Bearer {token}".encode())],
                        message_queue_size=MESSAGE_QUEUE_SIZE,
                        max_message_size=LIBRARY_MAX_MESSAGE_BYTES,
                    )
                except ConnectionRejected as exc:
                    await raw.aclose()
                    raise Rejected(exc.status_code) from None
            reason = await self._serve(ws, activity)
            nursery.cancel_scope.cancel()
        return reason

    async def _serve(self, ws: WebSocketConnection, activity: Activity) -> str:
        session = Session(ws, self.session_settings, self._worker, activity)
        self.session = session
        url = self.settings.url

        def registered() -> None:
            self._backoff.reset()
            self._auth_backoff.reset()
            self.connected_once.set()
            self._report(status.connected(url, datetime.now(UTC)))
            log.info("connected", url=status.display_url(url), client_id=self.settings.client_id)

        try:
            reason = await session.run(registered)
        finally:
            self.session = None
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


def _describe(exc: BaseException) -> str:
    if isinstance(exc, trio.TooSlowError):
        return f"no connection within {CONNECT_TIMEOUT_SECONDS:.0f}s"
    if isinstance(exc, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted: {exc.verify_message}"
    if isinstance(exc, OSError):
        return exc.strerror or type(exc).__name__
    text = str(exc) or type(exc).__name__
    return text
