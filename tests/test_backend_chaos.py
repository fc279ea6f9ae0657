"""Backend chaos: the agent stays up, reconnects within its liveness window, and answers correctly afterwards.

A real agent process (dry-run) against the in-process dev backend, which misbehaves in one way per scenario:
garbage and binary frames; an oversized frame; a connection dropped right after a call; setClientId never
answered; a half-written frame; setClientId answered slowly; a backend that stops reading (half-open); a backend
that restarts again and again on the same ports. After each, a call must be answered correctly, the agent must
still run with its memory bounded, and its log must hold no traceback.

Each scenario is its own test on its own agent, so a failure names the scenario and one scenario's waits do not
hold up the others; one more test runs every scenario in turn on one agent, for the memory bound over the whole
run (and the figures docs/reliability.md shows). Real time: the liveness window is the agent's heartbeat timeout
and reconnect backoff, which these agents shorten through their configuration (heartbeatTimeoutSeconds,
reconnectMaxSeconds; docs/connection.md), so the scenarios take seconds, not minutes. The slow-backend scenario
alone keeps the default 10 s heartbeat timeout: a 4 s answer must fall inside the real one.
"""

from __future__ import annotations

import subprocess
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
import trio.lowlevel

from daemon_helpers import start_agent
from p0_ssh_agent.devbackend.server import CallFailed, DevBackend
from p0_ssh_agent.identity.signing_key import generate_keys, load_public_jwk_file
from reliability.figures import record

pytestmark = pytest.mark.slow  # a real agent process, waited on in wall-clock time

ORG, HOST = "chaos-org", "host-1"
CLIENT_ID = f"{ORG}:{HOST}:ssh"
GRANT: dict[str, object] = {"command": "provisionUser", "userName": "chaos", "action": "grant", "requestId": "chaos-1"}
HEARTBEAT_INTERVAL = 2  # heartbeatIntervalSeconds of every agent here
SHORT_HEARTBEAT_TIMEOUT = 3  # heartbeatTimeoutSeconds, where a scenario does not need the default
DEFAULT_HEARTBEAT_TIMEOUT = 10  # the agent's own default (config/model.py)
RSS_GROWTH_LIMIT_KIB = 16 * 1024


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _forwarded(data: dict[str, object]) -> dict[str, object]:
    return {"path": "", "headers": {}, "method": "POST", "params": {}, "data": data}


async def answered(backend: DevBackend, within: float) -> dict[str, object]:
    """A dry-run grant, retried while the agent is (re)connecting, must come back right within `within` s."""
    with trio.fail_after(within):
        while True:
            try:
                # A dry-run answer takes milliseconds; a call that went to a connection the agent has abandoned
                # (a dropped or half-open one) is retried after 2 s rather than 5.
                result = await backend.call(CLIENT_ID, _forwarded(GRANT), timeout_ms=2000)
            except CallFailed:
                await trio.sleep(0.2)
                continue
            assert isinstance(result, dict)
            data = result["data"]
            assert isinstance(data, dict) and data["success"] is True, data
            assert str(data["message"]).startswith("DRY-RUN"), data
            return data


# --- the rig: one agent process, a dev backend that can be restarted on the same ports --------------------------


async def _serve(backend: DevBackend, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
    with scope:
        await backend.serve(task_status=task_status)


@dataclass
class Rig:
    backend: DevBackend
    agent: subprocess.Popen[bytes]
    heartbeat_timeout: float
    jwk: dict[str, str]
    nursery: trio.Nursery
    serving: trio.CancelScope

    async def restart_backend(self) -> None:
        """Stop the backend and start a fresh one on the same ports: the agent's connection is gone."""
        rpc_port, http_port = self.backend.rpc_port, self.backend.http_port
        self.serving.cancel()
        await trio.sleep(0.5)
        self.backend, self.serving = _fresh_backend(self.jwk, rpc_port, http_port), trio.CancelScope()
        await self.nursery.start(_serve, self.backend, self.serving)


def _fresh_backend(jwk: dict[str, str], rpc_port: int = 0, http_port: int = 0) -> DevBackend:
    backend = DevBackend(rpc_port=rpc_port, http_port=http_port, call_timeout_ms=10_000)
    backend.register_client(CLIENT_ID, jwk)
    return backend


@asynccontextmanager
async def chaos_rig(tmp_path: Path, heartbeat_timeout: int) -> AsyncIterator[Rig]:
    """An agent connected and answering; at the end it is stopped and its log must hold no traceback."""
    keys = tmp_path / "keys"
    generate_keys(keys)
    jwk = load_public_jwk_file(keys / "jwk.public.json")
    log_path = tmp_path / "agent.log"
    backend = _fresh_backend(jwk)
    async with trio.open_nursery() as outer:
        serving = trio.CancelScope()
        await outer.start(_serve, backend, serving)
        config = tmp_path / "config.yaml"
        config.write_text(
            f"orgId: {ORG}\nhostId: {HOST}\ntunnelHost: {backend.rpc_url}\nkeyPath: {keys}\n"
            f"stateDir: {tmp_path / 'state'}\nruntimeDir: {tmp_path / 'run'}\n"
            f"dryRun: true\nheartbeatIntervalSeconds: {HEARTBEAT_INTERVAL}\n"
            f"heartbeatTimeoutSeconds: {heartbeat_timeout}\nreconnectMaxSeconds: 1\n"
        )
        agent = start_agent(config, log_path)
        try:
            await answered(backend, within=30)
            yield Rig(backend, agent, float(heartbeat_timeout), jwk, outer, serving)
        finally:
            # Waited for in a thread, so the backend in this loop still answers the agent's closing handshake.
            agent.terminate()
            await trio.to_thread.run_sync(agent.wait, 15)
        outer.cancel_scope.cancel()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]


# --- the scenarios ------------------------------------------------------------------------------------------------


async def bad_frames(rig: Rig) -> None:
    """Garbage, binary and invalid-params frames: refused or ignored; the agent keeps (or regains) the connection."""
    for frame in ("{not json", b"\x00\x01binary", '{"jsonrpc":"2.0","id":1,"method":"call","params":7}'):
        await rig.backend.send_raw(CLIENT_ID, frame)
    await answered(rig.backend, within=40)


async def oversized_frame(rig: Rig) -> None:
    """The agent refuses it (1009) and must hang up that TCP connection: trio-websocket leaves the stream open
    after a 1009, and a backend still writing the frame into the abandoned socket blocked for ever."""
    oversized = '{"jsonrpc":"2.0","method":"call","params":"' + "x" * (2 << 20) + '"}'
    with trio.fail_after(30):
        await rig.backend.send_raw(CLIENT_ID, oversized)
    await answered(rig.backend, within=40)
    with trio.fail_after(30):
        while len(rig.backend.channels) > 1:  # the old connection ended on the backend's side too
            await trio.sleep(0.1)


async def dropped_after_a_call(rig: Rig) -> None:
    """The connection drops right after a call went out: the call fails, the agent comes back, a retry works."""
    async with trio.open_nursery() as racing:
        racing.start_soon(answered, rig.backend, 40)
        await trio.lowlevel.checkpoint()
        await rig.backend.drop(CLIENT_ID)


async def set_client_id_never_answered(rig: Rig) -> None:
    """The agent gives up on each such connection after its heartbeat timeout and tries again."""
    backend = rig.backend
    heard_before = len(backend.set_client_id_log)
    backend.hooks.answer_set_client_id = False
    await backend.drop(CLIENT_ID)
    for _ in range(80):  # 40 s: the first try, then at least two retries
        if len(backend.set_client_id_log) >= heard_before + 3:
            break
        await trio.sleep(0.5)
    else:
        raise AssertionError(f"setClientId retries: {backend.set_client_id_log[heard_before:]}")
    backend.hooks.answer_set_client_id = True
    await answered(backend, within=40)


async def half_written_frame(rig: Rig) -> None:
    """The agent's parser is left mid-frame and what follows is garbage to it; the agent drops that connection
    (protocol error or unanswered heartbeat) and comes back."""
    handshakes = len(rig.backend.handshakes)
    await rig.backend.send_half_frame(CLIENT_ID)
    await answered(rig.backend, within=40)
    assert len(rig.backend.handshakes) > handshakes, "the agent kept a connection with a torn frame on it"


async def slow_set_client_id(rig: Rig) -> None:
    """setClientId answered after 40% of the agent's heartbeat timeout (4 s of the default 10 s), inside it: the
    agent keeps the connection (no reconnect) through three heartbeat intervals, and calls are answered."""
    handshakes = len(rig.backend.handshakes)
    rig.backend.hooks.set_client_id_delay = 0.4 * rig.heartbeat_timeout
    await trio.sleep(3 * HEARTBEAT_INTERVAL)
    await answered(rig.backend, within=20)
    rig.backend.hooks.set_client_id_delay = 0.0
    assert len(rig.backend.handshakes) == handshakes, "a slow but answering backend was abandoned"


async def half_open(rig: Rig) -> None:
    """The backend stops reading: the heartbeat goes unanswered and the agent reconnects."""
    handshakes = len(rig.backend.handshakes)
    rig.backend.pause_reading()
    await trio.sleep(HEARTBEAT_INTERVAL + rig.heartbeat_timeout + 3)  # a heartbeat's wait and its timeout, and more
    rig.backend.resume_reading()
    await answered(rig.backend, within=40)
    assert len(rig.backend.handshakes) > handshakes, "the agent never noticed the backend stopped reading"


async def restarts(rig: Rig) -> None:
    """The backend restarts, again and again, on the same ports."""
    for _ in range(3):
        await rig.restart_backend()
        await answered(rig.backend, within=45)


@dataclass(frozen=True)
class Scenario:
    run: Callable[[Rig], Awaitable[None]]
    heartbeat_timeout: int = SHORT_HEARTBEAT_TIMEOUT

    @property
    def name(self) -> str:
        return self.run.__name__


SCENARIOS = (
    Scenario(bad_frames),
    Scenario(oversized_frame),
    Scenario(dropped_after_a_call),
    Scenario(set_client_id_never_answered),
    Scenario(half_written_frame),
    Scenario(slow_set_client_id, heartbeat_timeout=DEFAULT_HEARTBEAT_TIMEOUT),
    Scenario(half_open),
    Scenario(restarts),
)


async def survive(rig: Rig, scenarios: tuple[Scenario, ...]) -> tuple[int, int]:
    """Run the scenarios in turn; the agent must still run and its RSS stay within the bound. (start, end) KiB."""
    rss_start = _rss_kib(rig.agent.pid)
    for scenario in scenarios:
        await scenario.run(rig)
        assert rig.agent.poll() is None, f"the agent exited during {scenario.name}"
    rss_end = _rss_kib(rig.agent.pid)
    assert rss_end <= rss_start + RSS_GROWTH_LIMIT_KIB, f"RSS grew from {rss_start} to {rss_end} KiB"
    return rss_start, rss_end


@pytest.mark.parametrize("scenario", SCENARIOS, ids=[scenario.name for scenario in SCENARIOS])
async def test_agent_survives(tmp_path: Path, scenario: Scenario) -> None:
    async with chaos_rig(tmp_path, scenario.heartbeat_timeout) as rig:
        await survive(rig, (scenario,))


async def test_every_scenario_in_turn_on_one_agent_keeps_memory_bounded(tmp_path: Path) -> None:
    """All of them on one agent: what one scenario leaves behind must not break the next, nor add up in memory. The
    slow-backend scenario answers within 40% of this agent's (short) timeout, so it holds here too."""
    async with chaos_rig(tmp_path, SHORT_HEARTBEAT_TIMEOUT) as rig:
        rss_start, rss_end = await survive(rig, SCENARIOS)
    print(f"\nCHAOS rss_start_kib={rss_start} rss_end_kib={rss_end} restarts=3")
    record(chaos_scenarios=len(SCENARIOS), chaos_rss_start_kib=rss_start, chaos_rss_end_kib=rss_end)
