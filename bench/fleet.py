"""Scenario 5: fleet reconnect after a backend restart, as a pure computation from the real backoff code.

Model: 100,000 agents hold a connection; at t = 0 the backend goes away and comes back `outage` seconds later. Each
agent is the tunnel loop of runtime/tunnel.py: its session ends, it waits `Backoff.next_delay()` (the real class, a
seeded random.Random per fleet), tries, and while the backend is down the attempt fails at once (connection refused)
and it waits the next delay. The first attempt at or after `outage` succeeds. Reported: the peak number of attempts
in any one-second window (as a share of the fleet per second) and the time until 99% are connected again.

A second row runs the same model with a proposal in place (after losing an established connection, every wait is
drawn over [0, 30 s] until connected again: Backoff(base=30, cap=30)), computed with the same Backoff class, so the
gap to the target is shown, not argued.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

from bench.stats import Measurement, Target, percentile
from p0_ssh_agent.runtime.backoff import Backoff

FLEET = 100_000
OUTAGES = (0.0, 10.0)  # a restart that is back at once, and one that takes 10 s
SEED = 7
# The proposal: after an established connection drops, each wait is uniform over [0, 30 s] until connected again.
SPREAD_SECONDS = 30.0


@dataclass(frozen=True)
class FleetOutcome:
    peak_per_second: int  # most attempts that started within one one-second bin
    seconds_to_99: float  # when 99% of the fleet was connected again
    attempts: int


def simulate(fleet: int, outage: float, *, seed: int = SEED, spread: float | None = None) -> FleetOutcome:
    rng = random.Random(seed)
    per_second: Counter[int] = Counter()
    connected_at: list[float] = []
    attempts = 0
    for _ in range(fleet):
        backoff = Backoff(rng=rng) if spread is None else Backoff(base=spread, cap=spread, rng=rng)
        now = 0.0
        while True:
            now += backoff.next_delay()
            attempts += 1
            per_second[int(now)] += 1
            if now >= outage:
                connected_at.append(now)
                break
    return FleetOutcome(max(per_second.values()), percentile(connected_at, 0.99), attempts)


def measure_fleet(fleet: int = FLEET) -> Measurement:
    result = Measurement("fleet")
    for outage in OUTAGES:
        for label, window in (("current", None), ("proposal", SPREAD_SECONDS)):
            outcome = simulate(fleet, outage, spread=window)
            key = f"{label}/{outage:g}"
            result.figures[f"{key}/peak_percent_per_second"] = outcome.peak_per_second / fleet * 100
            result.figures[f"{key}/seconds_to_99"] = outcome.seconds_to_99
            result.figures[f"{key}/attempts_per_agent"] = outcome.attempts / fleet
    for outage in OUTAGES:
        result.targets += [
            Target(
                f"fleet peak reconnect rate <= 5% of the fleet per second (backend back after {outage:g} s)",
                result.figures[f"current/{outage:g}/peak_percent_per_second"],
                5.0,
                "%/s",
            ),
            Target(
                f"fleet 99% reconnected within 60 s (backend back after {outage:g} s)",
                result.figures[f"current/{outage:g}/seconds_to_99"],
                60.0,
                "s",
            ),
        ]
    result.notes.append(
        f"{fleet:,} agents, seed {SEED}; proposal: after a drop, every wait uniform over [0, {SPREAD_SECONDS:g} s]"
    )
    return result
