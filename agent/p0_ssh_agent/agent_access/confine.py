"""Run one WorkerJob as the target account, in its own confinement, and read the worker's reply as hostile input.

The worker (worker_main.py) is started afresh for each operation, outside the agent's own unit (whose
ProtectSystem=strict, UMask=0077, MemoryDenyWriteExecute= and TasksMax= are the agent's, not the account's):

systemd mode (systemd is PID 1; choose_mode): a transient service through `systemd-run --pipe --wait`, as
User=<account>, with these properties (each line says why):
    NoNewPrivileges=yes         the account may hold a P0 NOPASSWD sudo grant: no setuid program raises it again
    ProtectSystem=strict        the whole file system read-only for the operation...
    ReadWritePaths=-<prefix>    ...but the capability's prefix ('-': a missing prefix is the worker's not_found)
    PrivateTmp=yes              exec gets a /tmp of its own: nothing is left in, or read from, the host's /tmp
    PrivateDevices=yes          no device nodes (and DevicePolicy=closed: a device node inside the prefix is inert)
    TasksMax= MemoryMax=        the process count and memory of the whole unit (a fork bomb stops at TasksMax);
                                the worker sets RLIMIT_NPROC too, for a host whose cgroups do not enforce
                                TasksMax (an nspawn container on a cgroup v1 host has no pids controller)
    RuntimeMaxSec=              the unit ends at its time limit, whatever the worker does
    KillMode=control-group      when the worker exits, everything left in the unit is killed: `setsid` and
    KillSignal=SIGKILL          double forks do not escape a cgroup, and there is nothing to stop gracefully
    LimitCORE=0 UMask=0022      no core dumps of the job's data; files the account creates are 0644/0755
    CapabilityBoundingSet=      no capability, even through a file capability
    RestrictSUIDSGID=yes        exec cannot make setuid/setgid files
    LockPersonality=yes         no personality(2) changes (READ_IMPLIES_EXEC and the like)
    ProtectKernelTunables= ProtectKernelModules= ProtectKernelLogs= ProtectControlGroups= ProtectClock=
    ProtectHostname=            the kernel's knobs read-only or out of reach (an account cannot change them
                                anyway; these keep it so if a kernel bug says otherwise)
    ProtectProc=invisible       /proc shows the unit's own processes only: no other account's command lines
    RestrictNamespaces=yes      no user/mount namespaces, through which a process could remount what it sees
    RestrictRealtime=yes        no realtime scheduling to starve the host
    SystemCallArchitectures=native  no 32-bit syscall ABI next to the native one
Left out on purpose: RemoveIPC= (it would remove the account's own services' IPC objects when the unit ends),
MemoryDenyWriteExecute= (JITs such as node or java could not run), PrivateNetwork=/IPAddressDeny= (exec of a
deploy step may need the network), ProtectHome= (ProtectSystem=strict already makes homes read-only).
On the agent's deadline (the worker's seconds plus DEADLINE_GRACE) `systemctl kill --signal=SIGKILL <unit>`, and
systemd-run is killed too.

namespace mode (no systemd as PID 1: containers, the test sandbox): the worker starts as root with --drop-to,
--pid-namespace and limits, becomes PID 1 of a new PID namespace as the account (worker_main.py's docstring).
On the deadline the root parent is killed; PR_SET_PDEATHSIG takes the namespace and all in it down.
What namespace mode does NOT confine, versus systemd mode:
- the file system: exec can write wherever the account itself can (its home, /tmp, /var/tmp, other directories
  it owns); ProtectSystem=strict with ReadWritePaths= is what confines exec to the prefix. (File operations stay
  beneath the prefix in both modes: that is their descriptor walk, not the confinement.)
- memory as a whole: RLIMIT_AS bounds each process, not their sum, and stops programs that reserve large address
  ranges (JVMs, Go binaries) below --memory;
- the process count exactly: RLIMIT_NPROC counts all of the account's processes, so the worker allows --tasks
  more than the account already runs;
- devices, /tmp and /proc (the host's), namespaces, realtime scheduling, personality.
What it does confine: the account's own rights and no more (no new privileges, no capabilities), the process tree
(nothing survives the operation), time, output, open files, core dumps.

Both: an empty environment but PATH, close_fds, the job's JSON on stdin; stdout read up to MAX_REPLY_BYTES (two
base64'd exec streams and room to spare: more is "the worker's reply was too large"), stderr up to
MAX_STDERR_BYTES (logged, truncated, never returned). The reply is parsed as hostile (parse_reply). A worker that
dies, times out or answers garbage is WorkerReply(ok=False, error_kind="failed", message=...).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.agent_access.access_model import (
    MAX_EXEC_SECONDS,
    MAX_STREAM_BYTES,
    WORKER_ERROR_KINDS,
    AccessCommand,
    RefusalKind,
    TargetAccount,
    WorkerJob,
    WorkerReply,
)
from p0_ssh_agent.agent_access.scoped_paths import PathRefused, clean_prefix
from p0_ssh_agent.agent_access.worker_main import encode_job
from p0_ssh_agent.core.requests import is_user_name
from p0_ssh_agent.host.accounts import group_ids

log = get_logger(__name__)

SYSTEMD_RUN = "/usr/bin/systemd-run"
SYSTEMCTL = "/usr/bin/systemctl"
SYSTEMD_RUNTIME_DIR = Path("/run/systemd/system")
WORKER_MODULE = "p0_ssh_agent.agent_access.worker_main"
WORKER_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
MAX_REPLY_BYTES = 2 * 4 * -(-MAX_STREAM_BYTES // 3) + 64 * 1024
MAX_STDERR_BYTES = 16 * 1024
MAX_MESSAGE_CHARS = 512
# The longest exec (MAX_EXEC_SECONDS, 110) is thus killed by the agent at 117 s, inside the 120 s in which
# runtime/worker.py must answer; the worker's own timeout answers it at 110 s.
DEADLINE_GRACE = 4  # seconds past the worker's own limit before the agent kills it
EXEC_MARGIN = 3  # seconds a unit running exec gets beyond the command's timeout, to report it
# The worker runs the agent's own interpreter (the package's, under /usr/lib/p0-ssh-agent). A module constant so
# that the system test can point it at one the transient unit can see: a checkout under /tmp is hidden from a unit
# with PrivateTmp=yes (tests/system/access_worker_probe.py).
WORKER_INTERPRETER = sys.executable
MODES = ("systemd", "namespace")


@dataclass(frozen=True)
class WorkerLimits:
    tasks: int = 64
    memory_bytes: int = 512 * 1024 * 1024
    seconds: int = 30  # file operations; an exec unit gets its command's timeout plus EXEC_MARGIN if longer


def choose_mode(setting: str, *, as_root: bool | None = None) -> str:
    """agentAccessConfinement -> the mode: "auto" is systemd when systemd is PID 1, systemd-run exists and we are
    root, else namespace; "systemd" and "namespace" are taken as they are. `as_root` answers "are we root?" for
    a caller that is not the daemon (doctor run unprivileged asks what the root daemon would pick)."""
    if setting in MODES:
        return setting
    if setting != "auto":
        raise ValueError(f"confinement must be auto, systemd or namespace, not {setting[:40]!r}")
    root = os.geteuid() == 0 if as_root is None else as_root
    systemd = SYSTEMD_RUNTIME_DIR.is_dir() and Path(SYSTEMD_RUN).is_file() and root
    return "systemd" if systemd else "namespace"


def unit_seconds(job: WorkerJob, limits: WorkerLimits) -> int:
    if job.op == AccessCommand.EXEC:
        return max(limits.seconds, min(job.timeout_seconds, MAX_EXEC_SECONDS) + EXEC_MARGIN)
    return limits.seconds


def worker_argv(
    account: TargetAccount, prefix: str, *, mode: str, limits: WorkerLimits, seconds: int, unit: str
) -> list[str]:
    """The argv that starts the worker for `account` in `mode` (module docstring). `prefix` must have passed
    scoped_paths.clean_prefix (nothing in it that systemd would split, unquote or expand)."""
    worker = [WORKER_INTERPRETER, "-I", "-m", WORKER_MODULE, "--home", account.home, "--user", account.name]
    worker += ["--tasks", str(limits.tasks), "--memory", str(limits.memory_bytes)]  # rlimits, in both modes
    if mode == "namespace":
        groups = ",".join(str(gid) for gid in sorted(set(group_ids(account.name, account.gid))))
        return [
            *worker,
            "--drop-to", f"{account.uid}:{account.gid}",
            "--groups", groups,
            "--pid-namespace",
        ]  # fmt: skip
    if mode != "systemd":
        raise ValueError(f"unknown confinement mode {mode!r}")
    properties = [
        f"User={account.name}",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        f"ReadWritePaths=-{prefix}",
        "PrivateTmp=yes",
        "PrivateDevices=yes",
        f"TasksMax={limits.tasks}",
        f"MemoryMax={limits.memory_bytes}",
        f"RuntimeMaxSec={seconds}",
        "KillMode=control-group",
        "KillSignal=SIGKILL",
        "LimitCORE=0",
        "UMask=0022",
        "CapabilityBoundingSet=",
        "RestrictSUIDSGID=yes",
        "LockPersonality=yes",
        "ProtectKernelTunables=yes",
        "ProtectKernelModules=yes",
        "ProtectKernelLogs=yes",
        "ProtectControlGroups=yes",
        "ProtectClock=yes",
        "ProtectHostname=yes",
        "ProtectProc=invisible",
        "RestrictNamespaces=yes",
        "RestrictRealtime=yes",
        "SystemCallArchitectures=native",
    ]
    head = [SYSTEMD_RUN, "--quiet", "--collect", "--pipe", "--wait", "--service-type=exec", f"--unit={unit}"]
    return [*head, *(part for prop in properties for part in ("-p", prop)), "--", *worker]


def _failed(message: str) -> WorkerReply:
    return WorkerReply(ok=False, error_kind=RefusalKind.FAILED.value, message=message)


def _printable(text: str) -> str:
    return "".join(char if char.isprintable() else "?" for char in text[:MAX_MESSAGE_CHARS])


def parse_reply(raw: bytes) -> WorkerReply:
    """The worker's stdout as a WorkerReply, trusting nothing: size, encoding, JSON, top-level types, the error
    kind (outside the worker's set it becomes "failed") and the message (at most 512 printable characters)."""
    if len(raw) > MAX_REPLY_BYTES:
        return _failed("the worker's reply was too large")
    try:
        value = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, ValueError, RecursionError):
        return _failed("the worker's reply was not JSON")
    if not isinstance(value, dict) or not isinstance(value.get("ok"), bool):
        return _failed("the worker's reply was not a reply object")
    if value["ok"]:
        result = value.get("result")
        if not isinstance(result, dict):
            return _failed("the worker's reply had no result object")
        return WorkerReply(ok=True, result=result)
    kind, message = value.get("error_kind"), value.get("message")
    if not isinstance(message, str):
        message = "the worker gave no message"
    if not isinstance(kind, str) or kind not in WORKER_ERROR_KINDS:  # a list or object is unhashable: check first
        return _failed(f"the worker failed: {_printable(message)}" if isinstance(kind, str) else _printable(message))
    return WorkerReply(ok=False, error_kind=str(kind), message=_printable(message))


async def _read_bounded(
    stream: trio.abc.ReceiveStream, limit: int, *, stop_when_over: bool = False
) -> tuple[bytes, bool]:
    """Read to EOF keeping at most `limit` bytes, and whether more came: the rest is drained and dropped, or with
    `stop_when_over` not read at all."""
    kept, over = bytearray(), False
    while chunk := await stream.receive_some(65536):
        if len(kept) + len(chunk) > limit:
            kept += chunk[: limit - len(kept)]
            over = True
            if stop_when_over:
                break
        elif not over:
            kept += chunk
    return bytes(kept), over


@dataclass
class _Output:
    stdout: bytes = b""
    stdout_over: bool = False
    stderr: bytes = b""
    stderr_over: bool = False


async def run_worker(job: WorkerJob, account: TargetAccount, *, mode: str, limits: WorkerLimits) -> WorkerReply:
    """Run `job` as `account` in `mode` and return its parsed reply (module docstring)."""
    if account.uid == 0 or not is_user_name(account.name):
        return _failed("an operation runs only as a non-root account with a valid name")
    try:
        prefix = clean_prefix(job.prefix)
    except PathRefused as exc:
        return WorkerReply(ok=False, error_kind=RefusalKind.INVALID.value, message=str(exc))
    unit = f"p0-agent-access-{uuid.uuid4().hex}"
    seconds = unit_seconds(job, limits)
    argv = worker_argv(account, prefix, mode=mode, limits=limits, seconds=seconds, unit=unit)
    return await run_confined(argv, encode_job(job), seconds=seconds, unit=unit if mode == "systemd" else "")


async def run_confined(argv: list[str], payload: bytes, *, seconds: int, unit: str = "") -> WorkerReply:
    """Start `argv`, write `payload` to its stdin, read its bounded output for at most seconds + DEADLINE_GRACE,
    kill it (and `unit`, if it names a transient unit) if it is still running, and judge what it answered."""
    try:
        process = await trio.lowlevel.open_process(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=WORKER_ENV, close_fds=True
        )
    except OSError as exc:
        return _failed(f"the worker could not be started: {exc.strerror or exc}")
    output, timed_out = _Output(), True
    try:
        stdin, stdout, stderr = process.stdin, process.stdout, process.stderr
        if stdin is None or stdout is None or stderr is None:
            raise RuntimeError("open_process gave no pipes")  # cannot happen: all three are PIPE
        with trio.move_on_after(seconds + DEADLINE_GRACE):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(_feed, stdin, payload)
                nursery.start_soon(_collect, stdout, stderr, output, partial(_kill, process, unit))
            await process.wait()
            timed_out = False
    finally:
        if process.returncode is None:
            with trio.CancelScope(shield=True):
                await _kill(process, unit)
    return _judge(process.returncode, output, timed_out=timed_out, seconds=seconds, unit=unit)


async def _collect(
    stdout: trio.abc.ReceiveStream,
    stderr: trio.abc.ReceiveStream,
    output: _Output,
    kill: Callable[[], Awaitable[None]],
) -> None:
    """Read both streams, bounded; a reply past MAX_REPLY_BYTES kills the worker at once (it is garbage anyway)."""

    async def read_stderr() -> None:
        output.stderr, output.stderr_over = await _read_bounded(stderr, MAX_STDERR_BYTES)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(read_stderr)
        output.stdout, output.stdout_over = await _read_bounded(stdout, MAX_REPLY_BYTES, stop_when_over=True)
        if output.stdout_over:
            await kill()


async def _feed(stdin: trio.abc.SendStream, payload: bytes) -> None:
    try:
        await stdin.send_all(payload)
        await stdin.aclose()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass  # the worker exited without reading it all: its exit status and reply say why


async def _kill(process: trio.Process, unit: str) -> None:
    """Kill the worker: the unit's whole cgroup in systemd mode, and the process itself (in namespace mode, the
    root parent, whose death PDEATHSIG turns into the end of the namespace)."""
    if unit:
        with trio.move_on_after(10):
            await trio.run_process(
                [SYSTEMCTL, "kill", "--signal=SIGKILL", unit],
                check=False,
                env=WORKER_ENV,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
    process.kill()
    await process.wait()


def _judge(returncode: int | None, output: _Output, *, timed_out: bool, seconds: int, unit: str) -> WorkerReply:
    if output.stderr:
        text = output.stderr.decode("utf-8", "replace") + (" [truncated]" if output.stderr_over else "")
        log.warning("agent_access_worker_stderr", unit=unit, returncode=returncode, stderr=text)
    if timed_out:
        return _failed(f"the worker did not finish within {seconds + DEADLINE_GRACE} s and was killed")
    if output.stdout_over:
        return _failed("the worker's reply was too large")
    if returncode != 0:
        return _failed(f"the worker exited with status {returncode}")
    return parse_reply(output.stdout)
