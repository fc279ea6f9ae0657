"""The agent-access lane in the runtime's worker (issue 17 item 6), with hand-written pipelines and trio's autojump
clock: ssh_* calls take neither the user's lock nor the shared limiter, have per-account and global limits with a
bounded queue, a byte budget of their own, and are answered 403 while agentAccess is off.

Every ordering claim is checked by what had started and finished at each point (gates the test opens), not by
timing, as tests/test_worker.py does.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime

import trio
import trio.testing

from p0_ssh_agent.agent_access.access_model import MAX_STREAM_BYTES
from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest, forwarded_response, parse_forwarded_request
from p0_ssh_agent.protocol.jsonrpc import STRING_BYTES_PER_CHAR
from p0_ssh_agent.runtime import limits
from p0_ssh_agent.runtime.access_lane import ACCESS_OFF_ERROR, AccessLane
from p0_ssh_agent.runtime.worker import Pipeline, Worker
from test_worker import GatedPipeline, Replies


def call(command: str, user: str, request_id: str, **extra: object) -> ForwardedRequest:
    data: dict[str, object] = {"command": command, "requestId": request_id, **extra}
    if not command.startswith("ssh_"):
        data.setdefault("action", "grant")
    data["username" if command.startswith("ssh_") else "userName"] = user
    return parse_forwarded_request({"path": "", "headers": {}, "method": "POST", "params": {}, "data": data})


@asynccontextmanager
async def running(
    pipeline: Pipeline,
    access: Pipeline | None,
    *,
    lane: AccessLane | None = None,
    access_budget: int | None = None,
    max_parallel: int = 64,
) -> AsyncIterator[Worker]:
    worker = Worker(
        pipeline,
        max_parallel=max_parallel,
        access_pipeline=access,
        access_lane=lane,
        access_budget_bytes=access_budget or limits.ACCESS_IN_FLIGHT_BUDGET,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        nursery.cancel_scope.cancel()


async def test_a_revoke_for_the_same_user_completes_while_an_ssh_exec_runs(autojump_clock: object) -> None:
    p0, access, replies = GatedPipeline(), GatedPipeline(), Replies()
    async with running(p0, access) as worker:
        await worker.submit(call("ssh_exec", "deploy", "x1", argv=["/bin/sleep", "60"]), replies.slot("exec"))
        await trio.testing.wait_all_tasks_blocked()
        assert access.started() == ["x1/-"]  # the exec is running, holding whatever its lane holds
        await worker.submit(call("provisionAuthorizedKeys", "deploy", "k1", action="revoke"), replies.slot("revoke"))
        await trio.testing.wait_all_tasks_blocked()
        assert p0.started() == ["k1/revoke"]  # not queued behind the exec: no shared user lock
        p0.gate("k1/revoke").set()
        await trio.testing.wait_all_tasks_blocked()
        assert replies.result("revoke").success and "exec" not in replies.got  # revoked, the exec still runs
        access.gate("x1/-").set()
        await trio.testing.wait_all_tasks_blocked()
        assert replies.result("exec").success


async def test_ssh_calls_never_take_the_shared_limiter_a_grant_runs_with_every_lane_token_taken(
    autojump_clock: object,
) -> None:
    p0, access, replies = GatedPipeline(), GatedPipeline(), Replies()
    lane = AccessLane(parallel=2, per_account=2, queue_per_account=8)
    async with running(p0, access, lane=lane, max_parallel=1) as worker:  # P0's limiter: one token
        for index in range(6):
            await worker.submit(call("ssh_file_read", f"user{index}", f"r{index}"), replies.slot(f"r{index}"))
        await trio.testing.wait_all_tasks_blocked()
        assert len(access.started()) == 2  # the lane's two shared tokens, every account together
        await worker.submit(call("provisionUser", "user0", "g1"), replies.slot("grant"))
        await trio.testing.wait_all_tasks_blocked()
        assert p0.started() == ["g1/grant"]
        p0.gate("g1/grant").set()
        for index in range(6):
            access.gate(f"r{index}/-").set()
        await trio.testing.wait_all_tasks_blocked()
        assert replies.result("grant").success
        assert all(replies.result(f"r{index}").success for index in range(6))


async def test_per_account_limit_and_bounded_queue_then_busy_while_others_run(autojump_clock: object) -> None:
    access, replies = GatedPipeline(), Replies()
    lane = AccessLane(parallel=8, per_account=2, queue_per_account=3)
    async with running(GatedPipeline(), access, lane=lane) as worker:
        for index in range(6):  # 2 run, 3 wait, the sixth is one too many; one at a time, as the reader hands over
            await worker.submit(call("ssh_dir_list", "deploy", f"d{index}"), replies.slot(f"d{index}"))
            await trio.testing.wait_all_tasks_blocked()
        assert access.started() == ["d0/-", "d1/-"]
        assert lane.waiting_and_running("deploy") == 5
        busy = replies.result("d5")
        assert busy.http_status == 503 and not busy.success and busy.result == {"kind": "busy"}
        assert "account deploy" in busy.error
        await worker.submit(call("ssh_dir_list", "logs", "l0"), replies.slot("l0"))  # another account runs at once
        await trio.testing.wait_all_tasks_blocked()
        assert "l0/-" in access.started()
        for name in ("d0/-", "d1/-", "l0/-"):
            access.gate(name).set()
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(access.started()[3:]) == ["d2/-", "d3/-"]  # the first two waiting, two at a time
        for name in ("d2/-", "d3/-"):
            access.gate(name).set()
        await trio.testing.wait_all_tasks_blocked()
        assert access.started()[5:] == ["d4/-"]
        access.gate("d4/-").set()
        await trio.testing.wait_all_tasks_blocked()
        assert lane.waiting_and_running("deploy") == 0 and lane._accounts == {}  # no entry outlives its users


async def test_with_agent_access_off_ssh_calls_are_answered_403_and_run_nothing(autojump_clock: object) -> None:
    p0, replies = GatedPipeline(), Replies()
    async with running(p0, None) as worker:
        await worker.submit(call("ssh_file_read", "deploy", "r1"), replies.slot("read"))
        await worker.submit(call("ssh_no_such_thing", "deploy", "r2"), replies.slot("unknown"))
        await trio.testing.wait_all_tasks_blocked()
    for name in ("read", "unknown"):
        refused = replies.result(name)
        assert (refused.success, refused.http_status, refused.error) == (False, 403, ACCESS_OFF_ERROR)
        assert refused.result == {"kind": "disabled"}
    assert p0.started() == []  # never reached P0's pipeline either


async def test_turning_the_switch_off_answers_waiting_calls_403(autojump_clock: object) -> None:
    access, replies = GatedPipeline(), Replies()
    async with running(GatedPipeline(), access, lane=AccessLane(per_account=1, queue_per_account=2)) as worker:
        await worker.submit(call("ssh_exec", "deploy", "x1"), replies.slot("running"))
        await trio.testing.wait_all_tasks_blocked()
        await worker.submit(call("ssh_exec", "deploy", "x2"), replies.slot("waiting"))
        await trio.testing.wait_all_tasks_blocked()
        worker.set_access_pipeline(None)  # SIGHUP with agentAccess: false
        access.gate("x1/-").set()
        await trio.testing.wait_all_tasks_blocked()
    assert replies.result("running").success  # what had started finishes on the pipeline it started with
    assert replies.result("waiting").error == ACCESS_OFF_ERROR
    assert access.started() == ["x1/-"]


async def test_agent_access_bytes_come_from_their_own_budget(autojump_clock: object) -> None:
    p0, access, replies = GatedPipeline(), GatedPipeline(), Replies()
    one = limits.answer_bytes_allowed("ssh_exec")
    async with running(p0, access, access_budget=one) as worker:
        await worker.submit(call("ssh_exec", "deploy", "x1"), replies.slot("x1"))
        await worker.submit(call("ssh_exec", "other", "x2"), replies.slot("x2"))  # the budget holds one
        await worker.submit(call("provisionUser", "alice", "g1"), replies.slot("grant"))
        await trio.testing.wait_all_tasks_blocked()
        assert worker.access_budget.used == one and worker.budget.used > 0
        assert replies.result("x2").http_status == 503
        assert p0.started() == ["g1/grant"]  # P0's budget is untouched by agent access
        p0.gate("g1/grant").set()
        access.gate("x1/-").set()
        await trio.testing.wait_all_tasks_blocked()
    assert worker.access_budget.used == 0 and worker.budget.used == 0


def test_the_answer_allowance_covers_two_base64_streams_of_the_exec_cap() -> None:
    assert limits.ACCESS_STREAM_BYTES == MAX_STREAM_BYTES
    stream = len(__import__("base64").b64encode(b"\xff" * MAX_STREAM_BYTES))
    assert limits.answer_chars_allowed("ssh_exec") >= 2 * stream
    assert limits.answer_bytes_allowed("ssh_exec") >= 2 * 2 * stream  # held twice, one byte per character
    assert limits.answer_bytes_allowed("provisionUser") == STRING_BYTES_PER_CHAR * limits.SMALL_ANSWER_CHARS
    assert limits.is_access_command("ssh_file_read") and not limits.is_access_command("provisionSession")


def test_a_structured_result_is_sent_as_data_result_and_others_are_unchanged() -> None:
    now = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    plain = CommandResult(success=True, message="ok")
    frame = forwarded_response(plain, client_id="o:h:ssh", command="provisionUser", now=now)
    assert "result" not in frame["data"]  # type: ignore[operator]
    read = CommandResult(success=True, message="read 3 bytes", result={"data": "YWJj", "eof": True})
    frame = forwarded_response(read, client_id="o:h:ssh", command="ssh_file_read", now=now)
    data = frame["data"]
    assert isinstance(data, dict)
    assert data["result"] == {"data": "YWJj", "eof": True} and list(data)[-1] == "result"
    refused = CommandResult(success=False, error="denied", http_status=403, result={"kind": "denied_by_policy"})
    data = forwarded_response(refused, client_id="o:h:ssh", command="ssh_exec", now=now)["data"]
    assert isinstance(data, dict)
    assert data["result"] == {"kind": "denied_by_policy"} and data["error"] == "denied"
