"""Start time, idle RSS and CPU per call of the agent on two interpreters: the one a package ships against the
development venv (Debian's python3.11, which is what the 0.1.0 package ran on).

    .venv/bin/python -m bench.runtime_compare [--runtime DIR]

DIR is a staged package root (build/stage after `make package`): its /usr/lib/p0-ssh-agent/python runs the
launcher /usr/bin/p0-ssh-agent in isolated mode, as the installed package does. Measured for docs/install.md's
choice of build options; not part of `make bench` (it needs a built package).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

import trio

from bench.calls import NO_COMMAND, _agent_call, drive, dry_run_grant
from bench.daemon import CLIENT_ID, forwarded, spawn_agent, stop_agent, write_config
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.identity.signing_key import load_public_jwk_file

MIB = 1024 * 1024
VENV_AGENT = [str(Path(sys.executable).parent / "p0-ssh-agent")]
CALLS = 2_000


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / 100.0  # utime + stime, in clock ticks of 1/100 s


def version_seconds(argv: list[str], runs: int = 15) -> float:
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([*argv, "--version"], check=True, capture_output=True, env={"PATH": "/usr/bin:/bin"})
        times.append(time.perf_counter() - started)
    return statistics.median(times)


async def daemon_figures(argv: list[str]) -> dict[str, float]:
    with tempfile.TemporaryDirectory() as workdir:
        directory = Path(workdir)
        backend = DevBackend(ping_interval=30.0, call_timeout_ms=30_000)
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            config = write_config(directory, backend.rpc_url)
            backend.register_client(CLIENT_ID, load_public_jwk_file(directory / "keys" / "jwk.public.json"))
            agent = await spawn_agent(directory, config, argv_prefix=argv)
            try:
                await backend.wait_registered(CLIENT_ID)
                await trio.sleep(2.0)
                idle = agent.rss_bytes() / MIB
                before = cpu_seconds(agent.pid)
                await drive(partial(_agent_call, backend, forwarded(NO_COMMAND)), 10, CALLS // 2)
                await drive(partial(_agent_call, backend, forwarded(dry_run_grant())), 10, CALLS // 2)
                per_call = (cpu_seconds(agent.pid) - before) / CALLS
            finally:
                await trio.to_thread.run_sync(stop_agent, agent.process)
                nursery.cancel_scope.cancel()
        return {"ready_s": agent.ready_seconds, "idle_rss_mib": idle, "cpu_per_call_ms": per_call * 1000}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runtime", type=Path, default=Path("build/stage"))
    args = parser.parse_args()
    stage = args.runtime.resolve()
    python = next((stage / "usr/lib/p0-ssh-agent/python/bin").glob("python3.*"))
    bundled = [str(python), "-IB", str(stage / "usr/bin/p0-ssh-agent")]
    for name, argv in (("venv (python3.11)", VENV_AGENT), (f"bundled ({python.name})", bundled)):
        figures = {"version_s": version_seconds(argv), **trio.run(daemon_figures, argv)}
        print(name, " ".join(f"{key}={value:.3f}" for key, value in figures.items()), flush=True)


if __name__ == "__main__":
    main()
