"""The lane agent-access calls run on (issue 17 item 6): their own limits, so a P0 grant or revoke never waits
behind an AI operation, and one account's operations never crowd out another's.

An `ssh_*` call takes neither the target user's lock nor the worker's shared limiter (runtime/worker.py): it takes
its account's turn (ACCESS_PER_ACCOUNT at once, at most ACCESS_QUEUE_PER_ACCOUNT more waiting; the next is answered
503 busy at once), then one of ACCESS_PARALLEL tokens shared by every account. The account's turn comes first, so
an account's waiting calls hold none of the shared tokens. Its bytes come from a budget of its own too
(runtime/limits.py ACCESS_IN_FLIGHT_BUDGET).

What runs the calls is agent_access/line.py's AccessPipeline, built here only when `agentAccess` is on: with it
off nothing of agent_access is imported (issue 16: the idle daemon loads only what it needs) and every `ssh_*` call
is answered 403.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.runtime import limits
from p0_ssh_agent.runtime.job_locks import acquire

if TYPE_CHECKING:
    from p0_ssh_agent.runtime.worker import Pipeline

ACCESS_OFF_ERROR = "agent access is off (agentAccess: false)"


def access_off_result() -> CommandResult:
    return CommandResult(success=False, error=ACCESS_OFF_ERROR, http_status=403, result={"kind": "disabled"})


def access_busy_result(account: str) -> CommandResult:
    return CommandResult(
        success=False,
        error=f"agent access busy: too many operations in progress or waiting for account {account}; retry shortly",
        http_status=503,
        result={"kind": "busy"},
    )


def access_pipeline_for(config: AgentConfig, state_dir: Path, audit_trail: AuditTrail) -> Pipeline | None:
    """The agent-access pipeline a configuration asks for: None when `agentAccess` is off (nothing imported), else
    one with its policy and trust file loaded now. Raises AgentError (a bad file: exit 78 at start-up; on SIGHUP
    the supervisor keeps the pipelines it has)."""
    if not config.agent_access:
        return None
    from p0_ssh_agent.agent_access.line import build_access_pipeline

    return build_access_pipeline(config, state_dir, audit_trail)


@dataclass
class _Account:
    limiter: trio.CapacityLimiter
    users: int = 0  # running and waiting


@dataclass
class AccessLane:
    parallel: int = limits.ACCESS_PARALLEL
    per_account: int = limits.ACCESS_PER_ACCOUNT
    queue_per_account: int = limits.ACCESS_QUEUE_PER_ACCOUNT
    _shared: trio.CapacityLimiter | None = field(default=None, init=False, repr=False)
    _accounts: dict[str, _Account] = field(default_factory=dict, init=False, repr=False)

    def admit(self, account: str) -> AccessTurn | None:
        """The account's place in the lane, or None when as many as it may have are running and waiting."""
        entry = self._accounts.get(account)
        if entry is None:
            entry = self._accounts[account] = _Account(trio.CapacityLimiter(self.per_account))
        if entry.users >= self.per_account + self.queue_per_account:
            return None
        entry.users += 1
        if self._shared is None:  # made in the event loop, on first use (a CapacityLimiter needs trio running)
            self._shared = trio.CapacityLimiter(self.parallel)
        return AccessTurn(self, account, entry, self._shared)

    def waiting_and_running(self, account: str) -> int:
        entry = self._accounts.get(account)
        return entry.users if entry is not None else 0

    def _leave(self, account: str, entry: _Account) -> None:
        entry.users -= 1
        if entry.users == 0:  # no table entry outlives its last user: the table stays as small as the lane
            del self._accounts[account]


class AccessTurn:
    """`async with turn:` waits for the account's token, then a shared one; both are given back on the way out,
    and the account's place in the lane with them (also when the wait was cancelled)."""

    def __init__(self, lane: AccessLane, account: str, entry: _Account, shared: trio.CapacityLimiter) -> None:
        self._lane, self._account, self._entry, self._shared = lane, account, entry, shared
        self._held: list[trio.CapacityLimiter] = []

    async def __aenter__(self) -> None:
        try:
            for limiter in (self._entry.limiter, self._shared):
                await acquire(limiter)
                self._held.append(limiter)
        except BaseException:
            self._release()
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        self._release()

    def _release(self) -> None:
        for limiter in reversed(self._held):
            limiter.release()
        self._held.clear()
        self._lane._leave(self._account, self._entry)
