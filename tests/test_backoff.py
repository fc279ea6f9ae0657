"""Backoff: full-jitter bounds, the doubling ceiling, the cap, reset, and the distribution's centre."""

from __future__ import annotations

import random
import statistics

import pytest

from p0_ssh_agent.runtime.backoff import AUTH_BACKOFF_CAP, Backoff


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
