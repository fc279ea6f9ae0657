"""One live WebSocket connection: the reader, the serialised sender, the heartbeat and the liveness check.

A session ends (returns its reason) when the socket closes, a heartbeat or `setClientId` fails or times out, or
nothing at all (no frame, no ping) arrives for `liveness_timeout` seconds. It never raises for those: the tunnel
decides what to do next. JSON-RPC ids are independent per direction: the server's `call` ids are echoed as they
came, and the agent's own request ids come from a per-session counter (they may collide with the server's; the
two never meet because requests and responses are told apart by shape, not by id).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection

from p0_ssh_agent.adapters.logging import debug_enabled, get_logger
from p0_ssh_agent.protocol import jsonrpc
from p0_ssh_agent.protocol.forwarded import (
    CommandResult,
    InvalidParams,
    forwarded_response,
    parse_forwarded_request,
    redact_headers,
)
from p0_ssh_agent.runtime.job_locks import acquire
from p0_ssh_agent.runtime.session_settings import (
    CALL_TIMEOUT_SECONDS,
    LIVENESS_TIMEOUT_SECONDS,
    Activity,
    SessionSettings,
)
from p0_ssh_agent.runtime.worker import Worker

log = get_logger(__name__)

__all__ = ["CALL_TIMEOUT_SECONDS", "LIVENESS_TIMEOUT_SECONDS", "Activity", "RpcCallError", "Session", "SessionSettings"]

SEND_TIMEOUT_SECONDS = 10.0
# The close code trio-websocket sends, and reports to us, when a message exceeds its max_message_size.
MESSAGE_TOO_BIG = 1009


class RpcCallError(Exception):
    """A call the agent made (setClientId) got an error, no answer in time, or the socket went away."""


@dataclass
class _Pending:
    done: trio.Event = field(default_factory=trio.Event)
    response: jsonrpc.Response | None = None


class Session:
    def __init__(
        self,
        ws: WebSocketConnection,
        settings: SessionSettings,
        worker: Worker,
        activity: Activity,
    ) -> None:
        self._ws = ws
        self.settings = settings
        self._worker = worker
        self._activity = activity
        self._send_lock = trio.Lock()
        self._ids = itertools.count(1)
        self._pending: dict[int, _Pending] = {}
        self._closed = False
        self._reading = True
        self._end_reason: str | None = None
        self._scope: trio.CancelScope | None = None
        self._reader_scope = trio.CancelScope()
        # The latest answer to setClientId (the first call or a heartbeat), for the live state (runtime/health.py).
        self.last_answer: tuple[datetime, object] | None = None

    # --- lifecycle ----------------------------------------------------------------------------------------
    async def run(self, on_registered: Callable[[], None]) -> str:
        """Run until the connection ends; returns why. `on_registered` fires after the first setClientId."""
        async with trio.open_nursery() as nursery:
            self._scope = nursery.cancel_scope
            nursery.start_soon(self._read_loop)
            nursery.start_soon(self._liveness_loop)
            try:
                answer = await self.call("setClientId", {"clientId": self.settings.client_id})
            except RpcCallError as exc:
                self._end(f"setClientId failed: {exc}")
            else:
                self.last_answer = (datetime.now(UTC), answer)
                on_registered()
                nursery.start_soon(self._heartbeat_loop)
        self._closed = True
        for pending in self._pending.values():
            pending.done.set()
        return self._end_reason or "session ended"

    def stop_reading(self) -> None:
        """Shutdown: take no new calls; answers to calls already taken still go out."""
        self._reading = False
        self._reader_scope.cancel()

    def close(self, reason: str) -> None:
        self._end(reason)

    def _end(self, reason: str) -> None:
        if self._end_reason is None:
            self._end_reason = reason
        if self._scope is not None:
            self._scope.cancel()

    # --- sending ------------------------------------------------------------------------------------------
    async def send(self, frame: str | Callable[[], str]) -> bool:
        """Send one frame; one lock keeps frames whole. False when the connection is gone.

        A callable is called for the text only once the lock is ours: answers waiting their turn then hold their
        result, not its JSON, and only one answer at a time exists encoded (runtime/limits.py REPLY_ENCODING)."""
        if self._closed:
            return False
        try:
            await acquire(self._send_lock)  # a free lock is taken without a scheduling round trip
            try:
                with trio.fail_after(SEND_TIMEOUT_SECONDS):
                    await self._ws.send_message(frame if isinstance(frame, str) else frame())
            finally:
                self._send_lock.release()
        except (ConnectionClosed, trio.TooSlowError, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            self._end(f"send failed: {type(exc).__name__}")
            return False
        return True

    async def call(self, method: str, params: object) -> object:
        request_id = next(self._ids)
        pending = _Pending()
        self._pending[request_id] = pending
        try:
            if not await self.send(jsonrpc.encode_request(request_id, method, params)):
                raise RpcCallError("connection closed")
            with trio.move_on_after(self.settings.call_timeout):
                await pending.done.wait()
            response = pending.response
            if response is None:
                if self._closed:
                    raise RpcCallError("connection closed")
                raise RpcCallError(f"no answer within {self.settings.call_timeout:.0f}s")
            if response.error is not None:
                raise RpcCallError(f"error {response.error.code}: {response.error.message}")
            return response.result
        finally:
            del self._pending[request_id]

    # --- the three loops ----------------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        with self._reader_scope:
            while self._reading:
                try:
                    # Parsed at once and not kept: while _dispatch waits, only the parsed request is held.
                    incoming = jsonrpc.parse_frame(await self._ws.get_message())
                except ConnectionClosed as exc:
                    code = exc.reason.code if exc.reason is not None else "none"
                    if code == MESSAGE_TOO_BIG:
                        self._end(f"the server sent a frame over {jsonrpc.MAX_FRAME_BYTES} characters (code {code})")
                    else:
                        self._end(f"connection closed by server (code {code})")
                    return
                await self._dispatch(incoming)

    async def _dispatch(self, incoming: jsonrpc.Incoming) -> None:
        if isinstance(incoming, jsonrpc.Response):
            self._resolve(incoming)
        elif isinstance(incoming, jsonrpc.Request):
            await self._on_request(incoming)
        elif isinstance(incoming, jsonrpc.Invalid):
            log.warning("bad_frame", reason=incoming.reason)
            if incoming.reply is not None:
                await self.send(incoming.reply)
        else:  # a notification: nothing is defined for the agent to receive; ignore it like braekhus does
            log.debug("notification_ignored", method=incoming.method)

    def _resolve(self, response: jsonrpc.Response) -> None:
        pending = self._pending.get(response.id) if isinstance(response.id, int) else None
        if pending is None:
            log.debug("unexpected_response", id=response.id)
            return
        pending.response = response
        pending.done.set()

    async def _on_request(self, request: jsonrpc.Request) -> None:
        if request.method != "call":
            await self.send(
                jsonrpc.encode_error(request.id, jsonrpc.METHOD_NOT_FOUND, f'method "{request.method}" not found')
            )
            return
        try:
            forwarded = parse_forwarded_request(request.params)
        except InvalidParams as exc:
            # The Go agent answers -32603 here (upstream-protocol.md §3.6); JSON-RPC 2.0 and issue 3 say -32602,
            # and braekhus treats every error alike (502), so the standard code costs no compatibility.
            await self.send(jsonrpc.encode_error(request.id, jsonrpc.INVALID_PARAMS, f"invalid params: {exc}"))
            return
        if debug_enabled(__name__):  # a dropped debug event still cost its headers' copy and structlog's chain
            log.debug(
                "call_received",
                id=request.id,
                method=forwarded.method,
                path=forwarded.path,
                headers=redact_headers(forwarded.headers),
            )
        command, rpc_id = forwarded.command, request.id

        def encoded(result: CommandResult) -> str:
            body = forwarded_response(result, client_id=self.settings.client_id, command=command, now=datetime.now(UTC))
            return jsonrpc.encode_result(rpc_id, body)

        async def reply(result: CommandResult) -> None:
            if not await self.send(lambda: encoded(result)):
                log.warning("reply_dropped", id=rpc_id, reason="connection closed before the answer was ready")

        # Returns at once, or after a busy answer has been written: then this reader waits, and so does the backend.
        await self._worker.submit(forwarded, reply, held_bytes=request.held_bytes)

    async def _heartbeat_loop(self) -> None:
        while True:
            await trio.sleep(self.settings.heartbeat_interval)
            try:
                answer = await self.call("setClientId", {"clientId": self.settings.client_id})
            except RpcCallError as exc:
                self._end(f"heartbeat failed: {exc}")
                return
            self.last_answer = (datetime.now(UTC), answer)

    async def _liveness_loop(self) -> None:
        while True:
            deadline = self._activity.last + self.settings.liveness_timeout
            if trio.current_time() >= deadline:
                self._end(f"nothing received from the server for {self.settings.liveness_timeout:.0f}s")
                return
            await trio.sleep_until(deadline)
