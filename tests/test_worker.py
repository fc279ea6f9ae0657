"""The provisioning worker with hand-written pipelines and trio's autojump clock.

Pipelines here block on per-request gates the test opens, so every ordering claim (serialised per user, parallel
across users, one execution for duplicate deliveries, answers before the backend's deadline, drain on shutdown)
is checked by what had started and finished at each point, not by timing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import pytest
import trio
import trio.testing

from p0_ssh_agent.host.inventory import MAX_OUTPUT_BYTES
from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest, parse_forwarded_request
from p0_ssh_agent.runtime.jobs import JobKey
from p0_ssh_agent.runtime.limits import answer_chars_allowed
from p0_ssh_agent.runtime.worker import DEFAULT_ANSWER_SECONDS, TRUNCATED, Pipeline, Reply, Worker, fit_answer


def forwarded(
    user: str,
    request_id: str,
    *,
    command: str = "provisionUser",
    action: str = "grant",
    timeout_ms: int | None = None,
) -> ForwardedRequest:
    params: dict[str, object] = {
        "path": "",
        "headers": {},
        "method": "POST",
        "params": {},
        "data": {"command": command, "userName": user, "action": action, "requestId": request_id},
    }
    if timeout_ms is not None:
        params["options"] = {"timeoutMillis": timeout_ms}
    return parse_forwarded_request(params)


@dataclass
class GatedPipeline:
    """Each execution records "start <id>", waits until the test opens its gate (or `hold` seconds pass when
    set), records "end <id>" and succeeds with "done <id> #<n>" (n counts executions of that id)."""

    hold: float | None = None
    events: list[str] = field(default_factory=list)
    gates: dict[str, trio.Event] = field(default_factory=dict)
    runs: dict[str, int] = field(default_factory=dict)

    def gate(self, name: str) -> trio.Event:
        return self.gates.setdefault(name, trio.Event())

    def started(self) -> list[str]:
        return [e.split(" ", 1)[1] for e in self.events if e.startswith("start ")]

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        name = f"{key.request_id}/{key.action}"
        self.runs[name] = self.runs.get(name, 0) + 1
        self.events.append(f"start {name}")
        if self.hold is not None:
            await trio.sleep(self.hold)
        else:
            await self.gate(name).wait()
        self.events.append(f"end {name}")
        return CommandResult(success=True, message=f"done {name} #{self.runs[name]}")


class CrashingPipeline:
    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        raise RuntimeError("boom")


@dataclass
class Replies:
    """Collects answers as (virtual time, result) per reply slot."""

    got: dict[str, list[tuple[float, CommandResult]]] = field(default_factory=dict)

    def slot(self, name: str) -> Reply:
        async def reply(result: CommandResult) -> None:
            self.got.setdefault(name, []).append((trio.current_time(), result))

        return reply

    def result(self, name: str) -> CommandResult:
        [(_, result)] = self.got[name]
        return result

    def at(self, name: str) -> float:
        [(when, _)] = self.got[name]
        return when


@asynccontextmanager
async def running(pipeline: Pipeline, *, max_pending: int = 1024) -> AsyncIterator[Worker]:
    worker = Worker(pipeline, max_pending=max_pending)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        yield worker
        nursery.cancel_scope.cancel()


async def submit(worker: Worker, replies: Replies, name: str, request: ForwardedRequest) -> None:
    await worker.submit(request, replies.slot(name))


async def test_same_user_is_serialised_in_arrival_order(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(), Replies()
    async with running(pipeline) as worker:
        # One at a time, as the reader hands them over (it reaches a checkpoint between frames).
        for name, request_id in (("a", "r1"), ("b", "r2"), ("c", "r3")):
            await submit(worker, replies, name, forwarded("alice", request_id))
            await trio.testing.wait_all_tasks_blocked()
        assert pipeline.started() == ["r1/grant"]  # r2 and r3 wait for alice's lock
        pipeline.gate("r3/grant").set()  # opening later gates first changes nothing
        pipeline.gate("r2/grant").set()
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.started() == ["r1/grant"] and set(replies.got) == set()
        pipeline.gate("r1/grant").set()
        await worker.drain()
        assert pipeline.events == [
            "start r1/grant",
            "end r1/grant",
            "start r2/grant",
            "end r2/grant",
            "start r3/grant",
            "end r3/grant",
        ]
        assert [replies.result(n).message for n in "abc"] == [
            "done r1/grant #1",
            "done r2/grant #1",
            "done r3/grant #1",
        ]


async def test_different_users_run_in_parallel(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "a", forwarded("alice", "r1"))
        await submit(worker, replies, "b", forwarded("bob", "r2"))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(pipeline.started()) == ["r1/grant", "r2/grant"]
        pipeline.gate("r2/grant").set()  # bob's finishes first although alice's started first
        await trio.testing.wait_all_tasks_blocked()
        assert replies.result("b").success and "a" not in replies.got
        pipeline.gate("r1/grant").set()
        await worker.drain()
        assert replies.result("a").success


async def test_requests_without_a_user_do_not_queue_behind_each_other(autojump_clock: object) -> None:
    # listUsers and runAudit carry no userName: they used to share one lock named "-" and run one at a time.
    pipeline, replies = GatedPipeline(), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "a", forwarded("", "r1", command="listUsers"))
        await submit(worker, replies, "b", forwarded("", "r2", command="runAudit"))
        await trio.testing.wait_all_tasks_blocked()
        assert sorted(pipeline.started()) == ["r1/grant", "r2/grant"]
        pipeline.gate("r2/grant").set()
        await trio.testing.wait_all_tasks_blocked()
        assert replies.result("b").success and "a" not in replies.got
        pipeline.gate("r1/grant").set()
        await worker.drain()


async def test_a_duplicate_delivery_gets_the_first_result_and_runs_once(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "first", forwarded("alice", "r1"))
        await trio.testing.wait_all_tasks_blocked()
        await submit(worker, replies, "again", forwarded("alice", "r1"))
        await submit(worker, replies, "again2", forwarded("alice", "r1"))
        # Same request id but another action (or command) is a different request: it runs after, on its own.
        await submit(worker, replies, "revoke", forwarded("alice", "r1", action="revoke"))
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.started() == ["r1/grant"]
        pipeline.gate("r1/grant").set()
        pipeline.gate("r1/revoke").set()
        await worker.drain()
        assert pipeline.runs == {"r1/grant": 1, "r1/revoke": 1}
        first = replies.result("first")
        assert first.message == "done r1/grant #1"
        assert replies.result("again") == first and replies.result("again2") == first
        assert replies.result("revoke").message == "done r1/revoke #1"


async def test_a_redelivery_after_the_first_finished_runs_again(autojump_clock: object) -> None:
    """De-duplication covers deliveries while the first is in flight; later ones are new work for the pipeline
    (the handlers themselves are idempotent)."""
    pipeline, replies = GatedPipeline(), Replies()
    pipeline.gate("r1/grant").set()
    async with running(pipeline) as worker:
        await submit(worker, replies, "first", forwarded("alice", "r1"))
        await worker.drain()
        await submit(worker, replies, "later", forwarded("alice", "r1"))
        await worker.drain()
        assert pipeline.runs == {"r1/grant": 2}
        assert replies.result("later").message == "done r1/grant #2"


async def test_a_full_queue_answers_busy_at_once(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(), Replies()
    async with running(pipeline, max_pending=4) as worker:
        for n in range(10):
            await submit(worker, replies, f"j{n}", forwarded(f"user{n}", f"r{n}"))
            await trio.testing.wait_all_tasks_blocked()
        busy = [name for name, answers in replies.got.items() if answers[0][1].http_status == 503]
        accepted = pipeline.started()
        assert busy and accepted, (busy, accepted)
        assert len(busy) + len(accepted) == 10
        for name in busy:
            assert replies.at(name) == 0.0  # answered at once, without waiting for anything
            result = replies.result(name)
            assert not result.success and "busy" in result.error
        # Capacity comes back once the running jobs finish.
        for gate in list(pipeline.gates.values()):
            gate.set()
        await worker.drain()
        pipeline.gate("r-late/grant").set()
        await submit(worker, replies, "late", forwarded("late", "r-late"))
        await worker.drain()
        assert replies.result("late").success


@pytest.mark.parametrize("timeout_ms", [5000, 1000, 1])
async def test_timeout_millis_is_ignored_and_a_retry_merges_with_the_running_change(
    autojump_clock: object, timeout_ms: int
) -> None:
    """Like P0's Go agent, no early 504 at the hint: the tunnel server retries its own timeouts (not an answer),
    and the retry it sends gets the one execution's result, as does the first delivery."""
    pipeline, replies = GatedPipeline(hold=60.0), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "slow", forwarded("alice", "r1", timeout_ms=timeout_ms))
        await trio.sleep(timeout_ms / 1000 + 5)
        assert replies.got == {}  # nothing answered at (or after) the hint
        assert pipeline.events == ["start r1/grant"]
        await submit(worker, replies, "retry", forwarded("alice", "r1", timeout_ms=timeout_ms))
        await worker.drain()
        assert pipeline.events == ["start r1/grant", "end r1/grant"]
        for name in ("slow", "retry"):
            assert replies.result(name).message == "done r1/grant #1"
            assert replies.at(name) == pytest.approx(60.0)


async def test_without_timeout_millis_the_answer_waits_for_the_change(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(hold=DEFAULT_ANSWER_SECONDS - 10), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "slow", forwarded("alice", "r1"))
        await worker.drain()
        assert replies.result("slow").success
        assert replies.at("slow") == pytest.approx(DEFAULT_ANSWER_SECONDS - 10)


async def test_drain_on_shutdown_lets_in_flight_jobs_finish(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(hold=10.0), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "inflight", forwarded("alice", "r1"))
        await trio.testing.wait_all_tasks_blocked()
        worker.stop_accepting()
        await submit(worker, replies, "refused", forwarded("bob", "r2"))
        await trio.testing.wait_all_tasks_blocked()
        refused = replies.result("refused")
        assert replies.at("refused") == 0.0 and refused.http_status == 503 and "shutting down" in refused.error
        assert pipeline.started() == ["r1/grant"]
        await worker.drain()
        assert trio.current_time() == pytest.approx(10.0)
        assert pipeline.events == ["start r1/grant", "end r1/grant"]
        assert replies.result("inflight").success and replies.at("inflight") == pytest.approx(10.0)


async def test_drain_waits_for_a_change_whose_answer_already_timed_out(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(hold=DEFAULT_ANSWER_SECONDS + 30), Replies()
    async with running(pipeline) as worker:
        await submit(worker, replies, "slow", forwarded("alice", "r1"))
        await trio.sleep(DEFAULT_ANSWER_SECONDS + 5)
        assert replies.result("slow").http_status == 504
        worker.stop_accepting()
        await worker.drain()
        assert trio.current_time() == pytest.approx(DEFAULT_ANSWER_SECONDS + 30)
        assert pipeline.events == ["start r1/grant", "end r1/grant"]


async def test_a_crashing_pipeline_answers_failure_and_the_worker_lives_on(autojump_clock: object) -> None:
    replies = Replies()
    async with running(CrashingPipeline()) as worker:
        for n in range(3):
            await submit(worker, replies, f"j{n}", forwarded("alice", f"r{n}"))
        await worker.drain()
        for n in range(3):
            result = replies.result(f"j{n}")
            assert not result.success and result.error == "internal error: RuntimeError"


# --- the in-flight budget (issue 11 item 7) -------------------------------------------------------------------------


async def test_a_timed_out_change_keeps_its_share_of_the_budget_until_it_ends(autojump_clock: object) -> None:
    """The execution still holds the request after its answer went out: the budget must still count it."""
    pipeline, replies = GatedPipeline(hold=DEFAULT_ANSWER_SECONDS + 30), Replies()
    async with running(pipeline) as worker:
        await worker.submit(forwarded("alice", "r1"), replies.slot("slow"), held_bytes=1000)
        taken = worker.budget.used
        assert taken >= 1000
        await trio.sleep(DEFAULT_ANSWER_SECONDS + 5)
        assert replies.result("slow").http_status == 504
        assert worker.budget.used == taken
        await worker.drain()
        assert worker.budget.used == 0


async def test_a_call_that_does_not_fit_the_budget_is_answered_busy(autojump_clock: object) -> None:
    pipeline, replies = GatedPipeline(), Replies()
    worker = Worker(pipeline, budget_bytes=1_000_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await worker.submit(forwarded("alice", "r1"), replies.slot("fits"), held_bytes=500_000)
        await worker.submit(forwarded("bob", "r2"), replies.slot("too big"), held_bytes=500_000)
        await trio.testing.wait_all_tasks_blocked()
        assert pipeline.started() == ["r1/grant"]
        assert replies.result("too big").http_status == 503 and replies.at("too big") == 0.0
        assert worker.budget.peak <= worker.budget.limit
        pipeline.gate("r1/grant").set()
        await worker.drain()
        assert replies.result("fits").success and worker.budget.used == 0
        nursery.cancel_scope.cancel()


@dataclass
class LoudPipeline:
    """Answers with `size` characters of output (or of message), whatever the command."""

    size: int
    in_output: bool = True

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        text = "y" * self.size
        if self.in_output:
            return CommandResult(success=True, message="ok", output=text)
        return CommandResult(success=False, error=text)


@pytest.mark.parametrize("in_output", [True, False])
async def test_an_answer_is_cut_to_its_commands_allowance(autojump_clock: object, in_output: bool) -> None:
    replies = Replies()
    async with running(LoudPipeline(MAX_OUTPUT_BYTES * 2, in_output)) as worker:
        await submit(worker, replies, "grant", forwarded("alice", "r1"))
        await submit(worker, replies, "audit", forwarded("", "r2", command="runAudit"))
        await worker.drain()
    for name, command in (("grant", "provisionUser"), ("audit", "runAudit")):
        result = replies.result(name)
        size = len(result.message) + len(result.error) + len(result.output or "")
        assert size <= answer_chars_allowed(command)
        assert (result.output or result.error).endswith(TRUNCATED)
    assert answer_chars_allowed("provisionUser") < answer_chars_allowed("runAudit")


def test_fit_answer_keeps_answers_that_fit() -> None:
    result = CommandResult(success=True, message="m" * 10, output="o" * 10)
    assert fit_answer(result, 20) is result
    cut = fit_answer(result, 19)
    assert len(cut.message) + len(cut.output or "") <= 19


def with_key(request: ForwardedRequest, public_key: str, *, timeout_ms: int | None = None) -> ForwardedRequest:
    data = dict(request.data) if isinstance(request.data, dict) else {}
    params: dict[str, object] = {"path": "", "headers": {}, "method": "POST", "params": {}, "data": data}
    data["publicKey"] = public_key
    if timeout_ms is not None:
        params["options"] = {"timeoutMillis": timeout_ms}
    return parse_forwarded_request(params)


async def test_a_duplicate_delivery_with_another_payload_is_refused_409_at_once(autojump_clock: object) -> None:
    """Issue 14 item 4: the same request id with another key is not the same request: it must never get the
    first's success (its key was never written). A retry that repeats the body, with another timeout hint around
    it, still merges."""
    pipeline, replies = GatedPipeline(), Replies()
    first = with_key(forwarded("alice", "r1", command="provisionAuthorizedKeys"), "ssh-ed25519 AAAA-first")
    other = with_key(forwarded("alice", "r1", command="provisionAuthorizedKeys"), "ssh-ed25519 AAAA-other")
    retry = with_key(
        forwarded("alice", "r1", command="provisionAuthorizedKeys"), "ssh-ed25519 AAAA-first", timeout_ms=9
    )
    async with running(pipeline) as worker:
        await submit(worker, replies, "first", first)
        await trio.testing.wait_all_tasks_blocked()
        await submit(worker, replies, "other", other)
        await submit(worker, replies, "retry", retry)
        await trio.testing.wait_all_tasks_blocked()
        refused = replies.result("other")  # answered while the first still runs
        assert (refused.success, refused.http_status) == (False, 409)
        assert "already in progress with another payload (differs in: publickey)" in refused.error
        assert "AAAA" not in refused.error  # no key material echoed
        pipeline.gate("r1/grant").set()
        await worker.drain()
        assert pipeline.runs == {"r1/grant": 1}
        assert replies.result("first").message == "done r1/grant #1"
        assert replies.result("retry") == replies.result("first")


async def test_a_later_delivery_with_another_payload_runs_on_its_own(autojump_clock: object) -> None:
    """No result is kept after the first finished, so there is nothing to merge with or to hand out falsely: a
    later delivery under the same id is new work, answered by what the pipeline did with its own body."""
    pipeline, replies = GatedPipeline(), Replies()
    pipeline.gate("r1/grant").set()
    async with running(pipeline) as worker:
        await submit(worker, replies, "first", with_key(forwarded("alice", "r1"), "ssh-ed25519 AAAA-first"))
        await worker.drain()
        await submit(worker, replies, "later", with_key(forwarded("alice", "r1"), "ssh-ed25519 AAAA-other"))
        await worker.drain()
        assert pipeline.runs == {"r1/grant": 2}
        assert replies.result("later").message == "done r1/grant #2"
