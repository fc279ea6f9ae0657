"""A second, independent P0-compatible tunnel server, written from upstream-protocol.md §2-§5 alone.

It shares no code with the agent or with p0_ssh_agent.devbackend: the JWT is checked here with `cryptography`
(ES384 over raw R||S, `sub`, `aud`, `exp`, `iat`), and JSON-RPC frames are parsed with the standard library.
Where the dev backend is lenient (it only needs to be useful), this one is strict: every departure of the agent
from the contract is recorded in `violations`, and a test ends by asserting that list is empty. What counts as a
violation:

* a handshake without `Authorization: Bearer <jwt>`, or a token that fails any check (also answered 401);
* a first frame on a connection that is not the `setClientId` request, or `setClientId` for another client id;
* a binary frame, a frame that is not a JSON object with `"jsonrpc": "2.0"`, a duplicate key, extra members;
* a request from the agent other than `setClientId` (it has no other method to call) or one without an id;
* a response whose id matches neither an outstanding server call nor an error reply the test said to expect;
* a `call` result whose shape differs from §5.4 in any member.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import json
import re
import ssl
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus

import trio
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, WebSocketServer

JsonId = int | str | None

AUDIENCE = "p0.dev"
# The agent backdates iat a little and the Go agent issues week-long tokens (§2.3); anything outside these
# bounds is a clock or encoding bug, not a policy choice.
IAT_PAST_SECONDS = 600
IAT_FUTURE_SECONDS = 60
MAX_LIFETIME_SECONDS = 7 * 24 * 3600
TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")  # Go's RFC3339 in UTC, whole seconds (§5.4)
PING_SECONDS = 5.0  # braekhus pings every client every 5 s (§3.4)


class CallError(Exception):
    """A server call that got a JSON-RPC error, no answer in time, or lost its connection."""


# --- the JWT, checked with cryptography only ---------------------------------------------------------------


def _b64url(text: str) -> bytes:
    if "=" in text or not re.fullmatch(r"[A-Za-z0-9_-]*", text):
        raise ValueError("not unpadded base64url")
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public_key(jwk: Mapping[str, object]) -> ec.EllipticCurvePublicKey:
    x, y = jwk.get("x"), jwk.get("y")
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-384" or not isinstance(x, str) or not isinstance(y, str):
        raise ValueError("registered key is not an EC P-384 JWK")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_b64url(x), "big"), int.from_bytes(_b64url(y), "big"), ec.SECP384R1()
    )
    return numbers.public_key()


def token_problems(token: str, jwk: Mapping[str, object], *, client_id: str, now: float) -> list[str]:
    """Everything wrong with `token` under §2.3/§2.4 (empty when braekhus would accept it)."""
    parts = token.split(".")
    if len(parts) != 3:
        return [f"token has {len(parts)} dot-separated parts, not 3"]
    try:
        header = json.loads(_b64url(parts[0]))
        claims = json.loads(_b64url(parts[1]))
        signature = _b64url(parts[2])
    except ValueError as exc:
        return [f"token is not base64url JSON: {exc}"]
    if not isinstance(header, dict) or not isinstance(claims, dict):
        return ["token header or claims are not JSON objects"]
    problems: list[str] = []
    if header.get("alg") != "ES384":
        problems.append(f"alg is {header.get('alg')!r}, not 'ES384'")
    if header.get("typ", "JWT") != "JWT":
        problems.append(f"typ is {header.get('typ')!r}")
    if len(signature) != 96:
        problems.append(f"signature is {len(signature)} bytes, not the 96 of raw R||S (DER?)")
    else:
        der = encode_dss_signature(int.from_bytes(signature[:48], "big"), int.from_bytes(signature[48:], "big"))
        try:
            _public_key(jwk).verify(der, f"{parts[0]}.{parts[1]}".encode(), ec.ECDSA(hashes.SHA384()))
        except InvalidSignature:
            problems.append("signature does not verify against the registered public key")
    if claims.get("sub") != client_id:
        problems.append(f"sub is {claims.get('sub')!r}, not {client_id!r}")
    if claims.get("aud") != AUDIENCE:  # a string, not a list (§2.3)
        problems.append(f"aud is {claims.get('aud')!r}, not {AUDIENCE!r}")
    exp, iat = claims.get("exp"), claims.get("iat")
    if not _is_int(exp) or not _is_int(iat):
        return [*problems, f"exp {exp!r} and iat {iat!r} must both be integer seconds"]
    assert isinstance(exp, int) and isinstance(iat, int)
    if exp <= now:
        problems.append(f"token expired {now - exp:.0f}s ago")
    if not now - IAT_PAST_SECONDS <= iat <= now + IAT_FUTURE_SECONDS:
        problems.append(f"iat is {iat - now:+.0f}s from now")
    if not 0 < exp - iat <= MAX_LIFETIME_SECONDS:
        problems.append(f"lifetime exp - iat = {exp - iat}s")
    return problems


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


# --- the §5.4 response shape -------------------------------------------------------------------------------

SUCCESS_KEYS = {"success", "message", "client_id", "command", "timestamp", "status"}
FAILURE_KEYS = {"success", "error", "client_id", "command", "timestamp", "status"}


def response_shape_problems(result: object, *, client_id: str, command: str) -> list[str]:
    """Every way `result` differs from a §5.4 ForwardedResponse for `command` (empty when it matches)."""
    if not isinstance(result, dict):
        return [f"result is {type(result).__name__}, not an object"]
    problems: list[str] = []
    if set(result) != {"headers", "status", "statusText", "data"}:
        problems.append(f"result members are {sorted(result)}")
    if result.get("headers") != {"content-type": "application/json"}:
        problems.append(f"headers are {result.get('headers')!r}")
    status = result.get("status")
    if not _is_int(status) or not 100 <= status <= 599:  # type: ignore[operator]
        return [*problems, f"status {status!r} is not an HTTP status"]
    assert isinstance(status, int)
    if result.get("statusText") != HTTPStatus(status).phrase:
        problems.append(f"statusText {result.get('statusText')!r} for {status}")
    data = result.get("data")
    if not isinstance(data, dict):
        return [*problems, f"data is {type(data).__name__}, not an object"]
    success = data.get("success")
    if success is True:
        if status != 200:
            problems.append(f"success with HTTP {status}")
        extra = set(data) - SUCCESS_KEYS - {"output"}
        if not set(data) >= SUCCESS_KEYS or extra:
            problems.append(f"success data members are {sorted(data)}")
        if not isinstance(data.get("message"), str):
            problems.append("message is not a string")
        if "output" in data and (not isinstance(data["output"], str) or not data["output"]):
            problems.append("output present but not a non-empty string")
        if data.get("status") != "completed":
            problems.append(f"data.status {data.get('status')!r} on success")
    elif success is False:
        if 200 <= status < 300:
            problems.append(f"failure with HTTP {status}")
        if set(data) != FAILURE_KEYS:
            problems.append(f"failure data members are {sorted(data)}")
        if not isinstance(data.get("error"), str):
            problems.append("error is not a string")
        if data.get("status") != "failed":
            problems.append(f"data.status {data.get('status')!r} on failure")
    else:
        problems.append(f"success is {success!r}, not a boolean")
    if data.get("client_id") != client_id:
        problems.append(f"client_id {data.get('client_id')!r}")
    if data.get("command") != command:
        problems.append(f"command {data.get('command')!r}, expected {command!r}")
    if not isinstance(data.get("timestamp"), str) or not TIMESTAMP.fullmatch(data["timestamp"]):
        problems.append(f"timestamp {data.get('timestamp')!r} is not RFC 3339 UTC in whole seconds")
    return problems


# --- the server --------------------------------------------------------------------------------------------


def _no_duplicate_keys(pairs: list[tuple[str, object]]) -> dict[str, object]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) != len(keys):
        raise ValueError(f"duplicate keys in {keys}")
    return dict(pairs)


@dataclass
class Answer:
    """What came back for a server call: exactly one of result and error is meaningful."""

    result: object = None
    error: dict[str, object] | None = None


@dataclass
class _Outstanding:
    method: str
    command: str
    done: trio.Event = field(default_factory=trio.Event)
    answer: Answer | None = None


@dataclass
class _Connection:
    ws: WebSocketConnection
    number: int
    frames: int = 0
    registered: bool = False
    outstanding: dict[int, _Outstanding] = field(default_factory=dict)
    # error replies a test provoked on purpose with a raw frame: (id, code) -> how many are still due
    expected_errors: dict[tuple[JsonId, int], int] = field(default_factory=dict)


class StrictBackend:
    """Serves one client id on 127.0.0.1; `violations` lists every departure from the contract it saw."""

    def __init__(
        self,
        public_jwk: Mapping[str, object],
        client_id: str,
        *,
        ssl_context: ssl.SSLContext | None = None,
        reject_status: int | None = None,
        reject_count: int = 0,
    ) -> None:
        self.public_jwk = dict(public_jwk)
        self.client_id = client_id
        self.ssl_context = ssl_context
        self.reject_status, self.reject_count = reject_status, reject_count
        self.port = 0
        self.violations: list[str] = []
        self.tokens: list[str] = []  # every bearer token received, so a test can look for it in logs
        self.handshakes: list[int] = []  # HTTP status answered to each upgrade (101 = accepted)
        self.set_client_id_times: list[float] = []
        self.close_codes: list[int | None] = []
        self.frames: list[dict[str, object]] = []  # every valid frame the agent sent, in order
        self._current: _Connection | None = None
        self._numbers = itertools.count(1)
        self._ids = itertools.count(1)
        self._changed = trio.Event()

    @property
    def url(self) -> str:
        return f"{'wss' if self.ssl_context else 'ws'}://127.0.0.1:{self.port}"

    async def serve(
        self,
        socket: trio.socket.SocketType | None = None,
        *,
        task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
    ) -> None:
        """Listen on `socket` (bound, not yet listening) or on a fresh 127.0.0.1:0; run until cancelled."""
        if socket is None:
            socket = trio.socket.socket()
            await socket.bind(("127.0.0.1", 0))
        socket.listen()
        self.port = socket.getsockname()[1]
        plain = trio.SocketListener(socket)
        listeners: Sequence[trio.SocketListener | trio.SSLListener[trio.SocketStream]] = (
            [trio.SSLListener(plain, self.ssl_context, https_compatible=True)] if self.ssl_context else [plain]
        )
        server = WebSocketServer(self._on_upgrade, listeners, message_queue_size=64)
        async with trio.open_nursery() as nursery:
            await nursery.start(server.run)
            task_status.started()

    def _violation(self, text: str) -> None:
        self.violations.append(text)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    # --- handshake ---------------------------------------------------------------------------------------
    async def _on_upgrade(self, request: WebSocketRequest) -> None:
        headers = [(name.decode("latin-1").lower(), value.decode("latin-1")) for name, value in request.headers]
        auth = [value for name, value in headers if name == "authorization"]
        status = 101
        match = re.fullmatch(r"Bearer (\S+)", auth[0]) if len(auth) == 1 else None
        if match is None:
            self._violation(f"handshake: expected one 'Authorization: Bearer <jwt>' header, got {len(auth)}")
            status = 401
        else:
            self.tokens.append(match.group(1))
            problems = token_problems(match.group(1), self.public_jwk, client_id=self.client_id, now=time.time())
            if problems:
                self._violation(f"handshake token: {'; '.join(problems)}")
                status = 401
        if status == 101 and self.reject_count > 0 and self.reject_status is not None:
            self.reject_count -= 1
            status = self.reject_status
        self.handshakes.append(status)
        if status != 101:
            await request.reject(status, extra_headers=[(b"content-type", b"application/json")], body=b'{"error":{}}')
            return
        connection = _Connection(await request.accept(), next(self._numbers))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._pinger, connection.ws)
            await self._read(connection)
            nursery.cancel_scope.cancel()

    async def _pinger(self, ws: WebSocketConnection) -> None:
        while True:
            await trio.sleep(PING_SECONDS)
            try:
                await ws.ping()
            except ConnectionClosed:
                return

    # --- what the agent sends ----------------------------------------------------------------------------
    async def _read(self, connection: _Connection) -> None:
        try:
            while True:
                try:
                    frame = await connection.ws.get_message()
                except ConnectionClosed as closed:
                    self.close_codes.append(closed.reason.code if closed.reason else None)
                    return
                await self._on_frame(connection, frame)
        finally:
            for outstanding in connection.outstanding.values():
                outstanding.done.set()
            if self._current is connection:
                self._current = None
            self._notify()

    async def _on_frame(self, connection: _Connection, frame: str | bytes) -> None:
        connection.frames += 1
        where = f"connection {connection.number} frame {connection.frames}"
        if isinstance(frame, bytes):
            self._violation(f"{where}: binary frame ({len(frame)} bytes); JSON-RPC goes in text frames")
            return
        try:
            message = json.loads(frame, object_pairs_hook=_no_duplicate_keys)
        except ValueError as exc:
            self._violation(f"{where}: not JSON ({exc}): {frame[:200]!r}")
            return
        if not isinstance(message, dict) or message.get("jsonrpc") != "2.0":
            self._violation(f"{where}: not a JSON-RPC 2.0 object: {frame[:200]!r}")
            return
        self.frames.append(message)
        is_request = "method" in message
        if connection.frames == 1 and not (is_request and message.get("method") == "setClientId"):
            self._violation(f"{where}: the first frame is not the setClientId request: {frame[:200]!r}")
        if is_request:
            await self._on_request(connection, message, where)
        else:
            self._on_response(connection, message, where)

    async def _on_request(self, connection: _Connection, message: dict[str, object], where: str) -> None:
        if set(message) - {"jsonrpc", "id", "method", "params"}:
            self._violation(f"{where}: request has extra members {sorted(message)}")
        request_id = message.get("id")
        if not _is_int(request_id) and not isinstance(request_id, str):
            self._violation(f"{where}: request id {request_id!r} is not an integer or string")
            return
        if message["method"] != "setClientId":
            self._violation(f"{where}: the agent called {message['method']!r}; it has only setClientId to call")
            await self._send(connection, {"jsonrpc": "2.0", "id": request_id,
                                          "error": {"code": -32601, "message": "Method not found"}})  # fmt: skip
            return
        if message.get("params") != {"clientId": self.client_id}:
            self._violation(f"{where}: setClientId params {message.get('params')!r}")
        self.set_client_id_times.append(trio.current_time())
        await self._send(connection, {"jsonrpc": "2.0", "id": request_id, "result": {"ok": True}})
        connection.registered = True
        self._current = connection  # last writer wins, as in braekhus
        self._notify()

    def _on_response(self, connection: _Connection, message: dict[str, object], where: str) -> None:
        has_result, has_error = "result" in message, "error" in message
        if "id" not in message or has_result == has_error or set(message) - {"jsonrpc", "id", "result", "error"}:
            self._violation(f"{where}: malformed response, members {sorted(message)}")
            return
        response_id = message["id"]
        error = message.get("error")
        if has_error and not _valid_error(error):
            self._violation(f"{where}: malformed error object {error!r}")
            return
        if _is_int(response_id) and response_id in connection.outstanding:
            assert isinstance(response_id, int)
            outstanding = connection.outstanding.pop(response_id)
            outstanding.answer = Answer(message.get("result"), error if isinstance(error, dict) else None)
            if has_result and outstanding.method == "call":
                for problem in response_shape_problems(
                    message["result"], client_id=self.client_id, command=outstanding.command
                ):
                    self._violation(f"{where}: call {response_id}: {problem}")
            outstanding.done.set()
            return
        code = error.get("code") if isinstance(error, dict) else None
        if isinstance(code, int) and (_is_int(response_id) or isinstance(response_id, str | None)):
            key = (response_id if isinstance(response_id, int | str) else None, code)
            if connection.expected_errors.get(key, 0) > 0:
                connection.expected_errors[key] -= 1
                return
        self._violation(f"{where}: response id {response_id!r} answers no outstanding call: {message!r}"[:400])

    # --- what the test sends -----------------------------------------------------------------------------
    async def _send(self, connection: _Connection, message: object) -> None:
        with contextlib.suppress(ConnectionClosed):
            await connection.ws.send_message(json.dumps(message))

    async def wait_connected(self, *, after: int = 0) -> None:
        """Until the agent's connection number `after + 1` or later has registered with setClientId."""
        while self._current is None or not self._current.registered or self._current.number <= after:
            await self._changed.wait()

    @property
    def connection_number(self) -> int:
        return self._current.number if self._current else 0

    def _live(self) -> _Connection:
        if self._current is None:
            raise CallError("no agent connected")
        return self._current

    async def request(self, method: str, params: object, *, timeout: float = 10.0) -> Answer:  # noqa: ASYNC109
        """Send a JSON-RPC request to the agent and return its answer (CallError when none comes)."""
        connection = self._live()
        request_id = next(self._ids)
        command = ""
        if isinstance(params, dict) and isinstance(params.get("data"), dict):
            found = params["data"].get("command")
            command = found if isinstance(found, str) else ""
        outstanding = _Outstanding(method, command)
        connection.outstanding[request_id] = outstanding
        await self._send(connection, {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params})
        with trio.move_on_after(timeout):
            await outstanding.done.wait()
        connection.outstanding.pop(request_id, None)
        if outstanding.answer is None:
            raise CallError(f"no answer to {method} {request_id}")
        return outstanding.answer

    async def call(self, forwarded: Mapping[str, object], *, timeout: float = 10.0) -> dict[str, object]:  # noqa: ASYNC109
        """A braekhus `call`: the ForwardedResponse (the agent's JSON-RPC result), or CallError."""
        answer = await self.request("call", dict(forwarded), timeout=timeout)
        if answer.error is not None or not isinstance(answer.result, dict):
            raise CallError(f"call failed: {answer.error!r}")
        return answer.result

    async def send_raw(self, frame: str | bytes, *, error_reply: tuple[JsonId, int] | None = None) -> None:
        """Send any frame; `error_reply` = (id, code) names the one JSON-RPC error the agent must answer with."""
        connection = self._live()
        if error_reply is not None:
            connection.expected_errors[error_reply] = connection.expected_errors.get(error_reply, 0) + 1
        with contextlib.suppress(ConnectionClosed):
            await connection.ws.send_message(frame)

    def unanswered_errors(self) -> list[tuple[JsonId, int]]:
        """Error replies provoked with send_raw that have not arrived (on the current connection)."""
        connection = self._current
        if connection is None:
            return []
        return [key for key, due in connection.expected_errors.items() if due > 0]

    async def drop(self, code: int = 1011) -> None:
        """Close the agent's socket from the server side."""
        await self._live().ws.aclose(code)


def _valid_error(error: object) -> bool:
    return (
        isinstance(error, dict)
        and _is_int(error.get("code"))
        and isinstance(error.get("message"), str)
        and not set(error) - {"code", "message", "data"}
    )
