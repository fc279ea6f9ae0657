"""The worker's locks and byte budgets: per-user locks that leave their table when unused, taking a free lock or
token at once, and the in-flight byte budget a call's share is taken from (runtime/limits.py).

trio's own `acquire` yields to the scheduler even when the lock is free: a scheduling round trip per call on the
request path (a user's lock, the worker's limiter, the session's send lock), which the awaits that follow make up
for. `acquire` here takes a free one at once and waits, in line and fairly, only when it is taken or others wait.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio


@dataclass
class UserLock:
    lock: trio.Lock = field(default_factory=trio.Lock)
    users: int = 0


class LockLease:
    """A per-user lock that is dropped from the table when nobody holds or waits for it (no unbounded growth)."""

    def __init__(self, table: dict[str, UserLock], user: str) -> None:
        self._table = table
        self._user = user

    async def __aenter__(self) -> None:
        entry = self._table.setdefault(self._user, UserLock())
        entry.users += 1
        try:
            await acquire(entry.lock)
        except BaseException:
            self._release_ref(entry)
            raise

    async def __aexit__(self, *exc_info: object) -> None:
        entry = self._table[self._user]
        entry.lock.release()
        self._release_ref(entry)

    def _release_ref(self, entry: UserLock) -> None:
        entry.users -= 1
        if entry.users == 0:
            del self._table[self._user]


class Borrowed:
    """`async with limiter`, without the scheduling round trip when a token is free (see acquire)."""

    def __init__(self, limiter: trio.CapacityLimiter) -> None:
        self._limiter = limiter

    async def __aenter__(self) -> None:
        await acquire(self._limiter)

    async def __aexit__(self, *exc_info: object) -> None:
        self._limiter.release()


async def acquire(resource: trio.Lock | trio.CapacityLimiter) -> None:
    """Take a free lock or token at once; wait (fairly, in line) only when it is taken or others wait. trio's own
    acquire yields to the scheduler even then, a round trip per call that the job's later awaits make up for."""
    try:
        resource.acquire_nowait()
    except trio.WouldBlock:
        await resource.acquire()


class InFlightBudget:
    """The bytes the calls in flight may hold: a share is taken whole or not at all, and comes back when its
    last holder (the job answering, the execution it started) lets go."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0

    def try_take(self, amount: int) -> Share | None:
        if self.used + amount > self.limit:
            return None
        self.used += amount
        self.peak = max(self.peak, self.used)
        return Share(self, amount)


class Share:
    def __init__(self, budget: InFlightBudget, amount: int) -> None:
        self._budget = budget
        self.amount = amount
        self._holders = 1

    def hold(self) -> None:
        self._holders += 1

    def release(self) -> None:
        self._holders -= 1
        if self._holders == 0:
            self._budget.used -= self.amount
