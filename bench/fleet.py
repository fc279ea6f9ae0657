"""Scenario 5: fleet reconnect after a backend outage, as a pure computation from the real reconnect code.

Model: 100,000 agents hold a connection; at t = 0 the backend goes away (a restart drops every agent at once) and
comes back `outage` seconds later. Each agent is the tunnel loop of runtime/tunnel.py: its session ends, it waits
the reconnect schedule's next delay (`RetrySettings().reconnect()`, the object the tunnel uses, with the default
reconnectMaxSeconds and a seeded random.Random per fleet), tries, and while the backend is down the attempt fails
at once (connection refused) and it waits the next delay. The first attempt at or after `outage` succeeds.

Reported, for each outage: the peak number of attempts that start within any one-second bin (as a share of the
fleet per second, the load the backend and its load balancer see) and the time from the backend's return until
50% and 99% of the fleet are connected again (issue 16's targets). Two baselines run through the same model: the
agent's schedule before issue 16 (full jitter, 1 s doubling to 30 s: `Backoff(base=1, cap=30)`, the class the
401/403 path still uses) and P0's Go agent (1, 2, 4 ... 30 s exactly, no jitter: upstream-protocol.md §3.5).
"""

from __future__ import annotations

import dataclasses
import random
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from bench.stats import Measurement, Target, percentile
from p0_ssh_agent.runtime.backoff import Backoff, RetrySettings

FLEET = 100_000
OUTAGES = (0.0, 10.0, 300.0)  # a restart that is back at once, one that takes 10 s, and five minutes down
SEED = 7
PEAK_LIMIT_PERCENT = 10.0  # of the fleet per second (issue 16)
P50_LIMIT_SECONDS = 6.0  # after the backend is back
P99_LIMIT_SECONDS = 30.0


class Schedule(Protocol):
    def next_delay(self) -> float: ...


@dataclass
class GoAgentBackoff:
    """P0's Go agent: 1, 2, 4, ... 30 s, no jitter (reset when the dial succeeds)."""

    attempts: int = 0

    def next_delay(self) -> float:
        delay = min(30.0, 2.0 ** min(self.attempts, 16))
        self.attempts += 1
        return delay


def agent_schedule(rng: random.Random) -> Schedule:
    """The tunnel's own reconnect schedule at the default settings, drawing from `rng`."""
    return dataclasses.replace(RetrySettings().reconnect(), rng=rng)


def before_schedule(rng: random.Random) -> Schedule:
    """The reconnect schedule before issue 16: full jitter over a ceiling of 1 s doubling to 30 s."""
    return Backoff(base=1.0, cap=30.0, rng=rng)


def go_schedule(_rng: random.Random) -> Schedule:
    return GoAgentBackoff()


POLICIES: dict[str, Callable[[random.Random], Schedule]] = {
    "agent": agent_schedule,
    "before": before_schedule,
    "go": go_schedule,
}
POLICY_NAMES = {
    "agent": "this agent",
    "before": "before issue 16 (full jitter 1 s doubling to 30 s)",
    "go": "Go agent (1, 2, 4 ... 30 s, no jitter)",
}


@dataclass(frozen=True)
class FleetOutcome:
    peak_per_second: int  # most attempts that started within one one-second bin
    seconds_to_50: float  # from the backend's return until half the fleet was connected again
    seconds_to_99: float  # ... until 99% were
    attempts: int


def simulate(
    fleet: int, outage: float, *, seed: int = SEED, schedule: Callable[[random.Random], Schedule] = agent_schedule
) -> FleetOutcome:
    # A seeded PRNG: the simulation is reproducible; nothing secret is drawn from it.
    rng = random.Random(seed)
    per_second: Counter[int] = Counter()
    back_after: list[float] = []
    attempts = 0
    for _ in range(fleet):
        waits = schedule(rng)
        now = 0.0
        while True:
            now += waits.next_delay()
            attempts += 1
            per_second[int(now)] += 1
            if now >= outage:
                back_after.append(now - outage)
                break
    return FleetOutcome(max(per_second.values()), percentile(back_after, 0.50), percentile(back_after, 0.99), attempts)


def measure_fleet(fleet: int = FLEET) -> Measurement:
    result = Measurement("fleet")
    for outage in OUTAGES:
        for policy, schedule in POLICIES.items():
            outcome = simulate(fleet, outage, schedule=schedule)
            key = f"{policy}/{outage:g}"
            result.figures[f"{key}/peak_percent_per_second"] = outcome.peak_per_second / fleet * 100
            result.figures[f"{key}/seconds_to_50"] = outcome.seconds_to_50
            result.figures[f"{key}/seconds_to_99"] = outcome.seconds_to_99
            result.figures[f"{key}/attempts_per_agent"] = outcome.attempts / fleet
    f = result.figures
    for outage in OUTAGES:
        key = f"{outage:g}"

        def baselines(figure: str, unit: str, key: str = key) -> str:
            before, go = f[f"before/{key}/{figure}"], f[f"go/{key}/{figure}"]
            return f"before {before:,.1f} {unit}, Go agent {go:,.1f} {unit}"

        result.targets += [
            Target(
                f"fleet peak attempts <= {PEAK_LIMIT_PERCENT:g}% of the fleet per second (backend down {key} s)",
                f[f"agent/{key}/peak_percent_per_second"],
                PEAK_LIMIT_PERCENT,
                "%/s",
                note=baselines("peak_percent_per_second", "%/s"),
            ),
            Target(
                f"fleet 50% reconnected within {P50_LIMIT_SECONDS:g} s of the backend's return (down {key} s)",
                f[f"agent/{key}/seconds_to_50"],
                P50_LIMIT_SECONDS,
                "s",
                note=baselines("seconds_to_50", "s"),
            ),
            Target(
                f"fleet 99% reconnected within {P99_LIMIT_SECONDS:g} s of the backend's return (down {key} s)",
                f[f"agent/{key}/seconds_to_99"],
                P99_LIMIT_SECONDS,
                "s",
                note=baselines("seconds_to_99", "s"),
            ),
        ]
    result.notes.append(
        f"{fleet:,} agents, seed {SEED}, all dropped at once at t = 0; the times count from the backend's return; "
        f"this agent at the default reconnectMaxSeconds ({RetrySettings().reconnect_max:g} s)"
    )
    return result
