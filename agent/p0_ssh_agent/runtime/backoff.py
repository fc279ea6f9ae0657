"""Reconnect waits (pure: no trio, no clock): a fixed period with a random phase, and the 401/403 backoff.

Ordinary reconnects (PhasedRetry). A backend restart drops every agent of a fleet in the same instant, and an agent
cannot tell that from its own connection dropping: a socket closed or reset, a missed heartbeat or a refused
connection look the same. So no drop buys a faster path: after any of them the agent first waits a random time
drawn uniformly from [0, period] (its phase), and every further failed attempt waits exactly one period. Whenever
the backend comes back, each agent's next attempt is then uniform over the following period, whatever the outage
lasted: a fleet arrives at 1/period of its size per second, half of it is back within period/2 and all of it within
one period. The default period, 11 s, meets issue 16's targets for a 100,000-agent fleet (at most 10% of the fleet
per second, 50% back within 6 s, 99% within 30 s; bench/fleet.py simulates it from this class). P0's Go agent waits
1, 2, 4, ... 30 s exactly (upstream-protocol.md §3.5), so its whole fleet returns in the same instants; the
full-jitter backoff this agent had before (1 s doubling to 30 s) spread the waits but still sent the whole fleet
within the first second after a restart.

A 503 (or 429) handshake with `Retry-After` is the one case the server tells apart: the agent waits what it says,
bounded by RETRY_AFTER_CAP, plus a random part of one period, so a fleet told the same number does not return in
one instant either (PhasedRetry.after_retry_after). The tunnel resets the schedule once the server accepts the
agent (setClientId), so the next drop draws a new phase.

After a 401/403 (Backoff): full jitter over a ceiling that doubles from `base` to `cap`, each wait uniform over
[0, ceiling]. The cause (an unregistered key, a skewed clock) needs a person, so the waits are long.

Both the period and the first 401/403 ceiling are configuration values (RetrySettings: reconnectMaxSeconds,
unauthorizedRetrySeconds); their defaults are the waits above.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from datetime import datetime
from email.utils import parsedate_to_datetime

# After a 401/403 the tunnel uses Backoff(base=AUTH_BACKOFF_BASE, cap=AUTH_BACKOFF_CAP): the cause (an unregistered
# key, a skewed clock) needs a person, so retrying every few seconds only adds load on the backend.
AUTH_BACKOFF_CAP = 300.0
AUTH_BACKOFF_BASE = 30.0  # the default first ceiling after a 401/403 (unauthorizedRetrySeconds)

# The default reconnect period (reconnectMaxSeconds). 100,000 agents arrive at 1/11 of the fleet per second (9.1%,
# under the 10% target with room for the randomness of one-second bins); half are back within 5.5 s (target 6 s).
# 10 s would sit on the rate target and 12 s on the 6 s one.
RECONNECT_PERIOD = 11.0

# The longest Retry-After the agent honours: a larger value (or a date far ahead) is read as this many seconds,
# so a misconfigured server cannot park a fleet for hours. The same bound as the 401/403 waits.
RETRY_AFTER_CAP = AUTH_BACKOFF_CAP

# 2**64 already dwarfs any sensible cap; stopping the exponent here keeps the float arithmetic finite however
# many attempts pile up.
_MAX_EXPONENT = 64


@dataclass
class PhasedRetry:
    """Ordinary reconnect waits: uniform over [0, period] first, then exactly one period per failed attempt.

    `rng` is injectable so tests (and fleet simulations) can seed it."""

    period: float = RECONNECT_PERIOD
    rng: random.Random = field(default_factory=random.SystemRandom)
    attempts: int = 0  # waits drawn since the last reset

    def __post_init__(self) -> None:
        if not self.period > 0:
            raise ValueError(f"PhasedRetry needs a period > 0, got {self.period!r}")

    def ceiling(self) -> float:
        """The longest the next wait can be (what STATUS texts show as "up to N s")."""
        return self.period

    def next_delay(self) -> float:
        """The random phase after a reset, one whole period after that."""
        delay = self.rng.uniform(0.0, self.period) if self.attempts == 0 else self.period
        self.attempts += 1
        return delay

    def after_retry_after(self, seconds: float) -> float:
        """The wait after a handshake refused with `Retry-After: seconds`: at least that (at most RETRY_AFTER_CAP),
        plus a phase drawn anew over one period; the waits after it are one period each."""
        self.attempts += 1
        return min(max(seconds, 0.0), RETRY_AFTER_CAP) + self.rng.uniform(0.0, self.period)

    def reset(self) -> None:
        """Called once a connection has proven itself (setClientId accepted): the next drop draws a new phase."""
        self.attempts = 0


@dataclass
class Backoff:
    """Full-jitter exponential backoff (the 401/403 waits). `rng` is injectable so tests can seed it."""

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


def retry_after_seconds(value: str, now: datetime) -> float | None:
    """A `Retry-After` header's wait in seconds (RFC 9110 §10.2.3: delay-seconds or an HTTP-date, compared with
    `now`), or None when it is neither. Bounding it is PhasedRetry.after_retry_after's job."""
    text = value.strip()
    if text.isdigit():
        return float(text)
    try:
        when = parsedate_to_datetime(text)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:  # an HTTP-date is always GMT; a date without a zone is read as such
        return None
    return max(0.0, (when - now).total_seconds())


@dataclass(frozen=True)
class RetrySettings:
    """The two schedules' configurable values (docs/connection.md "Tuning the waits"). The configuration bounds
    both (reconnectMaxSeconds 1..3600, unauthorizedRetrySeconds 1..AUTH_BACKOFF_CAP), so each makes a valid
    schedule."""

    reconnect_max: float = RECONNECT_PERIOD
    unauthorized_first: float = AUTH_BACKOFF_BASE

    def reconnect(self, previous: PhasedRetry | None = None) -> PhasedRetry:
        """Ordinary reconnects: period `reconnect_max`; `previous` keeps its attempts and rng (reload)."""
        if previous is None:
            return PhasedRetry(period=self.reconnect_max)
        return PhasedRetry(period=self.reconnect_max, rng=previous.rng, attempts=previous.attempts)

    def unauthorized(self, previous: Backoff | None = None) -> Backoff:
        """After a 401/403: `unauthorized_first` doubling to AUTH_BACKOFF_CAP."""
        if previous is None:
            return Backoff(base=self.unauthorized_first, cap=AUTH_BACKOFF_CAP)
        return Backoff(self.unauthorized_first, AUTH_BACKOFF_CAP, rng=previous.rng, attempts=previous.attempts)
