"""Scenario 1: call round trip through the real WebSocket, next to a bare trio-websocket echo (the floor).

Agent path: DevBackend.call() (JSON-RPC encode, send, wait for the matching response, parse) -> the daemon's
session reader -> worker -> pipeline -> answer frame. Two calls: one without a command (the protocol alone) and a
dry-run `provisionAuthorizedKeys` grant (request validation, key parsing, the facts and the plan in a worker thread;
its account does not exist, so since issue 14 item 7 it is answered with the refusal a real run gives, not a plan).
Floor: the bench's own trio-websocket server and bench/echo_peer.py in a child process, moving frames of the same
sizes as the agent's real request and response frames. Both are measured in the same run, interleaved.

CPU per call: user + system time (/proc/<pid>/stat) of the daemon and its children (waited-for and living), and of
the echo peer, read before and after a fixed number of calls at concurrency 10; the median over `cpu_runs`. The
bench's own side (the dev backend, the floor's server) is in neither figure.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio
from trio_websocket import ConnectionClosed, WebSocketConnection, WebSocketRequest, serve_websocket

from bench.daemon import CLIENT_ID, agent_and_backend, forwarded
from bench.echo_peer import HEADER_CHARS, SEQUENCE_CHARS, SIZE_CHARS
from bench.sshkeys import public_key_line
from bench.stats import Measurement, Target
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.protocol import jsonrpc

CONCURRENCY = (1, 10, 100)
NO_COMMAND: dict[str, object] = {}


def dry_run_grant() -> dict[str, object]:
    return {
        "command": "provisionAuthorizedKeys",
        "userName": "benchuser",
        "action": "grant",
        "requestId": "benchreq1",
        "publicKey": public_key_line("bench@p0"),
    }


@dataclass(frozen=True)
class CallSizes:
    """calls[level] = calls per run at that concurrency; runs = how many times each is measured; cpu_calls per
    CPU run (at CPU_CONCURRENCY), cpu_runs of them."""

    calls: dict[int, int]
    runs: int
    warmup: int
    cpu_calls: int = 2000
    cpu_runs: int = 5


QUICK = CallSizes({1: 200, 10: 500, 100: 1000}, runs=1, warmup=100, cpu_calls=1000, cpu_runs=3)
FULL = CallSizes({1: 1500, 10: 4000, 100: 8000}, runs=3, warmup=300, cpu_calls=2000, cpu_runs=5)
TINY = CallSizes({1: 5, 10: 20, 100: 100}, runs=1, warmup=5, cpu_calls=20, cpu_runs=1)
CPU_CONCURRENCY = 10
# The targets, in µs of CPU per call (agent and children).
CPU_TARGET_US = {"nocmd": 250.0, "dryrun": 400.0}
# What a MISS of each target comes from, as profiled (docs/benchmarks.md "What the profile showed").
MISS_CAUSES = {
    "nocmd": "the shared call path: trio-websocket and wsproto framing, trio scheduling, JSON-RPC, the log line",
    "dryrun": "between 0.38 and 0.48 ms from run to run: the one getpwnam of the missing account through "
    "nss_systemd (about 55 µs; it was 3, and 2 reads of /etc/login.defs, before this issue), the worker-thread hop "
    "(about 35 µs), and the rest (Cedar evaluation, the plan and its description, the answer, the log and audit "
    "lines) spread thin, not broken down further",
    "rate": "one process on one core: at most 1e6 / (µs of CPU per call) calls a second, less what other "
    "processes on the shared machine take",
    "p50": "CPU per call: at concurrency 10 a call waits for the ones ahead of it, and the agent spends about 4x "
    "the echo peer's CPU per call (the floor's whole cost is the framing the agent also pays)",
}


async def drive(call: Callable[[], Awaitable[None]], concurrency: int, total: int) -> tuple[list[float], float]:
    """`total` calls from `concurrency` tasks; returns each call's latency and the wall time of the whole batch."""
    latencies: list[float] = []
    remaining = total

    async def client() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            started = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for _ in range(concurrency):
            nursery.start_soon(client)
    return latencies, time.perf_counter() - started


class EchoFloor:
    """The bench's end of the floor: a WebSocket server whose only client is bench/echo_peer.py."""

    def __init__(self) -> None:
        self.ws: WebSocketConnection | None = None
        self.connected = trio.Event()
        self._sequence = itertools.count()
        self._waiting: dict[str, trio.Event] = {}

    async def _on_upgrade(self, request: WebSocketRequest) -> None:
        self.ws = await request.accept()
        self.connected.set()
        while True:
            try:
                frame = await self.ws.get_message()
            except ConnectionClosed:
                return
            text = frame if isinstance(frame, str) else frame.decode()
            self._waiting.pop(text[:SEQUENCE_CHARS]).set()

    async def serve(self, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            server = await nursery.start(serve_websocket, self._on_upgrade, "127.0.0.1", 0, None)
            task_status.started(server.port)

    async def call(self, request_size: int, response_size: int) -> None:
        assert self.ws is not None
        key = f"{next(self._sequence):0{SEQUENCE_CHARS}d}"
        done = self._waiting[key] = trio.Event()
        await self.ws.send_message(f"{key}{response_size:0{SIZE_CHARS}d}".ljust(max(request_size, HEADER_CHARS), "x"))
        await done.wait()


def _stat_fields(pid: int) -> list[str]:
    """/proc/<pid>/stat after the command name (which may hold spaces): field 3 (state) comes first."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()


def process_cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (/proc/<pid>/stat fields 14 and 15)."""
    fields = _stat_fields(pid)
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def tree_cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (all its threads) and its children so far: its own (fields 14, 15),
    its waited-for children's (16, 17), and that of every descendant still running."""
    fields = _stat_fields(pid)
    ticks = sum(int(field) for field in fields[11:15])
    for child in _living_descendants(pid):
        # One that ended between the listing and the read has its time in its parent's fields 16-17 once waited.
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            ticks += sum(int(field) for field in _stat_fields(child)[11:13])
    return ticks / os.sysconf("SC_CLK_TCK")


def _living_descendants(pid: int) -> list[int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                parents[int(entry.name)] = int(_stat_fields(int(entry.name))[1])
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    found, frontier = [], [pid]
    while frontier:
        parent = frontier.pop()
        children = [child for child, ppid in parents.items() if ppid == parent]
        found += children
        frontier += children
    return found


async def _agent_call(backend: DevBackend, request: dict[str, object]) -> None:
    answer = await backend.call(CLIENT_ID, request)
    if not (isinstance(answer, dict) and (answer.get("status") == 200 or _refused_for_no_account(answer))):
        raise RuntimeError(f"the agent did not answer 200: {answer!r}")


def _refused_for_no_account(answer: dict[object, object]) -> bool:
    """The dry-run grant's expected answer: a dry run refuses what a real run refuses (a missing account)."""
    data = answer.get("data")
    return isinstance(data, dict) and str(data.get("error", "")).startswith("user benchuser not found")


def _frame_sizes(backend: DevBackend, request: dict[str, object]) -> tuple[int, int]:
    """(request frame, the agent's last response frame) in characters, as they travel."""
    sent = len(jsonrpc.encode_request(1_000_000, "call", request))
    frames = backend.frames_from(CLIENT_ID)
    answer = frames[-1][1]
    return sent, len(answer)


async def measure_calls(workdir: Path, sizes: CallSizes = QUICK) -> Measurement:
    result = Measurement("calls")
    kinds = {"nocmd": ("no-command call", NO_COMMAND), "dryrun": ("dry-run grant", dry_run_grant())}
    floor = EchoFloor()
    async with agent_and_backend(workdir) as (backend, agent), trio.open_nursery() as nursery:
        port = await nursery.start(floor.serve)
        peer = await trio.lowlevel.open_process([sys.executable, "-m", "bench.echo_peer", f"ws://127.0.0.1:{port}"])
        try:
            with trio.fail_after(30):
                await floor.connected.wait()
            frame_sizes: dict[str, tuple[int, int]] = {}
            cpu: dict[str, float] = {}  # the daemon's CPU seconds per series, to show where the ceiling is
            for kind, (_label, data) in kinds.items():
                request = forwarded(data)
                await drive(partial(_agent_call, backend, request), 10, sizes.warmup)
                frame_sizes[kind] = _frame_sizes(backend, request)
            for _run in range(sizes.runs):
                for kind, (label, data) in kinds.items():
                    request = forwarded(data)
                    up, down = frame_sizes[kind]
                    for level in CONCURRENCY:
                        total = sizes.calls[level]
                        key = f"{kind}/floor/{level}"
                        series = result.series.get(key) or result.new_series(key, f"echo floor ({label} sizes)")
                        series.add(*await drive(partial(floor.call, up, down), level, total))
                        key = f"{kind}/agent/{level}"
                        series = result.series.get(key) or result.new_series(key, label)
                        cpu_before = process_cpu_seconds(agent.pid)
                        series.add(*await drive(partial(_agent_call, backend, request), level, total))
                        cpu[key] = cpu.get(key, 0.0) + process_cpu_seconds(agent.pid) - cpu_before
            for key, seconds in cpu.items():
                result.figures[f"{key}/cpu_us_per_call"] = seconds / result.series[key].samples * 1e6
            for kind, (_label, data) in kinds.items():
                request = forwarded(data)
                up, down = frame_sizes[kind]
                agent_cpu = partial(_cpu_per_call, agent.pid, partial(_agent_call, backend, request), sizes)
                floor_cpu = partial(_cpu_per_call, peer.pid, partial(floor.call, up, down), sizes)
                agent_us, floor_us = [], []
                for _run in range(sizes.cpu_runs):  # interleaved, as the latency runs are
                    agent_us.append(await agent_cpu())
                    floor_us.append(await floor_cpu())
                result.figures[f"{kind}/cpu/agent_us"] = statistics.median(agent_us)
                result.figures[f"{kind}/cpu/floor_us"] = statistics.median(floor_us)
                result.figures[f"{kind}/cpu/agent_us_low"], result.figures[f"{kind}/cpu/agent_us_high"] = (
                    min(agent_us),
                    max(agent_us),
                )
            result.figures["cpu/calls_per_run"] = sizes.cpu_calls
            result.figures["cpu/runs"] = sizes.cpu_runs
            for kind, (up, down) in frame_sizes.items():
                result.figures[f"{kind}/request_bytes"] = up
                result.figures[f"{kind}/response_bytes"] = down
        finally:
            if floor.ws is not None:
                await floor.ws.aclose()
            peer.terminate()
            await peer.wait()
            nursery.cancel_scope.cancel()
    _targets(result)
    return result


async def _cpu_per_call(pid: int, call: Callable[[], Awaitable[None]], sizes: CallSizes) -> float:
    """µs of CPU the process `pid` and its children spend per call, over sizes.cpu_calls calls."""
    before = tree_cpu_seconds(pid)
    await drive(call, CPU_CONCURRENCY, sizes.cpu_calls)
    return (tree_cpu_seconds(pid) - before) / sizes.cpu_calls * 1e6


def _targets(result: Measurement) -> None:
    agent, floor = result.series["nocmd/agent/10"], result.series["nocmd/floor/10"]
    p50_ratio = agent.p50.median / floor.p50.median
    p99_ratio = agent.p99.median / floor.p99.median
    per_second = result.series["nocmd/agent/100"].per_second.median
    for kind, label in (("nocmd", "no-command call"), ("dryrun", "dry-run grant")):
        figures = result.figures
        result.targets.append(
            Target(
                f"CPU per {label} <= {CPU_TARGET_US[kind] / 1000:g} ms (agent and children, concurrency "
                f"{CPU_CONCURRENCY})",
                figures[f"{kind}/cpu/agent_us"] / 1000,
                CPU_TARGET_US[kind] / 1000,
                "ms",
                note=f"echo floor {figures[f'{kind}/cpu/floor_us'] / 1000:.3f} ms; runs "
                f"{figures[f'{kind}/cpu/agent_us_low'] / 1000:.3f}-"
                f"{figures[f'{kind}/cpu/agent_us_high'] / 1000:.3f} ms"
                + (f"; left: {MISS_CAUSES[kind]}" if figures[f"{kind}/cpu/agent_us"] > CPU_TARGET_US[kind] else ""),
            )
        )
    result.targets += [
        Target(
            "no-command call p50 at concurrency 10 <= 2x the echo floor",
            p50_ratio,
            2.0,
            "x",
            note="" if p50_ratio <= 2.0 else MISS_CAUSES["p50"],
        ),
        Target(
            "no-command call p99 at concurrency 10 <= 3x the echo floor",
            p99_ratio,
            3.0,
            "x",
            note="" if p99_ratio <= 3.0 else MISS_CAUSES["p50"],
        ),
        Target(
            "no-command calls per second at concurrency 100 >= 2,000",
            per_second,
            2000.0,
            "/s",
            higher_is_better=True,
            note="" if per_second >= 2000.0 else MISS_CAUSES["rate"],
        ),
    ]
