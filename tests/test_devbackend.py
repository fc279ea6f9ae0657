"""The dev backend (a braekhus-compatible tunnel server) over real sockets on 127.0.0.1.

The agent side is played by hand here: trio-websocket clients with tokens from identity.token (or crafted with
jose directly for the claims the agent would never produce), and a raw TCP client for the HTTP side, so every
byte the backend accepts or refuses is visible to the test.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
from jose import jwt
from jose.backends.cryptography_backend import CryptographyECKey
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketConnection, open_websocket_url

from p0_ssh_agent.devbackend.http import MAX_BODY_BYTES
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.identity.signing_key import AgentKey, generate_keys
from p0_ssh_agent.identity.token import make_token
from p0_ssh_agent.protocol import jsonrpc

CLIENT_ID = "acme:host-1:ssh"
GUARD_SECONDS = 20.0  # only keeps a broken build from hanging; never asserted on


@dataclass
class Keys:
    agent: AgentKey
    stranger: AgentKey


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(generate_keys(tmp_path / "agent"), generate_keys(tmp_path / "stranger"))


@asynccontextmanager
async def backend_running(keys: Keys, **options: int) -> AsyncIterator[DevBackend]:
    backend = DevBackend(**options)  # type: ignore[arg-type]
    backend.register_client(CLIENT_ID, keys.agent.public_jwk)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            yield backend
            nursery.cancel_scope.cancel()


def bearer(token: str) -> list[tuple[bytes, bytes]]:
    return [(b"authorization", f"Bearer {token}".encode())]


@asynccontextmanager
async def agent_socket(backend: DevBackend, headers: list[tuple[bytes, bytes]]) -> AsyncIterator[WebSocketConnection]:
    async with open_websocket_url(backend.rpc_url + "/", extra_headers=headers, connect_timeout=10) as ws:
        yield ws


async def handshake_status(backend: DevBackend, headers: list[tuple[bytes, bytes]]) -> tuple[int, object]:
    """The HTTP status and JSON body the backend answers an upgrade with (101 and None when it accepts)."""
    try:
        async with agent_socket(backend, headers):
            return 101, None
    except ConnectionRejected as exc:
        return exc.status_code, json.loads(exc.body or b"null")
    except BaseExceptionGroup as group:  # trio-websocket versions differ in whether they wrap it
        rejected = group.subgroup(ConnectionRejected)
        if rejected is None:
            raise
        inner = rejected.exceptions[0]
        while isinstance(inner, BaseExceptionGroup):
            inner = inner.exceptions[0]
        assert isinstance(inner, ConnectionRejected)
        return inner.status_code, json.loads(inner.body or b"null")


async def set_client_id(ws: WebSocketConnection, client_id: str = CLIENT_ID, rpc_id: int = 1) -> object:
    await ws.send_message(jsonrpc.encode_request(rpc_id, "setClientId", {"clientId": client_id}))
    reply = json.loads(await ws.get_message())
    assert reply["id"] == rpc_id
    return reply.get("result", reply.get("error"))


@dataclass
class FakeAgent:
    """Answers every `call` with a ForwardedResponse (status `status`, data naming `name` and the params seen)."""

    ws: WebSocketConnection
    name: str
    status: int = 200
    answer: bool = True
    output: str = ""
    calls: list[dict[str, object]] = field(default_factory=list)

    async def serve(self) -> None:
        while True:
            try:
                message = await self.ws.get_message()
            except ConnectionClosed:
                return
            frame = json.loads(message)
            assert frame.get("method") == "call", str(frame)[:300]
            self.calls.append(frame)
            if not self.answer:
                continue
            data: dict[str, object] = {"success": self.status == 200, "who": self.name}
            if self.output:
                data["output"] = self.output
            result = {
                "headers": {"content-type": "application/json", "x-agent": self.name},
                "status": self.status,
                "statusText": "whatever",
                "data": data,
            }
            await self.ws.send_message(jsonrpc.encode_result(frame["id"], result))


@dataclass
class HttpAnswer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> object:
        return json.loads(self.body)


async def http(backend: DevBackend, head: str, body: bytes = b"") -> HttpAnswer:
    """One raw HTTP/1.1 exchange; the backend closes the connection after answering."""
    stream = await trio.open_tcp_stream(backend.http_host, backend.http_port)
    async with stream:
        await stream.send_all(head.replace("\n", "\r\n").encode() + b"\r\n" + body)
        received = bytearray()
        while chunk := await stream.receive_some(65536):
            received += chunk
    head_bytes, _, payload = bytes(received).partition(b"\r\n\r\n")
    status_line, *header_lines = head_bytes.decode("latin-1").split("\r\n")
    headers = {name.lower(): value.strip() for name, _, value in (line.partition(":") for line in header_lines)}
    assert int(headers["content-length"]) == len(payload)
    return HttpAnswer(int(status_line.split(" ")[1]), headers, payload)


async def post(backend: DevBackend, path: str, data: object, extra: str = "") -> HttpAnswer:
    body = json.dumps(data).encode()
    head = f"POST {path} HTTP/1.1\nHost: test\nContent-Type: application/json\nContent-Length: {len(body)}\n{extra}"
    return await http(backend, head, body)


async def channels_down_to(backend: DevBackend, count: int) -> None:
    """Wait until the backend has cleaned up closed sockets (it offers no event for that, so poll)."""
    with trio.fail_after(GUARD_SECONDS):
        while len(backend.channels) > count:
            await trio.sleep(0.01)


# --- the WebSocket side: authentication -----------------------------------------------------------------------


def crafted_token(key: AgentKey, **overrides: object) -> str:
    """A token like make_token's but with claims the agent would never send."""
    now = int(time.time())
    claims: dict[str, object] = {"iss": "kd-client", "sub": CLIENT_ID, "aud": "p0.dev", "iat": now, "exp": now + 300}
    claims.update(overrides)
    claims = {name: value for name, value in claims.items() if value is not None}
    return jwt.encode(claims, CryptographyECKey(key.private_key, "ES384"), algorithm="ES384")


@pytest.mark.parametrize(
    "case",
    [
        "no-header",
        "basic-scheme",
        "lower-case-scheme",
        "no-scheme",
        "empty-bearer",
        "not-a-jwt",
        "other-key",
        "wrong-aud",
        "no-aud",
        "expired",
        "unknown-client",
    ],
)
async def test_handshakes_the_backend_refuses_with_401(keys: Keys, case: str) -> None:
    good = make_token(keys.agent, CLIENT_ID)
    malformed, invalid = "Missing or malformed Authorization header", "Invalid token"
    headers, expected = {
        "no-header": ([], malformed),
        "basic-scheme": ([(b"authorization", b"Basic YWxpY2U6c2VjcmV0")], malformed),
        "lower-case-scheme": ([(b"authorization", f"bearer {good}".encode())], malformed),
        "no-scheme": ([(b"authorization", good.encode())], malformed),
        "empty-bearer": ([(b"authorization", b"Bearer")], malformed),
        "not-a-jwt": (bearer("abc.def.ghi"), "Token has no subject"),
        # claims to be the agent, signed by another key
        "other-key": (bearer(make_token(keys.stranger, CLIENT_ID)), invalid),
        "wrong-aud": (bearer(crafted_token(keys.agent, aud="p0.prod")), invalid),
        "no-aud": (bearer(crafted_token(keys.agent, aud=None)), invalid),
        "expired": (bearer(make_token(keys.agent, CLIENT_ID, now=time.time() - 3600)), invalid),
        "unknown-client": (
            bearer(make_token(keys.stranger, "acme:unknown:ssh")),
            "No public key registered for acme:unknown:ssh",
        ),
    }[case]
    async with backend_running(keys) as backend:
        status, body = await handshake_status(backend, headers)
        assert status == 401, body
        assert isinstance(body, dict) and str(body["error"]).startswith(expected), body
        assert backend.handshakes == [401] and backend.by_client == {}


async def test_a_good_token_is_accepted_and_set_client_id_answers_ok(keys: Keys) -> None:
    async with backend_running(keys) as backend, agent_socket(backend, bearer(make_token(keys.agent, CLIENT_ID))) as ws:
        assert await set_client_id(ws) == {"ok": True}
        await backend.wait_registered(CLIENT_ID)
        assert backend.handshakes == [101]
        assert [client for _, client in backend.set_client_id_log] == [CLIENT_ID]
        # Heartbeats are the same call again; each is answered.
        assert await set_client_id(ws, rpc_id=2) == {"ok": True}
        # The backend answers JSON-RPC properly to anything else the agent might send.
        await ws.send_message(jsonrpc.encode_request(3, "shell", {}))
        assert json.loads(await ws.get_message())["error"]["code"] == jsonrpc.METHOD_NOT_FOUND
        await ws.send_message(jsonrpc.encode_request(4, "setClientId", {"clientId": 7}))
        assert json.loads(await ws.get_message())["error"]["code"] == jsonrpc.INVALID_PARAMS


async def test_reject_hooks_refuse_that_many_handshakes_with_that_status(keys: Keys) -> None:
    token = make_token(keys.agent, CLIENT_ID)
    async with backend_running(keys) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = 503, 2
        assert (await handshake_status(backend, bearer(token)))[0] == 503
        assert (await handshake_status(backend, bearer(token)))[0] == 503
        assert (await handshake_status(backend, bearer(token)))[0] == 101
        assert backend.handshakes == [503, 503, 101]


# --- the HTTP side ------------------------------------------------------------------------------------------------


async def test_live(keys: Keys) -> None:
    async with backend_running(keys) as backend:
        answer = await http(backend, "GET /live HTTP/1.1\nHost: test\n")
        assert answer.status == 200 and answer.json() == {"message": "OK"}
        assert (await http(backend, "GET /elsewhere HTTP/1.1\nHost: test\n")).status == 404


async def test_post_becomes_a_call_and_the_response_becomes_the_http_answer(keys: Keys) -> None:
    async with backend_running(keys) as backend, agent_socket(backend, bearer(make_token(keys.agent, CLIENT_ID))) as ws:
        await set_client_id(ws)
        agent = FakeAgent(ws, "agent", status=500)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve)
            data = {"command": "provisionUser", "userName": "alice", "action": "grant", "requestId": "r-1"}
            answer = await post(
                backend,
                f"/client/{CLIENT_ID}/some/path?x=1&y=2&y=3&empty=",
                data,
                extra="X-Custom: Mixed Case\nAuthorization: Bearer caller-token\nProxy-Authorization: Basic cHJveHk=\n",
            )
            nursery.cancel_scope.cancel()
    [call] = agent.calls
    assert call["jsonrpc"] == "2.0" and isinstance(call["id"], int)
    params = call["params"]
    assert isinstance(params, dict)
    assert set(params) == {"path", "headers", "method", "params", "data"}  # no options unless configured
    assert params["path"] == "/some/path"
    assert params["method"] == "POST"
    assert params["params"] == {"x": "1", "y": ["2", "3"], "empty": ""}
    assert params["data"] == data
    headers = params["headers"]
    assert isinstance(headers, dict)
    assert all(name == name.lower() for name in headers)
    assert headers["x-custom"] == "Mixed Case" and headers["authorization"] == "Bearer caller-token"
    assert "proxy-authorization" not in headers
    # The ForwardedResponse's status, headers and data are the HTTP answer.
    assert answer.status == 500
    assert answer.headers["x-agent"] == "agent" and answer.headers["content-type"] == "application/json"
    assert answer.json() == {"success": False, "who": "agent"}


async def test_an_answer_frame_over_1_mib_reaches_the_caller(keys: Keys) -> None:
    """runAudit's output is capped at 1 MiB of text, but in its JSON answer every control character is six bytes
    (\\u0001): a capped audit of a file full of them is a frame of several MiB. P0's tunnel server (Node's `ws`,
    maxPayload 100 MiB by default) takes it; the dev backend dropped every frame over trio-websocket's 1 MiB."""
    output = "\x01" * (512 << 10)  # 512 Ki characters: 3 MiB once JSON-escaped
    async with backend_running(keys) as backend, agent_socket(backend, bearer(make_token(keys.agent, CLIENT_ID))) as ws:
        await set_client_id(ws)
        agent = FakeAgent(ws, "agent", output=output)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve)
            answer = await post(backend, f"/client/{CLIENT_ID}", {"command": "runAudit"})
            nursery.cancel_scope.cancel()
    assert answer.status == 200
    document = answer.json()
    assert isinstance(document, dict) and document["output"] == output


async def test_forward_timeout_becomes_options_timeout_millis(keys: Keys) -> None:
    async with (
        backend_running(keys, forward_timeout_ms=1234) as backend,
        agent_socket(backend, bearer(make_token(keys.agent, CLIENT_ID))) as ws,
    ):
        await set_client_id(ws)
        agent = FakeAgent(ws, "agent")
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve)
            answer = await post(backend, f"/client/{CLIENT_ID}", {"command": "listUsers"})
            nursery.cancel_scope.cancel()
    assert answer.status == 200 and answer.json() == {"success": True, "who": "agent"}
    params = agent.calls[0]["params"]
    assert isinstance(params, dict) and params["options"] == {"timeoutMillis": 1234}
    assert params["path"] == ""


async def test_unknown_client_is_502(keys: Keys) -> None:
    async with backend_running(keys) as backend:
        answer = await post(backend, "/client/acme:nobody:ssh", {"command": "listUsers"})
        assert answer.status == 502
        body = answer.json()
        assert isinstance(body, dict) and "Client not found" in str(body["message"])


async def test_a_client_that_never_answers_is_504(keys: Keys) -> None:
    async with (
        backend_running(keys, call_timeout_ms=300) as backend,
        agent_socket(backend, bearer(make_token(keys.agent, CLIENT_ID))) as ws,
    ):
        await set_client_id(ws)
        agent = FakeAgent(ws, "silent", answer=False)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(agent.serve)
            answer = await post(backend, f"/client/{CLIENT_ID}", {"command": "listUsers"})
            nursery.cancel_scope.cancel()
    assert len(agent.calls) == 1  # it did reach the client
    assert answer.status == 504
    body = answer.json()
    assert isinstance(body, dict) and body["message"] == "Request timeout"


async def test_a_json_rpc_error_from_the_client_is_502(keys: Keys) -> None:
    async with backend_running(keys) as backend, agent_socket(backend, bearer(make_token(keys.agent, CLIENT_ID))) as ws:
        await set_client_id(ws)

        async def refuse() -> None:
            frame = json.loads(await ws.get_message())
            await ws.send_message(jsonrpc.encode_error(frame["id"], jsonrpc.INVALID_PARAMS, "invalid params: nope"))

        async with trio.open_nursery() as nursery:
            nursery.start_soon(refuse)
            answer = await post(backend, f"/client/{CLIENT_ID}", {"command": "listUsers"})
    assert answer.status == 502
    assert answer.json() == {"error": {"code": jsonrpc.INVALID_PARAMS}, "message": "invalid params: nope"}


async def test_bodies_over_100_kb_are_413_and_bad_json_or_length_is_400(keys: Keys) -> None:
    async with backend_running(keys) as backend:
        # Refused from the declared length alone: the body is never read (nor sent here).
        head = f"POST /client/{CLIENT_ID} HTTP/1.1\nHost: test\nContent-Type: application/json\n"
        too_big = await http(backend, head + f"Content-Length: {MAX_BODY_BYTES + 1}\n")
        assert too_big.status == 413
        # Exactly the limit is accepted (and then fails only because nobody is connected).
        padded = {"command": "listUsers", "pad": ""}
        padded["pad"] = "x" * (MAX_BODY_BYTES - len(json.dumps(padded).encode()))
        assert len(json.dumps(padded).encode()) == MAX_BODY_BYTES
        assert (await post(backend, f"/client/{CLIENT_ID}", padded)).status == 502
        bad = await http(backend, head + "Content-Length: 9\n", b"{not json")
        assert bad.status == 400
        for length in ("-5", "ten"):
            bad = await http(backend, head + f"Content-Length: {length}\n", b'{"command": "listUsers"}')
            assert bad.status == 400 and bad.json() == {"error": "bad content-length"}


async def test_last_set_client_id_wins_and_an_old_socket_closing_keeps_the_new_mapping(keys: Keys) -> None:
    async with backend_running(keys) as backend:
        token = make_token(keys.agent, CLIENT_ID)
        async with agent_socket(backend, bearer(token)) as second_ws, trio.open_nursery() as nursery:
            async with agent_socket(backend, bearer(token)) as first_ws:
                await set_client_id(first_ws)
                await set_client_id(second_ws)
                first, second = FakeAgent(first_ws, "first"), FakeAgent(second_ws, "second")
                nursery.start_soon(first.serve)
                nursery.start_soon(second.serve)
                answer = await post(backend, f"/client/{CLIENT_ID}", {"command": "listUsers"})
                assert answer.json() == {"success": True, "who": "second"}
            # The first socket is closed now; its cleanup must not remove the second's mapping.
            await channels_down_to(backend, 1)
            answer = await post(backend, f"/client/{CLIENT_ID}", {"command": "listUsers"})
            assert answer.json() == {"success": True, "who": "second"}
            assert first.calls == [] and len(second.calls) == 2
            nursery.cancel_scope.cancel()
        await channels_down_to(backend, 0)
        assert (await post(backend, f"/client/{CLIENT_ID}", {"command": "listUsers"})).status == 502
