"""Smoke test of the benchmark suite (bench/): every scenario runs with tiny sizes and returns well-formed numbers.

No timing assertions: performance is what `make bench` reports. This only proves the scenarios still run against
the current code (a renamed handler or a changed daemon start-up breaks them here, not in the next bench run), and
that the statistics, the PNG writer and the Markdown report do what they say. The grant and scale scenarios change
accounts and sudoers, so they run only inside the namespace sandbox.
"""

from __future__ import annotations

import math
import os
import pwd
import struct
import sys
import zlib
from pathlib import Path

import pytest
import trio

# bench/ is a top-level package of the repository, not of the installed distribution.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench import agent_access, calls, footprint, grants, hops, ledger_store, reconnect, run, scale
from bench.fleet import measure_fleet, simulate
from bench.plot import Line, Panel, render
from bench.report import SECTIONS
from bench.report import render as render_markdown
from bench.sandbox import sandbox_root
from bench.stats import Measurement, Series, Target, percentile

from sandbox.fixtures import unique_user_name


def assert_well_formed(measurement: Measurement) -> None:
    """Every series has runs of positive, ordered, finite numbers; every figure is finite; targets have verdicts."""
    for key, series in measurement.series.items():
        assert series.runs, key
        for summary in series.runs:
            assert summary.count > 0, key
            assert 0 < summary.fastest <= summary.p50 <= summary.p99 <= summary.slowest, (key, summary)
            assert math.isfinite(summary.slowest) and summary.per_second > 0, (key, summary)
    for key, value in measurement.figures.items():
        assert math.isfinite(value), key
    for target in measurement.targets:
        assert math.isfinite(target.measured) and target.verdict in ("PASS", "MISS"), target


def test_percentile_is_nearest_rank() -> None:
    samples = [float(value) for value in range(1, 101)]
    assert percentile(samples, 0.50) == 50.0
    assert percentile(samples, 0.99) == 99.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([7.0], 0.99) == 7.0
    with pytest.raises(ValueError, match="no samples"):
        percentile([], 0.5)


def test_series_spreads_over_runs() -> None:
    series = Series("x")
    series.add([0.001, 0.002, 0.003], 0.006)
    series.add([0.004, 0.005, 0.006], 0.5)
    series.add_sequential([0.010, 0.020])
    assert series.p50.median == 0.005 and series.p50.low == 0.002 and series.p50.high == 0.010
    assert series.fastest == 0.001 and series.slowest == 0.020
    assert series.samples == 8
    assert series.runs[2].per_second == pytest.approx(2 / 0.030)


def test_target_verdicts() -> None:
    assert Target("lower", 1.0, 2.0).verdict == "PASS"
    assert Target("lower", 3.0, 2.0).verdict == "MISS"
    assert Target("higher", 3.0, 2.0, higher_is_better=True).verdict == "PASS"
    assert Target("higher", 1.0, 2.0, higher_is_better=True).verdict == "MISS"


def test_png_is_valid(tmp_path: Path) -> None:
    path = tmp_path / "plot.png"
    panel = Panel("T", "X", [Line("a", [(1.0, 0.001, 0.002), (10.0, 0.003, 0.009)]), Line("empty", [])])
    render([panel, panel], path, panel_width=200, height=160, note="NOTE")
    data = path.read_bytes()
    assert data.startswith(b"\x89PNG\r\n\x1a\n")
    offset, chunks = 8, {}
    while offset < len(data):
        (length,) = struct.unpack(">I", data[offset : offset + 4])
        kind, body = data[offset + 4 : offset + 8], data[offset + 8 : offset + 8 + length]
        (crc,) = struct.unpack(">I", data[offset + 8 + length : offset + 12 + length])
        assert zlib.crc32(kind + body) == crc, kind
        chunks[kind] = body
        offset += 12 + length
    width, height = struct.unpack(">II", chunks[b"IHDR"][:8])
    assert (width, height) == (400, 180)
    rows = zlib.decompress(chunks[b"IDAT"])
    assert len(rows) == height * (1 + 3 * width)
    assert set(rows[:: 1 + 3 * width]) == {0}  # filter byte "none" on every row
    assert len(set(rows)) > 3  # something besides white was drawn


def test_fleet_simulation_uses_the_real_backoff() -> None:
    outcome = simulate(2_000, outage=0.0)
    # With the backend back at once, every agent connects on its first try, within its phase (one period, 11 s).
    assert outcome.attempts == 2_000 and 0 < outcome.seconds_to_50 <= outcome.seconds_to_99 <= 11.0
    later = simulate(2_000, outage=10.0)
    # Counted from the backend's return: each agent's next attempt falls within the following period.
    assert later.attempts > 2_000 and later.seconds_to_99 <= 11.0
    measurement = measure_fleet(fleet=2_000)
    assert_well_formed(measurement)
    assert all(value > 0 for key, value in measurement.figures.items() if "peak" in key)
    assert len(measurement.targets) == 9  # peak, p50, p99 for each of the three outages
    assert "## 5. Fleet reconnect" in "\n".join(SECTIONS["fleet"](measurement))


@pytest.mark.slow
async def test_reconnect_tiny(tmp_path: Path) -> None:
    """The one-host scenario with its restart case only (the SIGSTOP case alone takes over a minute)."""
    measurement = await reconnect.measure_reconnect(tmp_path, runs=1, cases=reconnect.CASES[:1])
    assert_well_formed(measurement)
    assert list(measurement.series) == ["restart"] and len(measurement.targets) == 1
    assert "## 7. One host reconnecting" in "\n".join(SECTIONS["reconnect"](measurement))


async def test_calls_tiny(tmp_path: Path) -> None:
    measurement = await calls.measure_calls(tmp_path, calls.TINY)
    assert_well_formed(measurement)
    for kind in ("nocmd", "dryrun"):
        for level in calls.CONCURRENCY:
            for side in ("agent", "floor"):
                assert measurement.series[f"{kind}/{side}/{level}"].samples == calls.TINY.calls[level]
        assert measurement.figures[f"{kind}/response_bytes"] > measurement.figures["nocmd/request_bytes"] / 2
        # CPU per call of the daemon (with its children) and of the echo peer, read from /proc around the calls
        assert measurement.figures[f"{kind}/cpu/agent_us"] >= 0 and measurement.figures[f"{kind}/cpu/floor_us"] >= 0
    assert measurement.figures["cpu/calls_per_run"] == calls.TINY.cpu_calls
    assert len(measurement.targets) == 5  # two CPU targets, the two latency ratios, the throughput


@pytest.mark.slow
async def test_footprint_tiny(tmp_path: Path) -> None:
    measurement = await footprint.measure_footprint(tmp_path, footprint.TINY)
    assert_well_formed(measurement)
    figures = measurement.figures
    assert figures["bare_python_rss"] < figures["all_dependencies_rss"]
    assert figures["idle_rss"] > figures["bare_python_rss"] and figures["idle_fds"] > 0
    assert figures["requests"] == footprint.TINY.requests


def bench_leftovers() -> tuple[bytes, list[str]]:
    """/etc/sudoers as it is, and whatever the grant and scale scenarios may leave behind if they fail to clean up."""
    left = [path for path in ("/etc/sudoers-p0", "/etc/sudoers.d/p0-bench", "/etc/sudoers.d/p0-ssh-agent")
            if Path(path).exists()]  # fmt: skip
    left += [line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith(("pb", "pbl"))]
    return Path("/etc/sudoers").read_bytes(), left


@pytest.mark.sandbox
async def test_grants_and_scale_tiny(sandbox: object, tmp_path: Path) -> None:
    assert sandbox_root() is not None  # bench's own check agrees with the fixture's
    sudoers, left_before = await trio.to_thread.run_sync(bench_leftovers)
    assert left_before == []
    measurement = await grants.measure_grants(tmp_path / "grants", grants.TINY)
    assert_well_formed(measurement)
    assert measurement.series["keys/grant/2"].samples == 2 and measurement.series["go-keys/grant/2"].samples == 2
    assert measurement.series["bare/useradd/1"].samples == 1
    scaled = await scale.measure_scale(tmp_path / "scale", scale.TINY)
    assert_well_formed(scaled)
    assert {"keys40/grant", "keys40/revoke", "sudo10/grant", "listusers20"} <= set(scaled.series)
    # Every account and sudoers file the scenarios made is gone again.
    assert await trio.to_thread.run_sync(bench_leftovers) == (sudoers, [])


@pytest.mark.sandbox
async def test_agent_access_tiny(sandbox: object, tmp_path: Path) -> None:
    """bench/agent_access.py for real, once: the agent's reads and exec and the bare ssh both ran and checked
    their bytes (the scenario raises when a read comes back different), and the account it made is gone."""
    measurement = await agent_access.measure_access(tmp_path, agent_access.AccessSizes(rounds=1))
    assert set(measurement.series) == {"agent/read", "agent/exec", "ssh/read", "ssh/true"}
    assert all(series.samples == 1 for series in measurement.series.values())
    assert measurement.figures["agent/read ratio"] > 0
    assert not [entry.pw_name for entry in pwd.getpwall() if entry.pw_name.startswith("bench-ai-")]


@pytest.mark.skipif(os.geteuid() != 0, reason="the ledger's files are root-owned: needs root")
def test_ledger_tiny(tmp_path: Path) -> None:
    measurement = ledger_store.measure_ledger(tmp_path, ledger_store.TINY)
    assert_well_formed(measurement)
    assert set(measurement.series) == {"floor", "old", "new", "group", "read_all"}
    assert measurement.series["new"].samples == ledger_store.TINY.repeats
    assert "## 6. The ledger at 500 past grants" in "\n".join(SECTIONS["ledger"](measurement))


def test_run_writes_the_report(tmp_path: Path) -> None:
    out = tmp_path / "bench.md"
    assert run.main(["--quick", "--only", "fleet", "--out", str(out)]) == 0
    text = out.read_text()
    assert "## Targets (issues 7, 16)" in text and "PASS" in text and "MISS" in text
    assert "| cores |" in text and "## 5. Fleet reconnect" in text
    assert run.main(["--only", "nonsense", "--no-write"]) == 64


def test_report_renders_every_section() -> None:
    measurement = Measurement("calls")
    for kind in ("nocmd", "dryrun"):
        for level in calls.CONCURRENCY:
            measurement.new_series(f"{kind}/agent/{level}", "agent").add([0.002, 0.004], 0.006)
            measurement.new_series(f"{kind}/floor/{level}", "floor").add([0.001, 0.002], 0.003)
        measurement.figures[f"{kind}/request_bytes"] = 100
        measurement.figures[f"{kind}/response_bytes"] = 200
    measurement.targets.append(Target("a target", 2.0, 1.0, "x"))
    text = render_markdown({"cpu": "test-cpu"}, [measurement], profile="quick", command="x", skipped=["grants"],
                           findings=["one finding"])  # fmt: skip
    assert "| cpu | test-cpu |" in text
    assert "0 PASS, 1 MISS" in text and "| **MISS** | a target | 2.00 x | <= 1 x |" in text
    assert "| no-command call | 10 | 2.00 | 4.00 | 333 | 1.00 | 2.00 | 667 | 2.00x | 2.00x |" in text
    assert "| dry-run grant | 100 |" in text
    assert "Not run: grants." in text and "- one finding" in text


def test_the_access_section_compares_the_agent_with_a_bare_ssh() -> None:
    measurement = Measurement("access")
    for key, seconds in (("agent/read", 0.2), ("ssh/read", 0.4), ("agent/exec", 0.1), ("ssh/true", 0.3)):
        measurement.new_series(key, key).add_sequential([seconds, seconds])
    measurement.figures.update({"agent/read ratio": 0.5, "agent/exec ratio": 1 / 3})
    text = render_markdown({"cpu": "x"}, [measurement], profile="quick", command="x", skipped=[], findings=[])
    assert "## 8. Agent access next to a bare ssh" in text
    assert "takes 0.50x a bare `ssh cat`" in text and "takes 0.33x `ssh true`" in text
    assert "| agent/exec | 100 | 100 |" in text


@pytest.mark.sandbox
def test_the_hops_of_a_grant(sandbox: object, tmp_path: Path) -> None:
    """bench/hops.py: one real grant from the frame to the authorized_keys write; the spine is issue 13's target
    (at most 12 hops through at most 7 files), and the line's cross-module calls are what docs/development.md lists."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    recorder = hops.measure(state, unique_user_name())
    spine = recorder.spine()
    assert spine[0] == ("runtime.connection:Session._on_request", "runtime.worker:Worker.submit")
    assert spine[-1][1].startswith("host."), "the last hop is into the host layer that writes"
    assert len(spine) <= 12
    assert len({name.split(":")[0] for hop in spine for name in hop}) <= 7
    assert ("provisioning.facts:_read_ledger", "host.ledger:LedgerStore.read_user") in recorder.edges
