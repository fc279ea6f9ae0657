"""Scenario 2: real grants in the namespace sandbox, with 1 and 50 distinct users in parallel.

The agent's side runs the daemon's own request line in-process: Pipeline(context).handle(command, data)
(provisioning/pipeline.py), that is request validation, then the blocking host change in a trio worker thread (as
the worker does), with the real locks, ledger, useradd and visudo.
The WebSocket in front of it is scenario 1's. Each round:

    provisionUser grant -> provisionAuthorizedKeys grant, revoke -> provisionSudo grant, revoke -> provisionUser
    revoke (userRevokeMode delete, so the next round starts clean)

and, on the same accounts, the Go agent's method for the key and sudo changes (bench/baselines.py). The bare tools
run one at a time. The Go agent's user creation runs with one user only: in parallel it picks the same UID for
every user (§6.1 findNextAvailableUID), so it fails.
"""

from __future__ import annotations

import os
import secrets
import shutil
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from bench import baselines
from bench.sshkeys import public_key_line
from bench.stats import Measurement, Target
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.provisioning.pipeline import Pipeline
from p0_ssh_agent.runtime.statedir import ensure_state_dir

Operation = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class GrantSizes:
    """rounds[n] = how many rounds with n users in parallel."""

    rounds: dict[int, int]
    baseline_repeats: int


QUICK = GrantSizes({1: 5, 50: 1}, baseline_repeats=5)
FULL = GrantSizes({1: 20, 50: 3}, baseline_repeats=20)
TINY = GrantSizes({1: 1, 2: 1}, baseline_repeats=1)


def agent_context(state_dir: Path) -> ExecutionContext:
    config = AgentConfig(org_id="bench", host_id="bench", user_revoke_mode="delete", state_dir=state_dir)
    trail = AuditTrail.from_config(config, os.environ)  # a grant's cost includes its audit entry
    return ExecutionContext(config, ensure_state_dir(state_dir), dry_run=False, audit_trail=trail)


async def agent_call(context: ExecutionContext, command: str, data: dict[str, object]) -> None:
    result = await Pipeline(context).handle(command, data)
    if not result.success:
        raise RuntimeError(f"{command} {data.get('action')} for {data.get('userName')} failed: {result.error}")


async def in_parallel(operations: list[Operation]) -> tuple[list[float], float]:
    """Start every operation at once; each one's latency, and the wall time until the last one ended."""
    latencies: list[float] = []

    async def timed(operation: Operation) -> None:
        started = time.perf_counter()
        await operation()
        latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    async with trio.open_nursery() as nursery:
        for operation in operations:
            nursery.start_soon(timed, operation)
    return latencies, time.perf_counter() - started


def blocking(function: Callable[[], None], limiter: trio.CapacityLimiter) -> Operation:
    """A blocking baseline as an operation, in its own thread (the Go agent runs each call in a goroutine)."""

    async def run() -> None:
        await trio.to_thread.run_sync(function, limiter=limiter)

    return run


def unique_names(count: int) -> list[str]:
    tag = secrets.token_hex(3)
    return [f"pb{tag}{index:03d}" for index in range(count)]


class GrantBench:
    def __init__(self, state_dir: Path, result: Measurement) -> None:
        self.context = agent_context(state_dir)
        self.result = result
        self.keys = [public_key_line(f"bench{index}@p0") for index in range(64)]
        self._single: dict[str, list[float]] = {}

    def record(self, key: str, name: str, measured: tuple[list[float], float]) -> None:
        """A round with several users is one run; one-user rounds are pooled into a single run by finish(), so
        their p99 is taken over every round's sample (a run of one sample has no percentile of its own)."""
        series = self.result.series.get(key) or self.result.new_series(key, name)
        latencies, wall = measured
        if len(latencies) == 1:
            self._single.setdefault(key, []).append(latencies[0])
        else:
            series.add(latencies, wall)

    def finish(self) -> None:
        for key, latencies in self._single.items():
            self.result.series[key].add_sequential(latencies)
        self._single.clear()

    def _ops(
        self, command: str, action: str, users: list[str], extra: Callable[[int], dict[str, object]]
    ) -> list[Operation]:
        return [
            partial(
                agent_call,
                self.context,
                command,
                {"command": command, "userName": user, "action": action, "requestId": f"r{user}", **extra(index)},
            )
            for index, user in enumerate(users)
        ]

    async def agent_round(self, users: list[str]) -> None:
        n = len(users)
        none: Callable[[int], dict[str, object]] = lambda _index: {}  # noqa: E731
        key: Callable[[int], dict[str, object]] = lambda index: {"publicKey": self.keys[index % len(self.keys)]}  # noqa: E731
        sudo: Callable[[int], dict[str, object]] = lambda _index: {"sudo": True}  # noqa: E731
        self.record(
            f"user/grant/{n}",
            "provisionUser grant",
            await in_parallel(self._ops("provisionUser", "grant", users, none)),
        )
        self.record(
            f"keys/grant/{n}",
            "authorized_keys grant",
            await in_parallel(self._ops("provisionAuthorizedKeys", "grant", users, key)),
        )
        self.record(
            f"keys/revoke/{n}",
            "authorized_keys revoke",
            await in_parallel(self._ops("provisionAuthorizedKeys", "revoke", users, none)),
        )
        self.record(
            f"sudo/grant/{n}", "sudo grant", await in_parallel(self._ops("provisionSudo", "grant", users, sudo))
        )
        self.record(
            f"sudo/revoke/{n}", "sudo revoke", await in_parallel(self._ops("provisionSudo", "revoke", users, none))
        )

    async def go_round(self, users: list[str]) -> None:
        """The Go agent's method on the same (existing) accounts, then its files are put back as they were."""
        n = len(users)
        limiter = trio.CapacityLimiter(max(n, 1))
        sudoers_before = await trio.Path(baselines.SUDOERS).read_bytes()
        homes = {user: f"/home/{user}" for user in users}
        grant = [
            blocking(partial(baselines.go_key_grant, u, homes[u], f"g{u}", self.keys[i % len(self.keys)]), limiter)
            for i, u in enumerate(users)
        ]
        self.record(f"go-keys/grant/{n}", "Go method: authorized_keys grant", await in_parallel(grant))
        revoke = [blocking(partial(baselines.go_key_revoke, homes[u], f"g{u}"), limiter) for u in users]
        self.record(f"go-keys/revoke/{n}", "Go method: authorized_keys revoke", await in_parallel(revoke))
        grant = [blocking(partial(baselines.go_sudo_grant, u, f"g{u}"), limiter) for u in users]
        self.record(f"go-sudo/grant/{n}", "Go method: sudo grant", await in_parallel(grant))
        revoke = [blocking(partial(baselines.go_sudo_revoke, f"g{u}"), limiter) for u in users]
        self.record(f"go-sudo/revoke/{n}", "Go method: sudo revoke", await in_parallel(revoke))
        # The agent's sudo revoke also cleans /etc/sudoers-p0 when it exists: later rounds must not pay for that.
        await trio.Path(baselines.LEGACY_SUDOERS).unlink(missing_ok=True)
        await trio.Path(baselines.SUDOERS).write_bytes(sudoers_before)

    async def cleanup_round(self, users: list[str]) -> None:
        n = len(users)
        ops = self._ops("provisionUser", "revoke", users, lambda _index: {})
        self.record(f"user/revoke/{n}", "provisionUser revoke (delete)", await in_parallel(ops))
        left = [user for user in users if accounts.lookup_user(user) is not None]
        if left:
            raise RuntimeError(f"provisionUser revoke (delete) left {len(left)} account(s), e.g. {left[0]}")


async def _timed_blocking(function: Callable[[], None]) -> float:
    started = time.perf_counter()
    await trio.to_thread.run_sync(function)
    return time.perf_counter() - started


async def baseline_rounds(result: Measurement, repeats: int, key_line: str) -> None:
    """The bare tools and the Go agent's user creation, one at a time."""
    series = {
        "bare/useradd": result.new_series("bare/useradd/1", "bare useradd -m -U"),
        "bare/pair": result.new_series("bare/groupadd+useradd/1", "bare groupadd + useradd -m"),
        "bare/visudo": result.new_series("bare/visudo/1", "bare write + visudo -cf + rename"),
        "bare/write": result.new_series("bare/write/1", "bare fsynced write + rename"),
        "go/user": result.new_series("go-user/grant/1", "Go method: groupadd + useradd via sudo"),
    }
    scratch = Path("/home/p0-bench-scratch")
    await trio.Path(scratch).mkdir(mode=0o700, exist_ok=True)
    content = f"# RequestID: bench\n{key_line}\n".encode()
    dropin = "# RequestID: bench\nbenchuser ALL=(ALL) NOPASSWD: ALL\n"
    uid = 89000
    times: dict[str, list[float]] = {key: [] for key in series}
    try:
        for _ in range(repeats):
            name, pair, go = unique_names(3)
            for key, function in (
                ("bare/useradd", partial(baselines.bare_useradd, name)),
                ("bare/pair", partial(baselines.bare_groupadd_useradd, pair, uid)),
                ("go/user", partial(baselines.go_useradd, go, uid + 1)),
            ):
                times[key].append(await _timed_blocking(function))
            for user in (name, pair, go):
                await trio.to_thread.run_sync(baselines.userdel, user)
            times["bare/visudo"].append(await _timed_blocking(partial(baselines.bare_visudo_write, dropin)))
            times["bare/write"].append(
                await _timed_blocking(partial(baselines.fsynced_replace, scratch, "authorized_keys", content))
            )
        for key, measured in times.items():
            series[key].add_sequential(measured)
    finally:
        await trio.Path("/etc/sudoers.d/p0-bench").unlink(missing_ok=True)
        await trio.to_thread.run_sync(partial(shutil.rmtree, scratch, ignore_errors=True))


async def measure_grants(state_dir: Path, sizes: GrantSizes = QUICK) -> Measurement:
    result = Measurement("grants")
    bench = GrantBench(state_dir, result)
    await baseline_rounds(result, sizes.baseline_repeats, bench.keys[0])
    for users_count, rounds in sizes.rounds.items():
        for _ in range(rounds):
            users = unique_names(users_count)
            await bench.agent_round(users)
            await bench.go_round(users)
            await bench.cleanup_round(users)
    bench.finish()
    _targets(result, max(sizes.rounds))
    return result


def _targets(result: Measurement, most: int) -> None:
    s = result.series
    key_grant = s[f"keys/grant/{most}"]
    go_ratio = s[f"go-keys/grant/{most}"].p50.median / key_grant.p50.median
    result.figures["go_keys_ratio_1"] = s["go-keys/grant/1"].p50.median / s["keys/grant/1"].p50.median
    result.targets += [
        Target(
            f"authorized_keys grant p99 with {most} users in parallel <= 75 ms", key_grant.p99.median * 1000, 75.0, "ms"
        ),
        Target(
            f"authorized_keys grants per second with {most} users in parallel >= 700",
            key_grant.per_second.median,
            700.0,
            "/s",
            higher_is_better=True,
        ),
        Target(
            f"authorized_keys grant >= 10x faster than the Go agent's method (p50, {most} users in parallel)",
            go_ratio,
            10.0,
            "x",
            higher_is_better=True,
        ),
        Target(
            "provisionUser <= 1.1x the bare useradd time (p50, one user)",
            s["user/grant/1"].p50.median / s["bare/useradd/1"].p50.median,
            1.1,
            "x",
            note=f"{s['user/grant/1'].p50.median / s['bare/groupadd+useradd/1'].p50.median:.2f}x the bare groupadd + "
            "useradd pair the agent runs",
        ),
        Target(
            "sudo grant <= 1.2x the bare visudo -cf + write time (p50, one user)",
            s["sudo/grant/1"].p50.median / s["bare/visudo/1"].p50.median,
            1.2,
            "x",
        ),
    ]
