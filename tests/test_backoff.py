"""The reconnect waits (runtime/backoff.py).

PhasedRetry, the ordinary reconnects: a random phase over one period, then exactly one period per failed attempt,
a new phase after each reset, Retry-After bounded and jittered; and a fleet simulated from it (bench/fleet.py, the
same model `make bench` reports) meets issue 16's targets after outages of 0 s, 10 s and 5 minutes. Backoff, the
401/403 waits: full-jitter bounds, the doubling ceiling, the cap, reset, and the distribution's centre.
"""

from __future__ import annotations

import random
import statistics
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p0_ssh_agent.runtime.backoff import (
    AUTH_BACKOFF_CAP,
    RECONNECT_PERIOD,
    RETRY_AFTER_CAP,
    Backoff,
    PhasedRetry,
    RetrySettings,
    retry_after_seconds,
)

# bench/ is a top-level package of the repository, not of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import fleet


def seeded(seed: int) -> random.Random:
    # A seeded PRNG makes every test here reproducible; nothing secret is drawn from it.
    return random.Random(seed)  # noqa: S311


def test_ceiling_doubles_from_base_up_to_cap() -> None:
    backoff = Backoff(rng=seeded(1))
    ceilings = []
    for _ in range(8):
        ceilings.append(backoff.ceiling())
        backoff.next_delay()
    assert ceilings == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]


def test_every_delay_lies_within_its_ceiling() -> None:
    backoff = Backoff(base=0.5, cap=10.0, rng=seeded(7))
    for _ in range(200):
        bound = backoff.ceiling()
        delay = backoff.next_delay()
        assert 0.0 <= delay <= bound <= 10.0


def test_ceiling_never_decreases_until_reset() -> None:
    backoff = Backoff(rng=seeded(3))
    previous = 0.0
    for _ in range(50):
        assert backoff.ceiling() >= previous
        previous = backoff.ceiling()
        backoff.next_delay()
    assert backoff.attempts == 50


def test_reset_returns_to_base() -> None:
    backoff = Backoff(rng=seeded(5))
    for _ in range(10):
        backoff.next_delay()
    assert backoff.ceiling() == 30.0
    backoff.reset()
    assert backoff.attempts == 0
    assert backoff.ceiling() == 1.0
    assert backoff.next_delay() <= 1.0


def test_auth_backoff_starts_at_30s_and_stops_at_5_minutes() -> None:
    backoff = Backoff(base=30.0, cap=AUTH_BACKOFF_CAP, rng=seeded(9))
    seen = []
    for _ in range(6):
        seen.append(backoff.ceiling())
        backoff.next_delay()
    assert seen == [30.0, 60.0, 120.0, 240.0, 300.0, 300.0]


def test_huge_attempt_counts_stay_finite() -> None:
    backoff = Backoff(rng=seeded(2), attempts=10_000)
    assert backoff.ceiling() == 30.0
    assert 0.0 <= backoff.next_delay() <= 30.0


def test_first_delay_is_uniform_over_base() -> None:
    rng = seeded(1234)
    samples = []
    for _ in range(20_000):
        backoff = Backoff(rng=rng)
        samples.append(backoff.next_delay())
    assert statistics.fmean(samples) == pytest.approx(0.5, abs=0.01)
    assert min(samples) < 0.01
    assert max(samples) > 0.99


def test_same_seed_gives_same_sequence() -> None:
    first = Backoff(rng=seeded(42))
    second = Backoff(rng=seeded(42))
    assert [first.next_delay() for _ in range(10)] == [second.next_delay() for _ in range(10)]


def test_default_rng_is_system_random() -> None:
    assert isinstance(Backoff().rng, random.SystemRandom)


@pytest.mark.parametrize(("base", "cap"), [(0.0, 30.0), (-1.0, 30.0), (10.0, 5.0)])
def test_nonsense_parameters_are_refused(base: float, cap: float) -> None:
    with pytest.raises(ValueError, match="base"):
        Backoff(base=base, cap=cap)


# --- PhasedRetry: the ordinary reconnect waits ------------------------------------------------------------------


def test_the_first_wait_is_a_random_phase_then_every_wait_is_one_period() -> None:
    waits = PhasedRetry(period=11.0, rng=seeded(1))
    delays = [waits.next_delay() for _ in range(10)]
    assert 0.0 <= delays[0] <= 11.0
    assert delays[1:] == [11.0] * 9
    assert waits.ceiling() == 11.0


def test_the_phase_is_uniform_over_the_period() -> None:
    rng = seeded(1234)
    samples = [PhasedRetry(period=11.0, rng=rng).next_delay() for _ in range(20_000)]
    assert statistics.fmean(samples) == pytest.approx(5.5, abs=0.1)
    assert statistics.median(samples) == pytest.approx(5.5, abs=0.15)
    assert min(samples) < 0.01
    assert max(samples) > 10.99


def test_reset_draws_a_new_phase() -> None:
    waits = PhasedRetry(period=11.0, rng=seeded(5))
    first = [waits.next_delay() for _ in range(3)]
    waits.reset()
    assert waits.attempts == 0
    second = [waits.next_delay() for _ in range(3)]
    assert second[1:] == [11.0, 11.0]
    assert first[0] != second[0] and 0.0 <= second[0] <= 11.0


def test_the_default_period_is_eleven_seconds_for_ordinary_reconnects() -> None:
    assert RECONNECT_PERIOD == 11.0
    assert RetrySettings().reconnect().period == 11.0
    assert isinstance(PhasedRetry().rng, random.SystemRandom)


def test_same_seed_gives_same_phased_sequence() -> None:
    first, second = PhasedRetry(rng=seeded(42)), PhasedRetry(rng=seeded(42))
    assert [first.next_delay() for _ in range(5)] == [second.next_delay() for _ in range(5)]


@pytest.mark.parametrize("period", [0.0, -1.0])
def test_a_period_that_is_not_positive_is_refused(period: float) -> None:
    with pytest.raises(ValueError, match="period"):
        PhasedRetry(period=period)


def test_retry_after_is_waited_plus_a_phase_and_bounded() -> None:
    waits = PhasedRetry(period=11.0, rng=seeded(3))
    asked = [waits.after_retry_after(120.0) for _ in range(200)]
    assert all(120.0 <= wait <= 131.0 for wait in asked)
    assert max(asked) - min(asked) > 9  # spread over the period, not one instant for a whole fleet
    assert waits.next_delay() == 11.0  # then one period per failure, as after any other
    assert RETRY_AFTER_CAP == 300.0
    assert 300.0 <= PhasedRetry(period=11.0, rng=seeded(4)).after_retry_after(86_400.0) <= 311.0
    assert 0.0 <= PhasedRetry(period=11.0, rng=seeded(4)).after_retry_after(-5.0) <= 11.0


def test_retry_after_header_values() -> None:
    now = datetime(2026, 12, 4, 12, 0, 0, tzinfo=UTC)
    assert retry_after_seconds("120", now) == 120.0
    assert retry_after_seconds(" 7 ", now) == 7.0
    assert retry_after_seconds("Fri, 04 Dec 2026 12:01:30 GMT", now) == 90.0
    assert retry_after_seconds("Fri, 04 Dec 2026 11:00:00 GMT", now) == 0.0  # already past: at once (+ a phase)
    assert retry_after_seconds((now + timedelta(hours=5)).strftime("%a, %d %b %Y %H:%M:%S GMT"), now) == 18_000.0
    for nonsense in ("", "soon", "-5", "1.5", "Fri, 04 Dec 2026 12:01:30"):
        assert retry_after_seconds(nonsense, now) is None, nonsense


# --- the fleet, simulated from the real schedule (bench/fleet.py) ----------------------------------------------

SIMULATED_FLEET = 50_000


@pytest.mark.parametrize("outage", [0.0, 10.0, 300.0])
def test_a_fleet_dropped_at_once_returns_within_issue_16s_targets(outage: float) -> None:
    """A simulation (no clock): every agent runs RetrySettings().reconnect(), seeded, until the backend is back."""
    outcome = fleet.simulate(SIMULATED_FLEET, outage, schedule=fleet.agent_schedule)
    assert outcome.peak_per_second / SIMULATED_FLEET * 100 <= fleet.PEAK_LIMIT_PERCENT == 10.0
    assert outcome.seconds_to_50 <= fleet.P50_LIMIT_SECONDS == 6.0
    assert outcome.seconds_to_99 <= fleet.P99_LIMIT_SECONDS == 30.0


def test_the_previous_schedule_misses_the_peak_target_in_the_same_simulation() -> None:
    """The model is not vacuous: full jitter from 1 s sends the whole fleet within the first second."""
    outcome = fleet.simulate(SIMULATED_FLEET, 0.0, schedule=fleet.before_schedule)
    assert outcome.peak_per_second / SIMULATED_FLEET * 100 > 90.0
