"""A P0-compatible tunnel server (braekhus' contract, upstream-protocol.md §2.4 and §4) for tests and
troubleshooting.

RPC side: WebSocket upgrades authenticated exactly as braekhus does (Bearer token, `sub` read unverified to find
the registered key, then ES384 + `sub` + `aud "p0.dev"` + expiry); `setClientId` binds a client id to the socket
(last writer wins); the server pings every few seconds. HTTP side: `POST /client/<clientId>[/path]` becomes a
JSON-RPC `call` with a ForwardedRequest, and the ForwardedResponse becomes the HTTP response (502 when the client
is unknown, 504 on timeout); with agent-access keys, `POST /mint/ucan` and `/mint/cosign` mint test capabilities
(mint_routes.py). Test hooks let a test reject handshakes, drop sockets and send raw frames.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import re
import ssl
import uuid
from collections import deque
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import TYPE_CHECKING

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.devbackend.http import HttpRequest, HttpResponse, serve_http
from p0_ssh_agent.identity.token import TokenRejected, unverified_subject, verify_token
from p0_ssh_agent.protocol import jsonrpc

if TYPE_CHECKING:  # agent_access is imported only with --agent-access-keys (cli/dev_backend.py)
    from p0_ssh_agent.devbackend.mint_routes import MintRoutes

log = get_logger("p0_ssh_agent.devbackend")

_BEARER = re.compile(r"Bearer (.*)")
_CLIENT_PATH = re.compile(r"/client/([^/]+)(.*)")


# What P0's tunnel server takes from an agent in one frame. INFERRED: upstream-protocol.md names no limit; braekhus
# serves WebSockets with Node's `ws`, whose `maxPayload` defaults to 100 MiB. The tolerant reading: the dev backend
# takes as much, so an answer the real server would forward (a capped runAudit whose control characters JSON
# escapes to six bytes each runs to several MiB) is not dropped here (trio-websocket's default is 1 MiB).
TUNNEL_SERVER_MAX_PAYLOAD = 100 * 1024 * 1024


class CallFailed(Exception):
    def __init__(self, status: int, body: object) -> None:
        super().__init__(status)
        self.status = status
        self.body = body


FRAMES_KEPT = 10_000


@dataclass
class Channel:
    id: str
    ws: WebSocketConnection
    client_id: str | None = None
    pending: dict[int, trio.MemorySendChannel[jsonrpc.Response]] = field(default_factory=dict)
    # The last frames the client sent, for tests to inspect; bounded so a long-running backend does not grow.
    frames: deque[tuple[float, str | bytes]] = field(default_factory=lambda: deque(maxlen=FRAMES_KEPT))


@dataclass
class Hooks:
    """Chaos for tests: applied by the server as it runs."""

    reject_status: int | None = None
    reject_count: int = 0
    reject_headers: list[tuple[bytes, bytes]] = field(default_factory=list)  # sent with each refusal (Retry-After)
    answer_set_client_id: bool = True
    set_client_id_delay: float = 0.0  # seconds before setClientId is answered (a slow backend)
    # set = reading; cleared by pause_reading() to simulate a server that stops reading (half-open)
    reading: trio.Event = field(default_factory=trio.Event)

    def __post_init__(self) -> None:
        self.reading.set()


class DevBackend:
    def __init__(
        self,
        *,
        rpc_host: str = "127.0.0.1",
        rpc_port: int = 0,
        http_host: str = "127.0.0.1",
        http_port: int = 0,
        call_timeout_ms: int = 5000,
        forward_timeout_ms: int | None = None,
        ping_interval: float = 5.0,
        trusted_jwk: Mapping[str, object] | None = None,
        rpc_tls: ssl.SSLContext | None = None,
        mint: MintRoutes | None = None,
    ) -> None:
        self.rpc_host, self.http_host = rpc_host, http_host
        self.rpc_port, self.http_port = rpc_port, http_port
        self.call_timeout_ms = call_timeout_ms
        self.forward_timeout_ms = forward_timeout_ms
        self.ping_interval = ping_interval
        self.rpc_tls = rpc_tls  # a server context: the RPC side speaks wss:// (tests of tunnelCaFile and tunnelPins)
        self.mint = mint  # POST /mint/ucan and /mint/cosign (devbackend/mint_routes.py), or None: off
        self.trusted_jwk = dict(trusted_jwk) if trusted_jwk else None
        self.keys: dict[str, dict[str, object]] = {}
        self.channels: dict[str, Channel] = {}
        self.by_client: dict[str, str] = {}
        self.hooks = Hooks()
        self.set_client_id_log: list[tuple[float, str]] = []
        self.handshakes: list[int] = []
        self.close_codes: list[int | None] = []  # how each client connection ended (1001: the agent shut down)
        self._ids = itertools.count(1)
        self._registered = trio.Event()

    # --- setup ------------------------------------------------------------------------------------------
    def register_client(self, client_id: str, public_jwk: Mapping[str, object]) -> None:
        self.keys[client_id] = dict(public_jwk)

    def _key_for(self, client_id: str) -> dict[str, object] | None:
        return self.keys.get(client_id) or self.trusted_jwk

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(
                partial(serve_websocket, max_message_size=TUNNEL_SERVER_MAX_PAYLOAD),
                self._on_upgrade, self.rpc_host, self.rpc_port, self.rpc_tls,
            )  # fmt: skip
            self.rpc_port = server.port
            self.http_port = await nursery.start(serve_http, self._on_http, self.http_host, self.http_port)
            log.info("dev_backend_listening", rpc=self.rpc_url, http=self.http_url)
            task_status.started()
            await trio.sleep_forever()

    @property
    def rpc_url(self) -> str:
        return f"{'wss' if self.rpc_tls else 'ws'}://{self.rpc_host}:{self.rpc_port}"

    @property
    def http_url(self) -> str:
        return f"http://{self.http_host}:{self.http_port}"

    async def wait_registered(self, client_id: str) -> None:
        while client_id not in self.by_client:
            await self._registered.wait()

    # --- RPC side -----------------------------------------------------------------------------------------
    async def _on_upgrade(self, request: WebSocketRequest) -> None:
        status, error = self._authenticate(request)
        self.handshakes.append(status)
        if status != 101:
            body = json.dumps({"error": error}).encode()
            headers = [(b"content-type", b"application/json"), *self.hooks.reject_headers]
            await request.reject(status, extra_headers=headers, body=body)
            log.warning("handshake_rejected", status=status, error=error)
            return
        ws = await request.accept()
        channel = Channel(str(uuid.uuid4()), ws)
        self.channels[channel.id] = channel
        try:
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._pinger, ws)
                await self._read(channel)
                nursery.cancel_scope.cancel()
        finally:
            self.close_codes.append(ws.closed.code if ws.closed is not None else None)
            del self.channels[channel.id]
            # braekhus fix #70: only remove the mapping if it still points at this channel
            if channel.client_id and self.by_client.get(channel.client_id) == channel.id:
                del self.by_client[channel.client_id]

    def _authenticate(self, request: WebSocketRequest) -> tuple[int, str]:
        if self.hooks.reject_count > 0 and self.hooks.reject_status is not None:
            self.hooks.reject_count -= 1
            return self.hooks.reject_status, "rejected by test hook"
        headers = {name.decode("latin-1").lower(): value.decode("latin-1") for name, value in request.headers}
        match = _BEARER.fullmatch(headers.get("authorization", ""))
        if match is None:
            return 401, "Missing or malformed Authorization header"
        token = match.group(1)
        client_id = unverified_subject(token)
        if client_id is None:
            return 401, "Token has no subject"
        jwk = self._key_for(client_id)
        if jwk is None:
            return 401, f"No public key registered for {client_id}"
        try:
            verify_token(token, jwk, client_id=client_id)
        except TokenRejected as exc:
            return 401, f"Invalid token: {exc}"
        return 101, ""

    async def _pinger(self, ws: WebSocketConnection) -> None:
        while True:
            await trio.sleep(self.ping_interval)
            try:
                await ws.ping()
            except ConnectionClosed:
                return

    async def _read(self, channel: Channel) -> None:
        while True:
            await self.hooks.reading.wait()
            try:
                frame = await channel.ws.get_message()
            except ConnectionClosed:
                return
            channel.frames.append((trio.current_time(), frame))
            # braekhus's json-rpc-2.0 parses whatever `ws` delivered: no value count of its own (a frame of N bytes
            # holds fewer than N values, so this limit never binds).
            incoming = jsonrpc.parse_frame(
                frame, max_bytes=TUNNEL_SERVER_MAX_PAYLOAD, max_values=TUNNEL_SERVER_MAX_PAYLOAD
            )
            if isinstance(incoming, jsonrpc.Request):
                await self._on_client_request(channel, incoming)
            elif isinstance(incoming, jsonrpc.Response) and isinstance(incoming.id, int):
                waiter = channel.pending.pop(incoming.id, None)
                if waiter is not None:
                    waiter.send_nowait(incoming)
            elif isinstance(incoming, jsonrpc.Invalid) and incoming.reply is not None:
                await _send(channel.ws, incoming.reply)

    async def _on_client_request(self, channel: Channel, request: jsonrpc.Request) -> None:
        if request.method != "setClientId":
            await _send(channel.ws, jsonrpc.encode_error(request.id, jsonrpc.METHOD_NOT_FOUND, "Method not found"))
            return
        params = request.params if isinstance(request.params, dict) else {}
        client_id = params.get("clientId")
        if not isinstance(client_id, str):
            await _send(channel.ws, jsonrpc.encode_error(request.id, jsonrpc.INVALID_PARAMS, "clientId required"))
            return
        self.set_client_id_log.append((trio.current_time(), client_id))
        if not self.hooks.answer_set_client_id:
            return
        if self.hooks.set_client_id_delay:
            await trio.sleep(self.hooks.set_client_id_delay)
        channel.client_id = client_id
        self.by_client[client_id] = channel.id  # last writer wins, as in braekhus
        self._registered.set()
        self._registered = trio.Event()
        await _send(channel.ws, jsonrpc.encode_result(request.id, {"ok": True}))

    # --- calls ----------------------------------------------------------------------------------------------
    async def call(self, client_id: str, forwarded: Mapping[str, object], timeout_ms: int | None = None) -> object:
        """Send `call` to a client and return its result; CallFailed(502/504) like braekhus' proxy."""
        channel_id = self.by_client.get(client_id)
        channel = self.channels.get(channel_id) if channel_id else None
        if channel is None:
            raise CallFailed(502, {"error": {}, "message": f"Error: Client not found: {client_id}"})
        request_id = next(self._ids)
        send, receive = trio.open_memory_channel[jsonrpc.Response](1)
        channel.pending[request_id] = send
        try:
            await _send(channel.ws, jsonrpc.encode_request(request_id, "call", dict(forwarded)))
            with trio.move_on_after((timeout_ms or self.call_timeout_ms) / 1000):
                response = await receive.receive()
                if response.error is not None:
                    raise CallFailed(502, {"error": {"code": response.error.code}, "message": response.error.message})
                return response.result
            raise CallFailed(504, {"error": {}, "message": "Request timeout"})
        finally:
            channel.pending.pop(request_id, None)

    async def _on_http(self, request: HttpRequest) -> HttpResponse:
        if request.path == "/live":
            return HttpResponse.json(200, {"message": "OK"})
        if request.path.startswith("/mint/"):
            if self.mint is None:
                return HttpResponse.json(
                    404, {"error": "minting is off: start the dev backend with --agent-access-keys"}
                )
            return await self.mint.handle(request)
        match = _CLIENT_PATH.fullmatch(request.path)
        if match is None:
            return HttpResponse.json(404, {"error": "not found"})
        forwarded: dict[str, object] = {
            "path": match.group(2),
            "headers": {k: v for k, v in request.headers.items() if k != "proxy-authorization"},
            "method": request.method,
            "params": request.query,
            "data": request.data(),
        }
        if self.forward_timeout_ms is not None:
            forwarded["options"] = {"timeoutMillis": self.forward_timeout_ms}
        try:
            result = await self.call(match.group(1), forwarded)
        except CallFailed as exc:
            return HttpResponse.json(exc.status, exc.body)
        if not isinstance(result, dict) or not isinstance(result.get("headers"), dict):
            return HttpResponse.json(502, {"error": {}, "message": "Error: malformed ForwardedResponse"})
        status = result.get("status")
        return HttpResponse(
            status if isinstance(status, int) else 502,
            {str(k): str(v) for k, v in result["headers"].items()},
            json.dumps(result.get("data")).encode(),
        )

    # --- chaos hooks ----------------------------------------------------------------------------------------
    async def drop(self, client_id: str, code: int = 1011) -> None:
        channel_id = self.by_client.get(client_id)
        if channel_id and channel_id in self.channels:
            await self.channels[channel_id].ws.aclose(code)

    async def send_raw(self, client_id: str, text: str | bytes) -> None:
        channel_id = self.by_client[client_id]
        await _send(self.channels[channel_id].ws, text)

    async def send_half_frame(self, client_id: str) -> None:
        """Write the start of a text frame that announces 1,000 bytes and carries 100, then go on as if nothing
        happened: the client's parser is left mid-frame and whatever follows lands inside that frame."""
        channel_id = self.by_client[client_id]
        # trio-websocket has no API for a torn frame; its stream is the raw TCP connection underneath (test only).
        stream = self.channels[channel_id].ws._stream
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            await stream.send_all(b"\x81\x7e\x03\xe8" + b'{"jsonrpc":"2.0",' + b"x" * 83)

    def pause_reading(self) -> None:
        self.hooks.reading = trio.Event()

    def resume_reading(self) -> None:
        self.hooks.reading.set()

    def frames_from(self, client_id: str) -> list[tuple[float, str | bytes]]:
        return [f for c in self.channels.values() if c.client_id == client_id for f in c.frames]


async def _send(ws: WebSocketConnection, text: str | bytes) -> None:
    with contextlib.suppress(ConnectionClosed):
        await ws.send_message(text)
