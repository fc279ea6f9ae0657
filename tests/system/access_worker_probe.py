"""confine.run_worker in systemd mode, inside a booted Debian (tests/system/access-worker.sh runs it as root in the
nspawn container, with this worktree and its venv bound in read-only). Prints PASS/FAIL lines and a summary.

    python -I access_worker_probe.py ACCOUNT PREFIX OUTSIDE
"""

from __future__ import annotations

import base64
import os
import pwd
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import trio

import p0_ssh_agent
from p0_ssh_agent.agent_access import confine
from p0_ssh_agent.agent_access.access_model import MAX_STREAM_BYTES, TargetAccount, WorkerJob, WorkerReply
from p0_ssh_agent.agent_access.confine import WorkerLimits, choose_mode, run_worker
from p0_ssh_agent.host.sessions import user_processes


def worker_visible_to_the_unit() -> None:
    """The unit's PrivateTmp=yes hides a checkout under /tmp (a clean clone in /tmp, say) from the worker, which
    would then fail to start (status 203). The package's interpreter never lives there; for a checkout that does,
    the container's own python3.11 runs the worker from a copy of the agent in its dist-packages (the container is
    volatile: the copy goes with it). The worker imports only the standard library and agent_access's modules."""
    package = Path(p0_ssh_agent.__file__).resolve().parent
    if not any(package.is_relative_to(tmp) for tmp in (Path("/tmp"), Path("/var/tmp"))):
        return
    target = Path("/usr/local/lib/python3.11/dist-packages/p0_ssh_agent")
    shutil.copytree(package, target, dirs_exist_ok=True, ignore=shutil.ignore_patterns("__pycache__"))
    confine.WORKER_INTERPRETER = "/usr/bin/python3.11"
    print(f"note: the checkout is under /tmp ({package}); the worker runs from {target}", flush=True)


BOMB = "import os\nwhile True:\n    try:\n        os.fork()\n    except OSError:\n        pass\n"
LIMITS = WorkerLimits(tasks=16, memory_bytes=256 * 1024 * 1024, seconds=20)


class Probe:
    def __init__(self, name: str, prefix: str, outside: str) -> None:
        entry = pwd.getpwnam(name)
        uid, gid = entry.pw_uid, entry.pw_gid
        self.account = TargetAccount(name, uid, gid, entry.pw_dir, entry.pw_shell, (name,), locked=False, system=False)
        self.prefix, self.outside = prefix, outside
        self.passed = self.failed = 0

    def check(self, name: str, condition: bool, detail: object = "") -> None:
        if condition:
            self.passed += 1
        else:
            self.failed += 1
        print(f"{'PASS' if condition else 'FAIL'} {name}" + ("" if condition else f": {detail}"), flush=True)

    async def op(self, op: str, *names: str, **fields: Any) -> WorkerReply:
        paths = tuple(f"{self.prefix}/{name}" for name in names) or (self.prefix,)
        job = WorkerJob(op=op, prefix=self.prefix, paths=() if op == "ssh_exec" else paths, **fields)
        return await run_worker(job, self.account, mode="systemd", limits=LIMITS)

    async def exec(self, *argv: str, seconds: int = 20) -> dict[str, Any]:
        reply = await self.op("ssh_exec", argv=argv, timeout_seconds=seconds)
        if not reply.ok:
            return {"error": reply.message, "stdout": b"", "stderr": b""}
        result = dict(reply.result)
        for stream in ("stdout", "stderr"):
            result[stream] = base64.b64decode(str(result[stream]))
        return result


def exists(path: str) -> bool:
    return os.path.lexists(path)


def owner(path: str) -> int:
    return os.stat(path).st_uid  # noqa: PTH116


async def files(probe: Probe) -> None:
    started = time.monotonic()
    created = await probe.op("ssh_file_create", "a.txt", data_b64=base64.b64encode(b"hi\n").decode())
    print(f"INFO one systemd-mode operation took {(time.monotonic() - started) * 1000:.0f} ms", flush=True)
    probe.check("create as the account", created.ok and owner(f"{probe.prefix}/a.txt") == probe.account.uid, created)
    read = await probe.op("ssh_file_read", "a.txt")
    probe.check("read", read.ok and base64.b64decode(str(read.result.get("data"))) == b"hi\n", read)
    listing = await probe.op("ssh_dir_list")
    names = [entry["name"] for entry in listing.result.get("entries", [])]  # type: ignore[attr-defined]
    probe.check("list", names == ["a.txt"], listing)


async def confinement(probe: Probe) -> None:
    script = f"id -u; touch inside; touch /tmp/t && echo tmp-ok; echo x > {probe.outside}/planted; echo $?"
    ran = await probe.exec("/bin/sh", "-c", script)
    lines = ran["stdout"].decode().split()
    probe.check("exec runs as the account", lines[:1] == [str(probe.account.uid)], ran)
    probe.check("exec writes inside the prefix", exists(f"{probe.prefix}/inside"), ran)
    probe.check("exec cannot write outside the prefix (ProtectSystem=strict)", not exists(f"{probe.outside}/planted"))
    probe.check("exec has a private /tmp", "tmp-ok" in lines and not exists("/tmp/t"), ran)
    sudo = await probe.exec("/usr/bin/sudo", "-n", "/usr/bin/id", "-u")
    not_root = sudo.get("exitCode") != 0 and sudo["stdout"] != b"0\n"
    probe.check("no new privileges through a NOPASSWD sudo grant", not_root, sudo)
    flood = await probe.exec("/usr/bin/yes")
    probe.check("output flood truncated", flood.get("truncated") is True and len(flood["stdout"]) == MAX_STREAM_BYTES)


async def processes(probe: Probe) -> None:
    peak, done = 0, dict[str, Any]()

    async def watch() -> None:
        nonlocal peak
        while not done:
            peak = max(peak, len(user_processes(probe.account.uid)))
            await trio.sleep(0.02)

    async def bomb() -> None:
        done.update(await probe.exec("/usr/bin/python3.11", "-c", BOMB, seconds=3))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(watch)
        nursery.start_soon(bomb)
    # TasksMax=, and RLIMIT_NPROC where the pids controller is missing (as in this container): `tasks` more than
    # the account ran before, the worker itself being one of those.
    probe.check("fork bomb bounded (TasksMax, RLIMIT_NPROC)", 3 < peak <= LIMITS.tasks + 1, peak)
    probe.check("fork bomb ended by the timeout", done.get("timedOut") is True, done)
    started = time.monotonic()
    timed = await probe.exec("/bin/sh", "-c", "setsid sleep 300 & setsid -f sleep 301; sleep 302", seconds=2)
    took = time.monotonic() - started
    probe.check("a command with setsid children killed at its timeout", timed.get("timedOut") is True and took < 6)
    detached = await probe.exec("/bin/sh", "-c", "setsid -f sleep 300 </dev/null >/dev/null 2>&1; echo detached")
    probe.check("a daemonising command is answered at once", detached["stdout"] == b"detached\n", detached)
    for _ in range(100):
        if not user_processes(probe.account.uid):
            break
        await trio.sleep(0.05)
    left = user_processes(probe.account.uid)
    probe.check("nothing of the account survives (KillMode=control-group)", left == [], left)
    units = await trio.run_process(
        ["/usr/bin/systemctl", "list-units", "--all", "--no-legend", "p0-agent-access-*"], capture_stdout=True
    )
    probe.check("no transient unit left behind (--collect)", units.stdout.strip() == b"", units.stdout)


async def main(name: str, prefix: str, outside: str) -> None:
    probe = Probe(name, prefix, outside)
    probe.check("auto chooses systemd", choose_mode("auto") == "systemd", choose_mode("auto"))
    await files(probe)
    await confinement(probe)
    await processes(probe)
    print(f"{probe.passed} passed, {probe.failed} failed", flush=True)


if __name__ == "__main__":
    worker_visible_to_the_unit()
    trio.run(main, sys.argv[1], sys.argv[2], sys.argv[3])
