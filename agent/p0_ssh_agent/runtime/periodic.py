"""The guardrails' background tasks in the supervisor's nursery: expiry sweep, offline revoke, reconciliation.

    expiry      sweeps at start-up (grants that expired while the agent was down), then sleeps until the next
                expiry, capped at maxGrantSeconds (a grant made meanwhile, even by `p0-ssh-agent command` in another
                process, cannot expire sooner than that) and at MAX_SLEEP_SECONDS (the wall clock may be stepped
                while we sleep on trio's monotonic one). A revoke that failed is retried after RETRY_SECONDS.
    offline     with offlineRevokeAfterSeconds: when the tunnel has had no registered session (successful
                setClientId) for that long, counted from start-up or from the last disconnect, revokes everything
                once (provisioning/expiry.offline_revoke); it arms again only after the next successful registration.
    reconcile   at start-up, after each reconnect, and every reconcileIntervalSeconds (provisioning/reconcile.py).
                Before the first one, once: the key grants a keyStore change left in the other place
                (provisioning/key_store_move.py move_stragglers; one stat on a home-mode host without a store).

None of them needs the backend. The blocking work runs in worker threads with the handlers' own locks. A failure
is logged and the loop goes on: a guardrail must never end the agent. The configuration is read at each round, so
SIGHUP changes take effect; `reloaded()` wakes every loop at once.

The supervisor starts these loops after READY=1, and the provisioning modules they run (the engine, the ledger,
the handlers) are imported by the loops, not by this module: READY does not wait for them (issue 16).
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TypeVar

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.host.audit_trail import AuditTrail

if TYPE_CHECKING:
    from p0_ssh_agent.provisioning.engine import Engine
    from p0_ssh_agent.provisioning.expiry import SweepReport
    from p0_ssh_agent.provisioning.reconcile import Drift
    from p0_ssh_agent.provisioning.revoke_everything import Report

log = get_logger(__name__)

MAX_SLEEP_SECONDS = 600.0
RETRY_SECONDS = 60.0

WallClock = Callable[[], datetime]
Settings = Callable[[], tuple[AgentConfig, Path]]
T = TypeVar("T")


class Offload(Protocol):
    """How blocking work runs: trio.to_thread.run_sync in the agent. A test with trio's autojump clock runs it
    inline instead, because virtual time jumps ahead whenever every task waits, also while a thread works."""

    def __call__(self, work: Callable[[], T], /) -> Awaitable[T]: ...


async def _in_thread(work: Callable[[], T]) -> T:
    return await trio.to_thread.run_sync(work)


def wall_clock() -> datetime:
    return datetime.now(UTC)


class _Wake:
    """A resettable event: wait(seconds) returns when set() was called since the last wait, or after `seconds`."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def set(self) -> None:
        self._event.set()

    async def wait(self, seconds: float | None) -> None:
        with trio.move_on_after(float("inf") if seconds is None else max(seconds, 0.0)):
            await self._event.wait()
        if self._event.is_set():
            self._event = trio.Event()


@dataclass
class GuardState:
    """What the loops last did, for tests and logs."""

    sweeps: int = 0
    last_sweep: SweepReport | None = None
    offline_revokes: int = 0
    last_offline_revoke: Report | None = None
    reconciles: int = 0
    last_drift: list[Drift] | None = None


class GuardTasks:
    def __init__(
        self,
        settings: Settings,
        *,
        audit_trail: AuditTrail,
        now: WallClock = wall_clock,
        offload: Offload = _in_thread,
    ) -> None:
        self._settings = settings
        self._audit_trail = audit_trail  # expiries, offline revokes and drift are recorded here
        self._now = now
        self._offload = offload
        self._expiry_wake = _Wake()
        self._offline_wake = _Wake()
        self._reconcile_wake = _Wake()
        self.state = GuardState()
        self.online = False
        self._registered_before = False
        self._offline_since = 0.0
        self._offline_fired = False

    # --- hooks (called on the event loop) ----------------------------------------------------------------------

    def link_changed(self, up: bool) -> None:
        """The tunnel registered (setClientId succeeded) or lost its session."""
        if up:
            self.online = True
            self._offline_fired = False
            if self._registered_before:
                self._reconcile_wake.set()  # after each reconnect
            self._registered_before = True
        elif self.online:
            self.online = False
            self._offline_since = trio.current_time()
        self._offline_wake.set()

    def reloaded(self) -> None:
        for wake in (self._expiry_wake, self._offline_wake, self._reconcile_wake):
            wake.set()

    # --- the loops ---------------------------------------------------------------------------------------------

    def _engine(self) -> Engine:
        from p0_ssh_agent.provisioning.engine import Engine  # after READY=1 (module docstring)

        config, state_dir = self._settings()
        return Engine.for_run(config, state_dir, dry_run=config.dry_run, audit_trail=self._audit_trail)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._offline_since = trio.current_time()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._expiry_loop)
            nursery.start_soon(self._offline_loop)
            nursery.start_soon(self._reconcile_loop)
            task_status.started()

    async def _expiry_loop(self) -> None:
        from p0_ssh_agent.provisioning.expiry import sweep

        while True:
            engine = self._engine()
            max_seconds = engine.config.max_grant_seconds
            delay: float | None = None
            if max_seconds is not None:
                report = await self._guarded("expiry_sweep", functools.partial(sweep, engine, self._now()))
                self.state.sweeps += 1
                self.state.last_sweep = report
                delay = min(float(max_seconds), MAX_SLEEP_SECONDS)
                if report is None or report.failed:
                    delay = min(delay, RETRY_SECONDS)
                if report is not None and report.next_expiry is not None:
                    delay = min(delay, (report.next_expiry - self._now()).total_seconds())
            await self._expiry_wake.wait(delay)

    async def _offline_loop(self) -> None:
        from p0_ssh_agent.provisioning.expiry import offline_revoke

        while True:
            engine = self._engine()
            threshold = engine.config.offline_revoke_after_seconds
            if threshold is None or self.online or self._offline_fired:
                await self._offline_wake.wait(None)
                continue
            offline_for = trio.current_time() - self._offline_since
            if offline_for < threshold:
                await self._offline_wake.wait(threshold - offline_for)
                continue
            report = await self._guarded("offline_revoke", functools.partial(offline_revoke, engine, offline_for))
            self._offline_fired = True
            self.state.offline_revokes += 1
            self.state.last_offline_revoke = report

    async def _reconcile_loop(self) -> None:
        from p0_ssh_agent.provisioning.key_store_move import move_stragglers
        from p0_ssh_agent.provisioning.reconcile import reconcile

        await self._guarded("key_store_move", functools.partial(move_stragglers, self._engine()))
        while True:
            engine = self._engine()
            repair = engine.config.reconcile == "repair"
            drift = await self._guarded("reconcile", functools.partial(reconcile, engine, repair=repair))
            self.state.reconciles += 1
            self.state.last_drift = drift
            if drift is not None:
                log.info("reconciled", drift=len(drift), mode=engine.config.reconcile, dry_run=engine.describes)
            await self._reconcile_wake.wait(float(engine.config.reconcile_interval_seconds))

    async def _guarded(self, what: str, work: Callable[[], T]) -> T | None:
        """Run blocking work off the event loop; log (never raise) any failure: a guardrail must not end the agent."""
        try:
            return await self._offload(work)
        except Exception as exc:  # everything is logged with its traceback, and retried next round
            log.error(f"{what}_failed", error=f"{type(exc).__name__}: {exc}", exc_info=exc)
            return None
