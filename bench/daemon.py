"""The real daemon for the call and footprint scenarios: `p0-ssh-agent start` as a child process, with a
systemd-style notify socket and the in-process dev backend on loopback.

The agent runs with `dryRun: true` (the brief: provisioning is benchmarked for real in the sandbox scenarios, the
tunnel here), its own fresh key, and a state directory in a temporary directory. Its log goes to a file, as it would
go to journald: logging is part of what a call costs.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import trio

from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.identity.signing_key import generate_keys, load_public_jwk_file

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
ORG, HOST = "bench-org", "bench-host"
CLIENT_ID = f"{ORG}:{HOST}:ssh"
CHILD_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
STOP_SECONDS = 15.0


def forwarded(data: object) -> dict[str, object]:
    """A ForwardedRequest as braekhus builds it from `POST /client/<id>` with a JSON body."""
    return {"path": "", "headers": {"content-type": "application/json"}, "method": "POST", "params": {}, "data": data}


@dataclass
class RunningAgent:
    process: subprocess.Popen[bytes]
    ready_seconds: float  # from spawning the process to the READY=1 datagram

    @property
    def pid(self) -> int:
        return self.process.pid

    def rss_bytes(self) -> int:
        """Resident set size now (VmRSS), in bytes."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
        raise RuntimeError(f"no VmRSS for pid {self.pid}")

    def anonymous_bytes(self) -> int:
        """Anonymous memory now (the Anonymous: line of /proc/PID/smaps_rollup: heap, stacks, Python objects), in
        bytes: the part of RSS that is this process's own, not pages of shared libraries or files."""
        return smaps_rollup_bytes(self.pid, "Anonymous")

    def open_fds(self) -> int:
        return sum(1 for _ in Path(f"/proc/{self.pid}/fd").iterdir())


def smaps_rollup_bytes(pid: int, field: str) -> int:
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
        if line.startswith(f"{field}:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no {field} in /proc/{pid}/smaps_rollup")


def write_config(directory: Path, rpc_url: str, extra: Mapping[str, object] | None = None) -> Path:
    """The bench's agent configuration; `extra` adds or replaces keys (values written as JSON, which YAML reads)."""
    keys = directory / "keys"
    generate_keys(keys)
    settings: dict[str, object] = {
        "orgId": ORG,
        "hostId": HOST,
        "tunnelHost": rpc_url,
        "keyPath": str(keys),
        "stateDir": str(directory / "state"),
        "runtimeDir": str(directory / "run"),
        "dryRun": True,
        "heartbeatIntervalSeconds": 60,
        **(extra or {}),
    }
    config = directory / "config.yaml"
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in settings.items()))
    return config


async def _wait_ready(notify: trio.socket.SocketType, process: subprocess.Popen[bytes]) -> None:
    while True:
        with trio.move_on_after(0.5):
            message = (await notify.recv(4096)).decode()
            if "READY=1" in message.splitlines():
                return
        if process.poll() is not None:
            raise RuntimeError(f"the agent exited with {process.returncode} before READY=1")


async def spawn_agent(
    directory: Path, config: Path, *, argv_prefix: list[str] | None = None, log_name: str = "agent.log"
) -> RunningAgent:
    """Start the daemon and wait for READY=1 on a fresh notify socket; the time includes interpreter start-up."""
    address = str(directory / f"notify-{time.monotonic_ns()}.sock")
    notify = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_DGRAM)
    await notify.bind(address)
    env = {"PATH": CHILD_PATH, "NOTIFY_SOCKET": address, "LC_ALL": "C"}
    argv = [*(argv_prefix or [str(AGENT)]), "start", "--config", str(config)]
    try:
        started = time.perf_counter()
        process = await trio.to_thread.run_sync(_popen, argv, directory / log_name, env)
        try:
            with trio.fail_after(60):
                await _wait_ready(notify, process)
        except BaseException:
            stop_agent(process)
            raise
        return RunningAgent(process, time.perf_counter() - started)
    finally:
        notify.close()
        await trio.Path(address).unlink(missing_ok=True)


def _popen(argv: list[str], log_path: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log_path.open("ab") as log:
        return subprocess.Popen(argv, stdout=log, stderr=log, env=env)


def stop_agent(process: subprocess.Popen[bytes]) -> int:
    """SIGTERM, then SIGKILL if it does not stop in time; returns the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            return process.wait(STOP_SECONDS)
        except subprocess.TimeoutExpired:
            process.kill()
    return process.wait()


@asynccontextmanager
async def agent_and_backend(
    directory: Path,
    *,
    profile_to: Path | None = None,
    argv_prefix: list[str] | None = None,
    extra_config: Mapping[str, object] | None = None,
) -> AsyncIterator[tuple[DevBackend, RunningAgent]]:
    """A dev backend serving on loopback and a daemon connected to it (setClientId done).

    argv_prefix: how to start `p0-ssh-agent` (default: the venv's console script), as for spawn_agent.
    extra_config: configuration keys added to (or replacing) write_config's.

    profile_to: run the daemon under cProfile and write its statistics there when it stops (SIGTERM ends the
    daemon normally, so cProfile gets to write them).
    """
    backend = DevBackend(ping_interval=30.0, call_timeout_ms=30_000)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        config = write_config(directory, backend.rpc_url, extra_config)
        backend.register_client(CLIENT_ID, load_public_jwk_file(directory / "keys" / "jwk.public.json"))
        prefix = argv_prefix
        if profile_to:
            prefix = [sys.executable, "-m", "cProfile", "-o", str(profile_to), "-m", "p0_ssh_agent"]
        agent = await spawn_agent(directory, config, argv_prefix=prefix)
        try:
            with trio.fail_after(60):
                await backend.wait_registered(CLIENT_ID)
            yield backend, agent
        finally:
            await trio.to_thread.run_sync(stop_agent, agent.process)
            nursery.cancel_scope.cancel()
