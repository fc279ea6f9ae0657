"""The provisioning worker: runs `call` requests off the WebSocket reader.

Guarantees (issue 3, upstream-protocol.md §12 item 17):
- `submit` never waits for a job: the reader hands it over and goes back to reading. A job that cannot be taken
  (too many in flight, or its bytes do not fit in the in-flight budget, runtime/limits.py) is answered "busy"
  inside `submit`: the reader waits only for that answer to be written, so a backend that sends faster than it
  reads our answers is slowed by its own socket instead of growing a queue of answers.
- What the jobs in flight hold is bounded: each takes its parsed frame's `held_bytes` plus its answer's allowance
  from one byte budget, and gives it back when its answer is sent and its execution has ended; answers are cut
  to their allowance.
- Requests for different users run in parallel; requests for the same target user run one at a time.
- Agent-access calls (`ssh_*`, issue 17) run on a lane of their own (runtime/access_lane.py): no user lock, not the
  shared limiter, their own byte budget, so a P0 grant or revoke never waits behind an AI operation.
- A second delivery of the same (command, requestId, action, user) while the first is still running waits for
  the first and gets its result, so backend retries after a timeout never apply a change twice concurrently; if
  its body differs from the first's (runtime/jobs.py payload_digests: another key under the same request id), it
  is refused at once with 409 naming the fields that differ, never given the first's success (issue 14 item 4).
  No result is kept once the first has finished: a later delivery runs again, and its answer is what it did.
- Each job is answered when its change is done (at most DEFAULT_ANSWER_SECONDS), whatever `options.timeoutMillis`
  says, as P0's Go agent does: the tunnel server retries its own timeouts but not an answer, so an early 504 would
  end the call for good, while a retry after its timeout merges with the change still running (docs/connection.md).
  A host edit is never abandoned half-way either way.
"""

from __future__ import annotations

import contextlib
import dataclasses
import itertools
import math
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

import trio

from p0_ssh_agent.adapters.logging import get_logger, log_request_line
from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest
from p0_ssh_agent.runtime import limits
from p0_ssh_agent.runtime.access_lane import AccessLane, access_busy_result, access_off_result
from p0_ssh_agent.runtime.job_locks import Borrowed, InFlightBudget, LockLease, Share, UserLock
from p0_ssh_agent.runtime.jobs import JobKey, Payload, differing_fields, job_key, payload_digests

log = get_logger(__name__)

Reply = Callable[[CommandResult], Awaitable[None]]

# We do not know the backend's timeout (the P0 backend's callOptions are UNKNOWN, upstream-protocol.md §13), and
# its timeoutMillis hint is not a reason to give up early (module docstring); this cap only bounds a stuck command.
DEFAULT_ANSWER_SECONDS = 120.0


class Pipeline(Protocol):
    """What each request runs on: provisioning/pipeline.py's Pipeline (parse, facts, decision, change, answer; a
    dry run plans), or a test's fake."""

    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult: ...


@dataclass
class _InFlight:
    payload: Payload  # the first delivery's body, as later deliveries are compared with it
    done: trio.Event = field(default_factory=trio.Event)
    result: CommandResult | None = None


@dataclass(eq=False)
class _Answering:
    """A first delivery whose answer is still owed: its own task answers when the execution ends, or the worker's
    deadline task answers 504 at `deadline` (trio time) while the execution goes on."""

    key: JobKey
    reply: Reply
    share: Share
    started: float  # time.monotonic() when the job started, for the log line and the metrics
    deadline: float
    seconds: float


TRUNCATED = "...[truncated: the answer was larger than the agent keeps for one request]"


def fit_answer(result: CommandResult, allowed_chars: int) -> CommandResult:
    """`result` with its texts cut so that together they hold at most `allowed_chars` characters."""
    if len(result.message) + len(result.error) + len(result.output or "") <= allowed_chars:
        return result
    message = _cut(result.message, allowed_chars // 4)
    error = _cut(result.error, allowed_chars // 4)
    output = None if result.output is None else _cut(result.output, allowed_chars - len(message) - len(error))
    log.warning("answer_truncated", allowed_chars=allowed_chars)
    return dataclasses.replace(result, message=message, error=error, output=output)


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: max(0, limit - len(TRUNCATED))] + TRUNCATED[: max(0, limit)]


def answer_deadline_seconds(request: ForwardedRequest) -> float:
    """The hint `request.timeout_millis` is deliberately not used (module docstring)."""
    return DEFAULT_ANSWER_SECONDS


def busy_result() -> CommandResult:
    return CommandResult(
        success=False,
        error="agent busy: too many requests in progress; retry shortly",
        http_status=503,
    )


def stopping_result() -> CommandResult:
    return CommandResult(success=False, error="agent is shutting down; retry shortly", http_status=503)


def conflict_result(key: JobKey, differing: list[str]) -> CommandResult:
    """A delivery that reuses a request in flight with another body: its values are not echoed (a key is one)."""
    return CommandResult(
        success=False,
        error=(
            f"request {key.request_id} ({key.command} {key.action} for {key.user}) is already in progress with "
            f"another payload (differs in: {', '.join(differing)}); nothing was done for this delivery: a retry "
            "must repeat the request unchanged, and a new request needs its own requestId"
        ),
        http_status=409,
    )


def timeout_result(seconds: float) -> CommandResult:
    return CommandResult(
        success=False,
        error=(
            f"request still in progress after {seconds:.1f}s; it will finish on the host, "
            "retry the same request to get its result"
        ),
        http_status=504,
    )


class Worker:
    def __init__(
        self,
        pipeline: Pipeline,
        *,
        max_pending: int = limits.MAX_JOBS,
        max_parallel: int = 64,
        budget_bytes: int = limits.IN_FLIGHT_BUDGET,
        access_pipeline: Pipeline | None = None,
        access_lane: AccessLane | None = None,
        access_budget_bytes: int = limits.ACCESS_IN_FLIGHT_BUDGET,
    ) -> None:
        self._pipeline = pipeline
        self._max_pending = max_pending
        self.budget = InFlightBudget(budget_bytes)
        # Agent access: None while `agentAccess` is off (its calls are answered 403 without running anything).
        self._access_pipeline = access_pipeline
        self.access_lane = access_lane or AccessLane()
        self.access_budget = InFlightBudget(access_budget_bytes)
        self._limiter = trio.CapacityLimiter(max_parallel)
        self._pending = 0
        self._inflight: dict[tuple[str, str, str, str], _InFlight] = {}
        self._user_locks: dict[str, UserLock] = {}
        self._accepting = True
        self._idle = trio.Event()
        self._idle.set()
        self._nursery: trio.Nursery | None = None
        # Answers owed, in deadline order (every job gets the same allowance, so arrival order is deadline order);
        # an OrderedDict so that a job answered on time leaves it in O(1).
        self._owed: OrderedDict[int, _Answering] = OrderedDict()
        self._owed_ids = itertools.count()
        self._deadline_scope: trio.CancelScope | None = None
        # Told each answered request (key, outcome, seconds, result): the metrics (runtime/health.py).
        self.on_answered: Callable[[JobKey, str, float, CommandResult], None] | None = None

    @property
    def pending(self) -> int:
        return self._pending

    @property
    def pipeline(self) -> Pipeline:
        """What new requests run on (a reload replaces it; requests in flight finish on the old one)."""
        return self._pipeline

    def set_pipeline(self, pipeline: Pipeline) -> None:
        """Swap the pipeline (SIGHUP reload); jobs already running keep the one they started with."""
        self._pipeline = pipeline

    @property
    def access_pipeline(self) -> Pipeline | None:
        return self._access_pipeline

    def set_access_pipeline(self, pipeline: Pipeline | None) -> None:
        """Swap the agent-access pipeline (SIGHUP reload; None: the kill switch is off). Calls already running
        finish on the one they started with; calls still waiting in the lane take the new one (or the 403)."""
        self._access_pipeline = pipeline

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            task_status.started()
            await self._answer_at_deadlines(nursery)

    async def _answer_at_deadlines(self, nursery: trio.Nursery) -> None:
        """The one task that answers 504 for every execution still running at its answer's deadline (one task per
        call instead of two: the job's own task runs the execution and answers when it ends)."""
        while True:
            now = trio.current_time()
            while self._owed:
                answering = next(iter(self._owed.values()))
                if answering.deadline > now:
                    break
                self._owed.popitem(last=False)
                self._job_started()  # the late answer is its own unit of work, holding the request until sent
                answering.share.hold()
                nursery.start_soon(self._answer_late, answering)
            first = next(iter(self._owed.values())).deadline if self._owed else math.inf
            with trio.CancelScope(deadline=first) as scope:
                self._deadline_scope = scope
                await trio.sleep_forever()
            self._deadline_scope = None

    async def _answer_late(self, answering: _Answering) -> None:
        try:
            await self._answer(
                answering.key, answering.reply, timeout_result(answering.seconds), "timeout", answering.started
            )
        finally:
            answering.share.release()
            self._job_finished()

    def stop_accepting(self) -> None:
        self._accepting = False

    async def drain(self) -> None:
        """Wait until every accepted job has been answered and every change has finished."""
        await self._idle.wait()

    async def submit(self, request: ForwardedRequest, reply: Reply, *, held_bytes: int = 0) -> None:
        """Hand a job to the worker; returns once it runs on its own, or once the busy/stopping answer for a job
        that cannot be taken has been given (module docstring). `held_bytes` is what the parsed request holds."""
        nursery = self._started_nursery()
        key = job_key(request)
        share = None
        if not self._accepting:
            refusal, outcome = stopping_result(), "stopping"
        else:
            refusal, outcome = busy_result(), "busy"
            if self._pending < self._max_pending:
                budget = self.access_budget if limits.is_access_command(key.command) else self.budget
                share = budget.try_take(held_bytes + limits.answer_bytes_allowed(key.command))
        if share is None:
            await reply(refusal)
            _log_line(key, outcome, 0.0)
            if self.on_answered is not None:
                self.on_answered(key, outcome, 0.0, refusal)
            return
        self._job_started()
        nursery.start_soon(self._run_job, request, key, reply, share)

    def _started_nursery(self) -> trio.Nursery:
        if self._nursery is None:
            raise RuntimeError("Worker.run must be started before jobs are submitted")
        return self._nursery

    def _job_started(self) -> None:
        self._pending += 1
        if self._idle.is_set():
            self._idle = trio.Event()

    def _job_finished(self) -> None:
        self._pending -= 1
        if self._pending == 0:
            self._idle.set()

    async def _run_job(self, request: ForwardedRequest, key: JobKey, reply: Reply, share: Share) -> None:
        started = time.monotonic()
        owed_id = -1
        try:
            dedupe = key.dedupe_key
            payload = payload_digests(request) if dedupe else {}
            inflight = self._inflight.get(dedupe) if dedupe else None
            if inflight is not None:
                await self._follow(request, key, reply, inflight, payload=payload, started=started)
                return
            inflight = _InFlight(payload)
            if dedupe:
                self._inflight[dedupe] = inflight
            # This task runs the execution itself (it holds the request until the execution ends, which may be
            # after its answer went out); the deadline task answers if the execution outlives its deadline.
            seconds = answer_deadline_seconds(request)
            owed_id = next(self._owed_ids)
            answering = _Answering(key, reply, share, started, trio.current_time() + seconds, seconds)
            self._owed[owed_id] = answering
            if self._deadline_scope is not None and answering.deadline < self._deadline_scope.deadline:
                self._deadline_scope.deadline = answering.deadline
            await self._execute(request, key, inflight)
            if self._owed.pop(owed_id, None) is not None:  # not answered at the deadline: answer now
                # _execute always leaves a result; the 504 only satisfies the type.
                result = inflight.result if inflight.result is not None else timeout_result(seconds)
                await self._answer(key, reply, result, _outcome(result, False, False), started)
        finally:
            self._owed.pop(owed_id, None)  # a cancelled job owes nothing any more
            share.release()
            self._job_finished()

    async def _follow(
        self,
        request: ForwardedRequest,
        key: JobKey,
        reply: Reply,
        inflight: _InFlight,
        *,
        payload: Payload,
        started: float,
    ) -> None:
        """A second delivery while the first runs: the first's result, or 409 at once for another payload."""
        if differing := differing_fields(inflight.payload, payload):
            await self._answer(key, reply, conflict_result(key, differing), "conflict", started)
            return
        deadline = answer_deadline_seconds(request)
        with trio.move_on_after(deadline):
            await inflight.done.wait()
        result = inflight.result if inflight.result is not None else timeout_result(deadline)
        await self._answer(key, reply, result, _outcome(result, inflight.result is None, True), started)

    async def _answer(self, key: JobKey, reply: Reply, result: CommandResult, outcome: str, started: float) -> None:
        await reply(result)
        _log_line(key, outcome, (time.monotonic() - started) * 1000)
        if self.on_answered is not None:
            self.on_answered(key, outcome, time.monotonic() - started, result)

    async def _execute(self, request: ForwardedRequest, key: JobKey, inflight: _InFlight) -> None:
        try:
            if limits.is_access_command(key.command):
                result = await self._execute_access(request, key)
            else:
                async with self._user_lock(key.lock_name), Borrowed(self._limiter):
                    result = await self._pipeline.execute(request, key)
            inflight.result = fit_answer(result, limits.answer_chars_allowed(key.command))
        except Exception as exc:  # one broken request must never take the worker down
            log.exception("request_crashed", request_id=key.request_id, command=key.command)
            inflight.result = CommandResult(success=False, error=f"internal error: {type(exc).__name__}")
        finally:
            dedupe = key.dedupe_key
            if dedupe and self._inflight.get(dedupe) is inflight:
                del self._inflight[dedupe]
            inflight.done.set()

    async def _execute_access(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        """An `ssh_*` call on its lane: the account is the body's `username` as the job key read it (a hostile
        value only picks a lane entry; the pipeline validates it)."""
        if self._access_pipeline is None:
            return access_off_result()
        turn = self.access_lane.admit(key.user)
        if turn is None:
            return access_busy_result(key.user)
        async with turn:
            pipeline = self._access_pipeline  # the one in force once the turn comes (a reload may have switched it)
            if pipeline is None:
                return access_off_result()
            return await pipeline.execute(request, key)

    def _user_lock(self, user: str | None) -> contextlib.AbstractAsyncContextManager[object]:
        return LockLease(self._user_locks, user) if user is not None else contextlib.nullcontext()


def _outcome(result: CommandResult, timed_out: bool, duplicate: bool) -> str:
    if timed_out:
        return "timeout"
    base = "ok" if result.success else "failed"
    return f"{base}-duplicate" if duplicate else base


def _log_line(key: JobKey, outcome: str, duration_ms: float) -> None:
    log_request_line(
        request_id=key.request_id,
        command=key.command or "-",
        user=key.user,
        action=key.action,
        outcome=outcome,
        duration_ms=round(duration_ms, 1) if math.isfinite(duration_ms) else 0.0,
    )
