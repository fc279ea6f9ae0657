"""Numbers shared by every scenario: latency summaries over several runs, targets, and the machine's facts.

A figure is never one run: each scenario repeats its measurement, `Series` keeps one summary per run, and the table
shows the median over runs with the min-max spread, so a run disturbed by another process on the shared machine is
visible instead of silently deciding the result.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path


def percentile(samples: list[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation: p99 of 100 samples is the 99th slowest, a real observation)."""
    if not samples:
        raise ValueError("percentile of no samples")
    ordered = sorted(samples)
    rank = max(1, round(fraction * len(ordered) + 0.5 - 1e-9))
    return ordered[min(rank, len(ordered)) - 1]


@dataclass(frozen=True)
class RunSummary:
    """One run of one measurement: latencies in seconds, and throughput over the run's wall time."""

    count: int
    p50: float
    p99: float
    fastest: float
    slowest: float
    per_second: float


def summarize(latencies: list[float], wall_seconds: float) -> RunSummary:
    return RunSummary(
        count=len(latencies),
        p50=percentile(latencies, 0.50),
        p99=percentile(latencies, 0.99),
        fastest=min(latencies),
        slowest=max(latencies),
        per_second=len(latencies) / wall_seconds if wall_seconds > 0 else float("inf"),
    )


@dataclass(frozen=True)
class Spread:
    """The median over runs of one figure, with the lowest and highest run."""

    median: float
    low: float
    high: float

    @staticmethod
    def of(values: list[float]) -> Spread:
        return Spread(statistics.median(values), min(values), max(values))


@dataclass
class Series:
    """Every run of one measurement (for example "no-command call, concurrency 10")."""

    name: str
    runs: list[RunSummary] = field(default_factory=list)

    def add(self, latencies: list[float], wall_seconds: float) -> None:
        self.runs.append(summarize(latencies, wall_seconds))

    def add_sequential(self, latencies: list[float]) -> None:
        """One run made of operations done one after another: its wall time is the sum of their latencies."""
        self.add(latencies, sum(latencies))

    @property
    def p50(self) -> Spread:
        return Spread.of([run.p50 for run in self.runs])

    @property
    def p99(self) -> Spread:
        return Spread.of([run.p99 for run in self.runs])

    @property
    def per_second(self) -> Spread:
        return Spread.of([run.per_second for run in self.runs])

    @property
    def fastest(self) -> float:
        return min(run.fastest for run in self.runs)

    @property
    def slowest(self) -> float:
        return max(run.slowest for run in self.runs)

    @property
    def samples(self) -> int:
        return sum(run.count for run in self.runs)


@dataclass(frozen=True)
class Target:
    """One line of the issue's targets: PASS when `measured` is on the right side of `limit`."""

    text: str
    measured: float
    limit: float
    unit: str = ""
    higher_is_better: bool = False
    note: str = ""

    @property
    def passed(self) -> bool:
        return self.measured >= self.limit if self.higher_is_better else self.measured <= self.limit

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


@dataclass
class Measurement:
    """What one scenario hands back: its series (for tables and the plot), figures, targets and notes."""

    scenario: str
    series: dict[str, Series] = field(default_factory=dict)
    figures: dict[str, float] = field(default_factory=dict)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def new_series(self, key: str, name: str) -> Series:
        self.series[key] = Series(name)
        return self.series[key]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def load_average() -> tuple[float, float, float]:
    return os.getloadavg()


def machine_facts() -> dict[str, str]:
    one, five, fifteen = load_average()
    return {
        "date": datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "cpu": cpu_model(),
        "cores": str(os.cpu_count() or 0),
        "kernel": platform.release(),
        "python": sys.version.split()[0],
        "load at start (1/5/15 min)": f"{one:.2f} / {five:.2f} / {fifteen:.2f}",
    }
