"""Session behaviour over a real WebSocket on an in-memory stream pair, with trio's autojump clock.

The server side is written here by hand (trio-websocket's server wrapper) so each test controls exactly what the
agent sees: answers, silence, pings, garbage. Like braekhus, the test server pings every 5 s unless a test turns
that off: without pings a session rightly ends after 30 s of silence, which is what made an earlier version of
this file wait forever for a heartbeat that a finished session would never send.
"""

from __future__ import annotations

import itertools
import json
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import cast

import pytest
import trio
import trio.testing
from trio_websocket import WebSocketConnection, wrap_client_stream, wrap_server_stream

from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest
from p0_ssh_agent.protocol.jsonrpc import MAX_FRAME_BYTES
from p0_ssh_agent.runtime.connection import CALL_TIMEOUT_SECONDS, Activity, Session, SessionSettings
from p0_ssh_agent.runtime.jobs import JobKey
from p0_ssh_agent.runtime.limits import IN_FLIGHT_BUDGET
from p0_ssh_agent.runtime.tunnel import LIBRARY_MAX_MESSAGE_BYTES, ActivityStream
from p0_ssh_agent.runtime.worker import Worker

CLIENT_ID = "acme:host-1:ssh"
SERVER_PING_SECONDS = 5.0
TIMESTAMP = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ")

Frame = dict[str, object]


class ScriptedPipeline:
    """Succeeds with "did <command>", except command "breakMe", which fails; records the commands it ran."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        self.seen.append(key.command)
        if key.command == "breakMe":
            return CommandResult(success=False, message="not for the wire", error="it broke")
        return CommandResult(success=True, message=f"did {key.command}")


@dataclass
class Server:
    ws: WebSocketConnection
    received: list[tuple[float, Frame]] = field(default_factory=list)

    async def next_frame(self) -> Frame:
        message = json.loads(await self.ws.get_message())
        assert isinstance(message, dict)
        self.received.append((trio.current_time(), message))
        return message

    async def answer_set_client_id(self) -> Frame:
        frame = await self.next_frame()
        assert frame["method"] == "setClientId"
        assert frame["params"] == {"clientId": CLIENT_ID}
        await self.send({"jsonrpc": "2.0", "id": frame["id"], "result": {"ok": True}})
        return frame

    async def send(self, value: object) -> None:
        await self.ws.send_message(value if isinstance(value, str) else json.dumps(value))

    async def pinger(self) -> None:
        while True:
            await trio.sleep(SERVER_PING_SECONDS)
            await self.ws.ping()


@dataclass
class Harness:
    server: Server
    session: Session
    ended: trio.Event
    reason: list[str]
    ended_at: list[float]
    pipeline: ScriptedPipeline
    worker: Worker


@asynccontextmanager
async def connected(
    heartbeat: float = 60.0, *, server_pings: bool = True, pipeline: ScriptedPipeline | None = None
) -> AsyncIterator[Harness]:
    client_stream, server_stream = trio.testing.memory_stream_pair()
    pipeline = pipeline or ScriptedPipeline()
    worker = Worker(pipeline)
    activity = Activity()
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        server_box: list[WebSocketConnection] = []

        async def accept() -> None:
            request = await wrap_server_stream(nursery, server_stream)
            server_box.append(await request.accept())

        # Both ends of the handshake at once; the inner nursery ends when the server side has accepted.
        async with trio.open_nursery() as handshake:
            handshake.start_soon(accept)
            client = await wrap_client_stream(
                nursery,
                cast(trio.SocketStream, ActivityStream(client_stream, activity)),  # any trio Stream works
                "test",
                "/",
                max_message_size=LIBRARY_MAX_MESSAGE_BYTES,  # as the tunnel opens it
            )
        server = Server(server_box[0])
        if server_pings:
            nursery.start_soon(server.pinger)
        session = Session(client, SessionSettings(CLIENT_ID, heartbeat), worker, activity)
        ended, reason, ended_at = trio.Event(), [], []

        async def run_session() -> None:
            reason.append(await session.run(lambda: None))
            ended_at.append(trio.current_time())
            ended.set()

        nursery.start_soon(run_session)
        yield Harness(server, session, ended, reason, ended_at, pipeline, worker)
        nursery.cancel_scope.cancel()


def call_frame(rpc_id: object, data: object) -> Frame:
    params = {"path": "", "headers": {"authorization": "Bearer secret"}, "method": "POST", "params": {}, "data": data}
    return {"jsonrpc": "2.0", "id": rpc_id, "method": "call", "params": params}


def result_of(reply: Frame) -> dict[str, object]:
    assert "error" not in reply, reply
    result = reply["result"]
    assert isinstance(result, dict)
    return result


def error_of(reply: Frame) -> dict[str, object]:
    assert "result" not in reply, reply
    error = reply["error"]
    assert isinstance(error, dict)
    return error


# --- setClientId, heartbeat, liveness ---------------------------------------------------------------------------


async def test_set_client_id_is_the_first_frame_and_heartbeats_keep_the_interval(autojump_clock: object) -> None:
    async with connected(heartbeat=45.0) as h:
        first = await h.server.answer_set_client_id()
        assert first == {"jsonrpc": "2.0", "id": 1, "method": "setClientId", "params": {"clientId": CLIENT_ID}}
        for _ in range(3):
            await h.server.answer_set_client_id()
        times = [t for t, _ in h.server.received]
        assert times[0] == pytest.approx(0.0, abs=0.01)
        gaps = [b - a for a, b in itertools.pairwise(times)]
        assert gaps == pytest.approx([45.0, 45.0, 45.0], abs=0.01)
        assert not h.ended.is_set()


async def test_an_unanswered_heartbeat_ends_the_session_after_its_timeout(autojump_clock: object) -> None:
    async with connected(heartbeat=20.0) as h:
        await h.server.answer_set_client_id()
        frame = await h.server.next_frame()  # the heartbeat, left unanswered (the server keeps pinging)
        asked = trio.current_time()
        assert frame["method"] == "setClientId"
        await h.ended.wait()
        assert h.ended_at[0] - asked == pytest.approx(CALL_TIMEOUT_SECONDS, abs=0.01)
        assert "heartbeat failed" in h.reason[0] and "no answer" in h.reason[0]


async def test_a_set_client_id_error_ends_the_session(autojump_clock: object) -> None:
    async with connected() as h:
        frame = await h.server.next_frame()
        await h.server.send({"jsonrpc": "2.0", "id": frame["id"], "error": {"code": -32000, "message": "no"}})
        await h.ended.wait()
        assert "setClientId failed" in h.reason[0] and "-32000" in h.reason[0]


async def test_silence_for_thirty_seconds_ends_the_session(autojump_clock: object) -> None:
    async with connected(heartbeat=600.0, server_pings=False) as h:
        await h.server.answer_set_client_id()
        answered = trio.current_time()
        await h.ended.wait()
        assert h.ended_at[0] - answered == pytest.approx(30.0, abs=0.01)
        assert "nothing received" in h.reason[0]


async def test_pings_count_as_life(autojump_clock: object) -> None:
    async with connected(heartbeat=600.0, server_pings=False) as h:
        await h.server.answer_set_client_id()
        for _ in range(12):  # 60 s of pings every 5 s and nothing else
            await trio.sleep(5)
            await h.server.ws.ping()
        last_ping = trio.current_time()
        assert not h.ended.is_set()
        await h.ended.wait()
        assert h.ended_at[0] - last_ping == pytest.approx(30.0, abs=0.01)


async def test_any_frame_counts_as_life(autojump_clock: object) -> None:
    async with connected(heartbeat=600.0, server_pings=False) as h:
        await h.server.answer_set_client_id()
        for _ in range(5):  # 100 s of nothing but a frame every 20 s, one the agent does not even answer
            await trio.sleep(20)
            await h.server.send({"jsonrpc": "2.0", "id": 4242, "result": {"ok": True}})
        last_frame = trio.current_time()
        assert not h.ended.is_set()
        await h.ended.wait()
        assert h.ended_at[0] - last_frame == pytest.approx(30.0, abs=0.01)


async def test_server_close_ends_the_session_with_its_code(autojump_clock: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        await h.server.ws.aclose(code=1012)
        await h.ended.wait()
        assert "code 1012" in h.reason[0]


# --- calls --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("rpc_id", [7, 0, "7", "call-abc", 2**53])
async def test_a_call_is_answered_with_its_id_and_the_upstream_success_shape(
    autojump_clock: object, rpc_id: object
) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        await h.server.send(call_frame(rpc_id, {"command": "listUsers"}))
        reply = await h.server.next_frame()
        assert reply["jsonrpc"] == "2.0"
        assert reply["id"] == rpc_id and type(reply["id"]) is type(rpc_id)
        result = result_of(reply)
        assert result["status"] == 200 and result["statusText"] == "OK"
        assert result["headers"] == {"content-type": "application/json"}
        data = result["data"]
        assert isinstance(data, dict)
        assert set(data) == {"success", "message", "client_id", "command", "timestamp", "status"}
        assert data["success"] is True and data["message"] == "did listUsers"
        assert data["client_id"] == CLIENT_ID and data["command"] == "listUsers" and data["status"] == "completed"
        assert TIMESTAMP.fullmatch(str(data["timestamp"]))
        assert h.pipeline.seen == ["listUsers"]


async def test_a_failed_call_has_the_upstream_failure_shape(autojump_clock: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        await h.server.send(call_frame(11, {"command": "breakMe"}))
        reply = await h.server.next_frame()
        assert reply["id"] == 11
        result = result_of(reply)
        assert result["status"] == 500 and result["statusText"] == "Internal Server Error"
        assert result["headers"] == {"content-type": "application/json"}
        data = result["data"]
        assert isinstance(data, dict)
        # no message, no output on failure (§5.4)
        assert set(data) == {"success", "error", "client_id", "command", "timestamp", "status"}
        assert data["success"] is False and data["error"] == "it broke" and data["status"] == "failed"
        assert data["command"] == "breakMe" and TIMESTAMP.fullmatch(str(data["timestamp"]))


async def test_call_ids_equal_to_the_agents_own_outstanding_ids_do_not_confuse_it(autojump_clock: object) -> None:
    async with connected(heartbeat=20.0) as h:
        await h.server.answer_set_client_id()
        heartbeat = await h.server.next_frame()  # outstanding now
        assert heartbeat["method"] == "setClientId"
        own_id = heartbeat["id"]
        assert isinstance(own_id, int)
        # The server's requests with the very same id (and its string twin) are calls, not answers.
        await h.server.send(call_frame(own_id, {"command": "listUsers"}))
        await h.server.send(call_frame(str(own_id), {"command": "runAudit"}))
        replies = [await h.server.next_frame() for _ in range(2)]
        by_id = {json.dumps(r["id"]): r for r in replies}
        assert set(by_id) == {json.dumps(own_id), json.dumps(str(own_id))}
        assert cast(dict[str, object], result_of(by_id[json.dumps(own_id)])["data"])["command"] == "listUsers"
        assert cast(dict[str, object], result_of(by_id[json.dumps(str(own_id))])["data"])["command"] == "runAudit"
        # Now the real answer to the heartbeat: the session carries on past the call timeout.
        await h.server.send({"jsonrpc": "2.0", "id": own_id, "result": {"ok": True}})
        await trio.sleep(CALL_TIMEOUT_SECONDS + 1)
        assert not h.ended.is_set()
        assert sorted(h.pipeline.seen) == ["listUsers", "runAudit"]


async def test_responses_with_unknown_ids_are_ignored(autojump_clock: object) -> None:
    async with connected(heartbeat=20.0) as h:
        await h.server.answer_set_client_id()
        heartbeat = await h.server.next_frame()
        asked = trio.current_time()
        own_id = heartbeat["id"]
        # None of these answers the outstanding heartbeat: a string twin of its id, ids never used, an id already
        # answered, null. They draw no reply and do not end the session ...
        for wrong_id in (str(own_id), 999, 1, None):
            await h.server.send({"jsonrpc": "2.0", "id": wrong_id, "result": {"ok": True}})
        await h.server.send({"jsonrpc": "2.0", "id": 998, "error": {"code": -32000, "message": "whatever"}})
        await h.server.send(call_frame(5, {"command": "listUsers"}))
        reply = await h.server.next_frame()  # ... the next frame the agent sends is the answer to the call
        assert reply["id"] == 5
        # ... and the heartbeat is still unanswered, so this very heartbeat times out (not a later one).
        await h.ended.wait()
        assert "heartbeat failed" in h.reason[0] and "no answer" in h.reason[0]
        assert h.ended_at[0] - asked == pytest.approx(CALL_TIMEOUT_SECONDS, abs=0.01)


async def test_unknown_method_gets_32601_with_the_same_id(autojump_clock: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        for rpc_id in ("x-7", 8):
            await h.server.send({"jsonrpc": "2.0", "id": rpc_id, "method": "shell", "params": {}})
            reply = await h.server.next_frame()
            assert reply["id"] == rpc_id and error_of(reply)["code"] == -32601
        assert h.pipeline.seen == []


@pytest.mark.parametrize(
    "params",
    [{"headers": "nope"}, {"options": "soon"}, [1, 2], {"options": {"timeoutMillis": -5}}, {"path": 7}],
    ids=["headers-string", "options-string", "params-list", "negative-timeout", "path-int"],
)
async def test_invalid_call_params_get_32602(autojump_clock: object, params: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        await h.server.send({"jsonrpc": "2.0", "id": 3, "method": "call", "params": params})
        reply = await h.server.next_frame()
        assert reply["id"] == 3 and error_of(reply)["code"] == -32602
        assert h.pipeline.seen == []


async def test_garbage_never_closes_the_connection(autojump_clock: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        for garbage in ("{not json", "", "\x00", '{"jsonrpc":"2.0","id":1,"id":2,"method":"call"}', "[" * 5000):
            await h.server.send(garbage)
            error = await h.server.next_frame()
            assert error["id"] is None and error_of(error)["code"] == -32700, garbage[:40]
        for not_a_request in ("[]", "null", '{"jsonrpc":"1.0","id":4,"method":"call"}'):
            await h.server.send(not_a_request)
            error = await h.server.next_frame()
            assert error_of(error)["code"] == -32600, not_a_request
        await h.server.send(call_frame(9, {"command": "listUsers"}))
        reply = await h.server.next_frame()
        assert reply["id"] == 9 and result_of(reply)["status"] == 200
        assert not h.ended.is_set()


async def test_binary_frames_are_ignored(autojump_clock: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        await h.server.ws.send_message(b"\x00binary")
        await h.server.ws.send_message(json.dumps(call_frame(1, {"command": "evil"})).encode())
        await h.server.send(call_frame(2, {"command": "listUsers"}))
        reply = await h.server.next_frame()  # the first frame back answers the text call: nothing for the binaries
        assert reply["id"] == 2
        assert h.pipeline.seen == ["listUsers"]


async def test_frames_over_the_byte_limit_are_refused_and_the_session_goes_on(autojump_clock: object) -> None:
    async with connected() as h:
        await h.server.answer_set_client_id()
        # Fewer characters than the limit (what the WebSocket library counts), more UTF-8 bytes (what the parser
        # counts): refused politely.
        pad = "\u00e9" * (MAX_FRAME_BYTES // 2 + 16)
        frame = json.dumps(call_frame(6, {"command": "listUsers", "pad": pad}), ensure_ascii=False)
        assert len(frame) <= MAX_FRAME_BYTES < len(frame.encode())
        await h.server.send(frame)
        refusal = await h.server.next_frame()
        assert refusal["id"] is None and error_of(refusal)["code"] == -32600
        assert "larger" in str(error_of(refusal)["message"])
        await h.server.send(call_frame(7, {"command": "listUsers"}))
        reply = await h.server.next_frame()
        assert reply["id"] == 7
        assert h.pipeline.seen == ["listUsers"]  # the oversized call never ran
        assert not h.ended.is_set()


async def test_a_frame_over_the_library_limit_closes_the_connection_with_1009(autojump_clock: object) -> None:
    """The library would have to keep such a frame whole in memory to hand it over: it closes instead, the session
    ends saying why, and the tunnel reconnects (test_tunnel.py)."""
    async with connected() as h:
        await h.server.answer_set_client_id()
        frame = json.dumps(call_frame(6, {"command": "listUsers", "pad": "x" * MAX_FRAME_BYTES}))
        assert len(frame) > LIBRARY_MAX_MESSAGE_BYTES == MAX_FRAME_BYTES
        await h.server.send(frame)
        await h.ended.wait()
        assert h.reason == [f"the server sent a frame over {MAX_FRAME_BYTES} characters (code 1009)"]
        assert h.pipeline.seen == []


class HeldPipeline(ScriptedPipeline):
    """Every execution waits until the test opens `gate`, as behind a slow useradd."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = trio.Event()

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        self.seen.append(key.command)
        await self.gate.wait()
        return CommandResult(success=True, message=f"did {key.command}")


async def test_a_flood_of_large_calls_never_takes_more_than_the_in_flight_budget(autojump_clock: object) -> None:
    """40 calls of about 1 MiB each, one wide character making Python hold each at 4 MiB, while nothing finishes:
    the agent takes in what fits in its budget, answers the rest 503 busy at once, and answers the calls it took
    once they finish. The budget's high-water mark never passes its limit."""
    pipeline = HeldPipeline()
    async with connected(pipeline=pipeline) as h:
        await h.server.answer_set_client_id()
        pad = "\U0001f600" + "p" * (MAX_FRAME_BYTES - 1024)
        calls = 40
        for n in range(calls):
            await h.server.send(
                json.dumps(
                    call_frame(n, {"command": "provisionUser", "userName": f"u{n}", "pad": pad}), ensure_ascii=False
                )
            )
        busy: list[object] = []
        while len(busy) + len(pipeline.seen) < calls:
            reply = await h.server.next_frame()
            assert result_of(reply)["status"] == 503, reply
            busy.append(reply["id"])
        budget = h.worker.budget
        taken = len(pipeline.seen)
        assert 0 < taken < calls
        assert budget.peak <= budget.limit == IN_FLIGHT_BUDGET
        # The budget, not the count of calls, is what stopped them: one more 4 MiB call would not have fit.
        assert budget.peak + 4 * MAX_FRAME_BYTES > budget.limit
        pipeline.gate.set()
        answered = {(await h.server.next_frame())["id"] for _ in range(taken)}
        assert answered.isdisjoint(busy) and len(answered) == taken
        await trio.testing.wait_all_tasks_blocked()
        assert budget.used == 0  # every share came back
        assert not h.ended.is_set()
