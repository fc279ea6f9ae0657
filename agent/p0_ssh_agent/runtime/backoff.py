"""Reconnect delays: exponential backoff with full jitter (pure: no trio, no clock).

The Go agent waits 1, 2, 4, ... 30 s exactly (upstream-protocol.md §3.5). After a backend restart every agent
in a fleet then reconnects in the same instants, and the waves repeat. "Full jitter" draws each wait uniformly
from [0, ceiling], so the reconnects spread out over the whole window instead (peers.md §5 item 11). The
ceiling doubles from `base` per attempt up to `cap`; the tunnel resets it once the server accepts the agent.
Both ceilings the tunnel uses are configuration values (RetrySettings: reconnectMaxSeconds,
unauthorizedRetrySeconds); their defaults are the waits above.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

# After a 401/403 the tunnel uses Backoff(base=AUTH_BACKOFF_BASE, cap=AUTH_BACKOFF_CAP): the cause (an unregistered
# key, a skewed clock) needs a person, so retrying every few seconds only adds load on the backend.
AUTH_BACKOFF_CAP = 300.0

RECONNECT_CAP = 30.0  # the default ceiling of ordinary reconnect waits (reconnectMaxSeconds)
AUTH_BACKOFF_BASE = 30.0  # the default first ceiling after a 401/403 (unauthorizedRetrySeconds)

# 2**64 already dwarfs any sensible cap; stopping the exponent here keeps the float arithmetic finite however
# many attempts pile up.
_MAX_EXPONENT = 64


@dataclass
class Backoff:
    """Delay generator. `rng` is injectable so tests (and fleet simulations) can seed it."""

    base: float = 1.0
    cap: float = 30.0
    rng: random.Random = field(default_factory=random.SystemRandom)
    attempts: int = 0

    def __post_init__(self) -> None:
        if not (self.base > 0 and self.cap >= self.base):
            raise ValueError(f"Backoff needs 0 < base <= cap, got base={self.base!r} cap={self.cap!r}")

    def ceiling(self) -> float:
        """The upper bound of the next delay, un-jittered (what STATUS texts show as "up to N s")."""
        return min(self.cap, self.base * 2.0 ** min(self.attempts, _MAX_EXPONENT))

    def next_delay(self) -> float:
        """A delay drawn uniformly from [0, ceiling()]; each call raises the ceiling for the next one."""
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempts += 1
        return delay

    def reset(self) -> None:
        """Back to `base`: called once a connection has proven itself (setClientId accepted)."""
        self.attempts = 0


@dataclass(frozen=True)
class RetrySettings:
    """The two backoffs' configurable ceilings (docs/connection.md "Tuning the waits"). The configuration bounds
    both (reconnectMaxSeconds 1..3600, unauthorizedRetrySeconds 1..AUTH_BACKOFF_CAP), so each makes a valid
    Backoff."""

    reconnect_max: float = RECONNECT_CAP
    unauthorized_first: float = AUTH_BACKOFF_BASE

    def reconnect(self, previous: Backoff | None = None) -> Backoff:
        """Ordinary reconnects: 1 s doubling to `reconnect_max`; `previous` keeps its attempts and rng (reload)."""
        if previous is None:
            return Backoff(cap=self.reconnect_max)
        return Backoff(base=previous.base, cap=self.reconnect_max, rng=previous.rng, attempts=previous.attempts)

    def unauthorized(self, previous: Backoff | None = None) -> Backoff:
        """After a 401/403: `unauthorized_first` doubling to AUTH_BACKOFF_CAP."""
        if previous is None:
            return Backoff(base=self.unauthorized_first, cap=AUTH_BACKOFF_CAP)
        return Backoff(self.unauthorized_first, AUTH_BACKOFF_CAP, rng=previous.rng, attempts=previous.attempts)
