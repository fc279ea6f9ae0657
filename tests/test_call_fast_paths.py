"""The call path's shortcuts (issue 16) keep its behaviour: the worker's one deadline task, free locks taken at once
but never ahead of waiters, the request line's logger following a new configuration, the answer's timestamp and
status phrase caches."""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import structlog
import trio
import trio.testing

from p0_ssh_agent.adapters.logging import configure_logging, is_sensitive_key, log_request_line
from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest, parse_forwarded_request, status_text
from p0_ssh_agent.protocol.forwarded import timestamp as answer_timestamp
from p0_ssh_agent.runtime.job_locks import acquire
from p0_ssh_agent.runtime.jobs import JobKey
from p0_ssh_agent.runtime.worker import DEFAULT_ANSWER_SECONDS, Reply, Worker


def call(user: str, request_id: str) -> ForwardedRequest:
    data = {"command": "provisionUser", "userName": user, "action": "grant", "requestId": request_id}
    return parse_forwarded_request({"path": "", "headers": {}, "method": "POST", "params": {}, "data": data})


class HoldingPipeline:
    """Each request's execution takes the seconds its user name says ("u10" holds 10 s)."""

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        await trio.sleep(float(key.user[1:]))
        return CommandResult(success=True, message=f"done {key.user}")


async def test_the_deadline_task_answers_each_late_execution_at_its_own_deadline(autojump_clock: object) -> None:
    """The first job is answered on time, so the deadline task, asleep until that job's deadline, must wake for the
    next job's (5 s later) and answer it 504 then; each execution still runs to its end and drain waits for it."""
    answers: dict[str, tuple[float, CommandResult]] = {}

    def reply_for(name: str) -> Reply:
        async def reply(result: CommandResult) -> None:
            answers[name] = (trio.current_time(), result)

        return reply

    worker = Worker(HoldingPipeline())
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await worker.submit(call("u10", "r1"), reply_for("quick"))
        await trio.sleep(5)
        await worker.submit(call(f"u{DEFAULT_ANSWER_SECONDS + 60:g}", "r2"), reply_for("slow"))
        await trio.sleep(DEFAULT_ANSWER_SECONDS + 10)
        when, quick = answers["quick"]
        assert when == pytest.approx(10.0) and quick == CommandResult(success=True, message="done u10")
        when, late = answers["slow"]
        assert when == pytest.approx(5 + DEFAULT_ANSWER_SECONDS) and late.http_status == 504
        assert worker.pending == 1  # the slow execution goes on after its answer
        worker.stop_accepting()
        await worker.drain()
        assert trio.current_time() == pytest.approx(5 + DEFAULT_ANSWER_SECONDS + 60)
        assert worker.budget.used == 0 and len(answers) == 2
        nursery.cancel_scope.cancel()


async def test_a_free_lock_is_taken_at_once_but_never_ahead_of_a_waiter() -> None:
    lock, order = trio.Lock(), []

    async def take(name: str) -> None:
        await acquire(lock)
        order.append(name)
        await trio.sleep(0.01)
        lock.release()

    await acquire(lock)  # free: taken without waiting
    async with trio.open_nursery() as nursery:
        nursery.start_soon(take, "first waiter")
        await trio.testing.wait_all_tasks_blocked()
        lock.release()  # ownership passes to the waiter; a newcomer must queue behind it
        nursery.start_soon(take, "newcomer")
    assert order == ["first waiter", "newcomer"]


def test_the_request_line_follows_a_new_configuration(tmp_path: Path) -> None:
    try:
        for name in ("first", "second"):
            path = tmp_path / name
            with path.open("w") as out:
                stat = os.fstat(out.fileno())
                configure_logging(stream=out, env={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
                log_request_line(request_id=name, command="-", user="-", action="-", outcome="ok", duration_ms=1.0)
            assert path.read_text().splitlines() == [
                f"<6>request request_id={name} command=- user=- action=- outcome=ok duration_ms=1.0"
            ]
    finally:
        structlog.reset_defaults()


def test_key_sensitivity_answers_are_the_same_from_the_memo() -> None:
    for key in ("Authorization", "user", "private_key", "accessToken", "command", b"cookie", 7):
        assert is_sensitive_key(key) == is_sensitive_key(key)
    assert is_sensitive_key("X-Api-Key") and not is_sensitive_key("userName")
    for n in range(3000):  # more names than the memo keeps: answers stay right once it was emptied
        assert not is_sensitive_key(f"field{n}")
    assert is_sensitive_key("password") and is_sensitive_key(b"Set-Cookie")


def test_the_answer_timestamp_is_right_across_seconds_and_time_zones() -> None:
    moment = datetime(2026, 12, 4, 21, 59, 59, 999_999, tzinfo=UTC)
    assert answer_timestamp(moment) == "2026-12-04T21:59:59Z"
    assert answer_timestamp(moment + timedelta(microseconds=1)) == "2026-12-04T22:00:00Z"
    assert answer_timestamp(moment) == "2026-12-04T21:59:59Z"  # back again: not the cached later second
    assert answer_timestamp(moment.astimezone(timezone(timedelta(hours=2)))) == "2026-12-04T21:59:59Z"
    assert answer_timestamp(moment.replace(tzinfo=None)) == "2026-12-04T21:59:59Z"  # naive: taken as UTC


def test_status_phrases_are_the_same_from_the_memo() -> None:
    assert [status_text(s) for s in (200, 200, 503, 599, 599)] == ["OK", "OK", "Service Unavailable"] + ["Unknown"] * 2
