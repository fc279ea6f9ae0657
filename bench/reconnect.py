"""Scenario 7: one host reconnecting after its backend went away, measured on the real daemon.

The daemon (`p0-ssh-agent start`, dry run, bench/daemon.py's configuration) connects to the dev backend run as its
own process (`p0-ssh-agent dev-backend`), so the bench can kill, restart and freeze it. Three outages, each `runs`
times against the same daemon:

- restart: the backend gets SIGTERM (the kernel closes the agent's socket, as a crash or a redeploy does) and a new
  one starts at once; counted from the SIGTERM, so the new backend's own start-up (about 0.3 s) is included;
- stop 10 s: killed, started again 10 s later; counted from the new backend's start;
- SIGSTOP 60 s: frozen (the socket stays open but silent, so the agent's 30 s silence rule has to end it; the
  kernel still accepts new TCP connections, whose handshakes wait), then SIGCONT; counted from the SIGCONT.

Time to reconnected: until the daemon's next `STATUS=connected to ...` on its notify socket, after it had left the
connected state during the outage. The bench prints the worst run of each outage against issue 16's 20 s.
"""

from __future__ import annotations

import signal
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.daemon import AGENT, CHILD_PATH, stop_agent, write_config
from bench.stats import Measurement, Target
from p0_ssh_agent.runtime.backoff import RetrySettings

QUICK = 1  # runs of each outage
FULL = 3
STOP_SECONDS = 10.0
FREEZE_SECONDS = 60.0
LIMIT_SECONDS = 20.0  # issue 16: worst of three
CONNECT_WITHIN = 120.0  # a run that has not reconnected by then has failed


@dataclass(frozen=True)
class Case:
    key: str
    text: str


CASES = (
    Case("restart", "backend restarted (SIGTERM, started again at once)"),
    Case("stop10", f"backend stopped {STOP_SECONDS:g} s"),
    Case("sigstop60", f"backend frozen (SIGSTOP) {FREEZE_SECONDS:g} s"),
)


class StatusWatch:
    """Every STATUS= the daemon sends on its notify socket, with the (trio) time it arrived."""

    def __init__(self, notify: trio.socket.SocketType) -> None:
        self._notify = notify
        self.entries: list[tuple[float, str]] = []
        self._changed = trio.Event()

    async def run(self) -> None:
        while True:
            datagram = (await self._notify.recv(65536)).decode()
            for line in datagram.splitlines():
                if line.startswith("STATUS="):
                    self.entries.append((trio.current_time(), line.removeprefix("STATUS=")))
            self._changed.set()
            self._changed = trio.Event()

    def _reconnected_at(self, outage_start: float) -> float | None:
        left = False
        for when, text in self.entries:
            if when < outage_start:
                continue
            if not text.startswith("connected to "):
                left = True
            elif left:
                return when
        return None

    async def reconnected(self, outage_start: float) -> float:
        """When the daemon was next connected, having left the connected state after `outage_start`."""
        while (when := self._reconnected_at(outage_start)) is None:
            await self._changed.wait()
        return when

    def texts_since(self, since: float) -> list[str]:
        return [text for when, text in self.entries if when >= since]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@dataclass
class Backend:
    """The dev backend as a child process on fixed ports, so a new one takes the old one's place."""

    directory: Path
    rpc_port: int
    http_port: int
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.rpc_port}"

    def start(self) -> None:
        argv = [
            str(AGENT),
            "dev-backend",
            "--rpc-listen",
            f"127.0.0.1:{self.rpc_port}",
            "--http-listen",
            f"127.0.0.1:{self.http_port}",
            "--public-key",
            str(self.directory / "keys" / "jwk.public.json"),
        ]
        with (self.directory / "backend.log").open("ab") as log:
            # Its own session, as a real backend is another machine's process: in the bench's process group, a
            # frozen backend is sent SIGHUP by the kernel as soon as any other member of that (orphaned) group exits.
            self.process = subprocess.Popen(
                argv, stdout=log, stderr=log, env={"PATH": CHILD_PATH, "LC_ALL": "C"}, start_new_session=True
            )

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGCONT)  # a frozen process does not act on SIGTERM
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def signal(self, number: signal.Signals) -> None:
        assert self.process is not None
        self.process.send_signal(number)

    async def wait_listening(self) -> None:
        with trio.fail_after(30):
            while True:
                try:
                    stream = await trio.open_tcp_stream("127.0.0.1", self.http_port)
                except OSError:
                    await trio.sleep(0.05)
                    continue
                await stream.aclose()
                return


async def _outage(case: Case, backend: Backend) -> tuple[float, float]:
    """Cause one outage and return (when it started, when the backend was back), in trio time."""
    started = trio.current_time()
    if case.key == "sigstop60":
        backend.signal(signal.SIGSTOP)
        await trio.sleep(FREEZE_SECONDS)
        back = trio.current_time()
        backend.signal(signal.SIGCONT)
        return started, back
    await trio.to_thread.run_sync(backend.kill)
    if case.key == "stop10":
        await trio.sleep(STOP_SECONDS)
    back = started if case.key == "restart" else trio.current_time()
    backend.start()
    return started, back


async def measure_reconnect(directory: Path, runs: int = FULL, cases: tuple[Case, ...] = CASES) -> Measurement:
    """`cases`: a subset for the smoke test (the SIGSTOP case alone takes over a minute)."""
    result = Measurement("reconnect")
    backend = Backend(directory, free_port(), free_port())
    config = write_config(directory, backend.url)
    address = str(directory / "notify.sock")
    notify = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await notify.bind(address)
    watch = StatusWatch(notify)
    reasons: dict[str, list[str]] = {case.key: [] for case in cases}
    agent: subprocess.Popen[bytes] | None = None
    try:
        backend.start()
        await backend.wait_listening()
        agent = await trio.to_thread.run_sync(_spawn_agent, directory, config, address)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(watch.run)
            with trio.fail_after(CONNECT_WITHIN):
                await watch.reconnected(float("-inf"))  # "starting", then the first "connected to"
            for case in cases:
                result.new_series(case.key, case.text)
            for _ in range(runs):
                for case in cases:
                    await trio.sleep(1.0)  # a settled connection before each outage
                    started, back = await _outage(case, backend)
                    with trio.fail_after(CONNECT_WITHIN + FREEZE_SECONDS):
                        connected = await watch.reconnected(started)
                    seconds = max(0.0, connected - back)
                    result.series[case.key].add_sequential([seconds])
                    reasons[case.key] += [t for t in watch.texts_since(started) if t.startswith("retrying in ")]
                    print(f"  {case.text}: reconnected {seconds:.2f} s after the backend was back", flush=True)
            nursery.cancel_scope.cancel()
    finally:
        if agent is not None:
            await trio.to_thread.run_sync(stop_agent, agent)
        await trio.to_thread.run_sync(backend.kill)
        notify.close()
    for case in cases:
        times = [run.slowest for run in result.series[case.key].runs]
        result.figures[f"{case.key}/worst_seconds"] = max(times)
        result.targets.append(
            Target(
                f"one host reconnected within {LIMIT_SECONDS:g} s after the {case.text} (worst of {len(times)})",
                max(times),
                LIMIT_SECONDS,
                "s",
                note="runs: " + ", ".join(f"{t:.2f} s" for t in times),
            )
        )
    result.notes.append(
        f"default reconnectMaxSeconds ({RetrySettings().reconnect_max:g} s); the daemon's waits, from its STATUS: "
        + "; ".join(f"{key}: {', '.join(_waits(texts)) or 'none'}" for key, texts in reasons.items())
    )
    return result


def _spawn_agent(directory: Path, config: Path, notify_address: str) -> subprocess.Popen[bytes]:
    env = {"PATH": CHILD_PATH, "NOTIFY_SOCKET": notify_address, "LC_ALL": "C"}
    with (directory / "agent.log").open("ab") as log:
        return subprocess.Popen([str(AGENT), "start", "--config", str(config)], stdout=log, stderr=log, env=env)


def _waits(texts: list[str]) -> list[str]:
    """'retrying in 7s: Connection refused' -> '7s (Connection refused)'."""
    out = []
    for text in texts:
        wait, _, reason = text.removeprefix("retrying in ").partition(": ")
        out.append(f"{wait} ({reason})")
    return out
