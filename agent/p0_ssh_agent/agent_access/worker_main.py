"""The confined worker: one agent-access operation, run as the target account, started afresh for each one.

    python -I -m p0_ssh_agent.agent_access.worker_main [--drop-to UID:GID --groups G1,G2,... --pid-namespace
        --tasks N --memory BYTES] [--home H --user NAME]

It reads ONE JSON object (a WorkerJob's fields, at most MAX_JOB_BYTES) from stdin and writes ONE JSON object to
stdout: {"ok": true, "result": {...}} or {"ok": false, "error_kind": "...", "message": "..."}; it exits 0 when it
wrote either. It imports only the standard library and agent_access's pure modules and its own operations (no
trio, structlog, cryptography, cedarpy), so it starts in tens of milliseconds. First of all it makes itself
non-dumpable (no ptrace, no /proc/<pid>/mem for the account's other processes: it holds the job's data), closes
every inherited descriptor above 2, sets umask 022 and leaves the agent's working directory. It never runs a job
as UID 0.

systemd mode (confine.py): the transient unit already runs it as the account with NoNewPrivileges=, TasksMax=,
MemoryMax= and the rest; it gets no privilege flags, and sets RLIMIT_NPROC as namespace mode does (below) in
case the unit's TasksMax= is not enforced (a container without the pids controller).

Namespace mode (where systemd is not PID 1, e.g. the test sandbox): started as root with --drop-to and
--pid-namespace, it calls unshare(CLONE_NEWPID) and forks. The child is PID 1 of the new namespace; it drops to
the account (setgroups, setresgid, setresuid, checked with getresuid/getresgid/getgroups), then sets
PR_SET_PDEATHSIG to SIGKILL (after the drop: a change of credentials clears it) and checks that the parent is still
there, so that if the root parent is killed (confine.py's deadline) the namespace's init dies and the kernel kills
everything in the namespace (`setsid` cannot escape that); PR_SET_NO_NEW_PRIVS (the account may hold a NOPASSWD
sudo grant: no setuid program raises it again); the rlimits (RLIMIT_NPROC: --tasks more than the account already
runs, since the kernel counts every process of the UID; RLIMIT_AS --memory; RLIMIT_NOFILE 256; RLIMIT_CORE 0).
As PID 1 it reaps orphans, and when the job is done (exec included) kills every process left in the namespace
(kill(-1, SIGKILL) from inside) before it answers, so nothing a command daemonised outlives the operation. The
parent waits and exits with the child's status. What this mode does NOT confine is in confine.py's docstring.
"""

from __future__ import annotations

import ctypes
import json
import os
import resource
import select
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, fields

from p0_ssh_agent.agent_access import dir_ops, exec_op, file_ops
from p0_ssh_agent.agent_access.access_model import DEFAULT_EXEC_SECONDS, AccessCommand, RefusalKind, WorkerJob
from p0_ssh_agent.agent_access.file_ops import OpError

MAX_JOB_BYTES = 256 * 1024
MAX_NUMBER = 2**62  # offsets and counts: beyond any file, and inside what pread/lseek take
OPEN_FILES = 256
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_NO_NEW_PRIVS = 38
CLONE_NEWPID = 0x20000000
EXIT_FAILED = 70  # sysexits EX_SOFTWARE: no reply could be written
TWO_PATHS = frozenset({AccessCommand.FILE_MOVE, AccessCommand.FILE_COPY})
OPERATIONS: dict[str, Callable[[WorkerJob], dict[str, object]]] = {
    AccessCommand.FILE_READ: file_ops.read_file,
    AccessCommand.FILE_WRITE: file_ops.write_file,
    AccessCommand.FILE_CREATE: file_ops.create_file,
    AccessCommand.FILE_DELETE: file_ops.delete_file,
    AccessCommand.FILE_MOVE: file_ops.move,
    AccessCommand.FILE_COPY: file_ops.copy,
    AccessCommand.DIR_LIST: dir_ops.list_dir,
    AccessCommand.DIR_TREE: dir_ops.tree,
    AccessCommand.DIR_CREATE: dir_ops.make_dirs,
    AccessCommand.DIR_DELETE: dir_ops.remove_dir,
    AccessCommand.DIR_DELETE_RECURSIVE: dir_ops.delete_tree,
}
_libc = ctypes.CDLL(None, use_errno=True)
_libc.prctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong]
_libc.unshare.argtypes = [ctypes.c_int]


def encode_job(job: WorkerJob) -> bytes:
    """The job as the worker reads it (confine.py writes this to its stdin)."""
    return json.dumps(asdict(job), separators=(",", ":")).encode("utf-8")


def decode_job(raw: bytes) -> WorkerJob:
    """The job from the agent, checked field by field (a wrong type is invalid_request, never a crash)."""
    if len(raw) > MAX_JOB_BYTES:
        raise OpError(RefusalKind.INVALID, f"the job is larger than {MAX_JOB_BYTES} bytes")
    try:
        value = json.loads(raw)
    except (ValueError, RecursionError):
        raise OpError(RefusalKind.INVALID, "the job is not JSON") from None
    if not isinstance(value, dict):
        raise OpError(RefusalKind.INVALID, "the job is not a JSON object")
    if unknown := sorted(set(value) - {field.name for field in fields(WorkerJob)}):
        raise OpError(RefusalKind.INVALID, f"the job has unknown fields: {', '.join(unknown)[:200]}")
    job = WorkerJob(
        op=_text(value, "op", None),
        prefix=_text(value, "prefix", None),
        paths=_texts(value, "paths"),
        data_b64=_text(value, "data_b64", ""),
        offset=_count(value, "offset"),
        length=_count(value, "length"),
        append=_flag(value, "append"),
        truncate=_flag(value, "truncate"),
        overwrite=_flag(value, "overwrite"),
        depth=_count(value, "depth", 1) or 0,
        argv=_texts(value, "argv"),
        cwd=_text(value, "cwd", ""),
        timeout_seconds=_count(value, "timeout_seconds", DEFAULT_EXEC_SECONDS) or 0,
    )
    if job.op not in OPERATIONS and job.op != AccessCommand.EXEC:
        raise OpError(RefusalKind.INVALID, "the job's op is not an agent-access command")
    wanted = 2 if job.op in TWO_PATHS else (0 if job.op == AccessCommand.EXEC else 1)
    if len(job.paths) != wanted:  # exec names its directory in `cwd`, not in paths
        raise OpError(RefusalKind.INVALID, f"{job.op} takes {wanted} path(s)")
    return job


def _wrong(name: str) -> OpError:
    return OpError(RefusalKind.INVALID, f"the job's {name} is missing or has the wrong type or range")


def _text(value: dict[str, object], name: str, default: str | None) -> str:
    item = value.get(name, default)
    if not isinstance(item, str):
        raise _wrong(name)
    return item


def _texts(value: dict[str, object], name: str) -> tuple[str, ...]:
    item = value.get(name, [])
    if not isinstance(item, list) or not all(isinstance(part, str) for part in item):
        raise _wrong(name)
    return tuple(item)


def _flag(value: dict[str, object], name: str) -> bool:
    item = value.get(name, False)
    if not isinstance(item, bool):
        raise _wrong(name)
    return item


def _count(value: dict[str, object], name: str, default: int | None = None) -> int | None:
    item = value.get(name, default)
    if item is None:
        return None
    if not isinstance(item, int) or isinstance(item, bool) or not 0 <= item <= MAX_NUMBER:
        raise _wrong(name)
    return item


def run_job(job: WorkerJob, *, home: str, user: str, namespace_init: bool) -> dict[str, object]:
    """The reply to one job: the operation's result, or its refusal."""
    try:
        if job.op == AccessCommand.EXEC:
            result = exec_op.run_exec(job, home=home, user=user, namespace_init=namespace_init)
        else:
            result = OPERATIONS[job.op](job)
    except OpError as refused:
        return {"ok": False, "error_kind": refused.kind.value, "message": refused.message}
    except OSError as exc:  # one the operation did not translate itself
        failure = file_ops.refusal(exc, job.paths[0] if job.paths else job.prefix)
        return {"ok": False, "error_kind": failure.kind.value, "message": failure.message}
    return {"ok": True, "result": result}


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        raise OSError(ctypes.get_errno(), f"prctl({option})")


def _harden() -> None:
    _prctl(PR_SET_DUMPABLE, 0)
    os.closerange(3, resource.getrlimit(resource.RLIMIT_NOFILE)[1])
    os.umask(0o022)
    os.chdir("/")


def _drop(uid: int, gid: int, groups: Sequence[int]) -> None:
    if uid == 0 or gid == 0:
        raise SystemExit("worker_main: refusing to run a job as UID or GID 0")
    os.setgroups(list(groups))
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or set(os.getgroups()) != set(groups):
        raise SystemExit("worker_main: the drop to the account did not take")
    _prctl(PR_SET_DUMPABLE, 0)  # a change of credentials resets it to fs.suid_dumpable


def _tasks_of(uid: int) -> int:
    """How many tasks (threads) the account runs now: RLIMIT_NPROC counts them all, not only ours."""
    count = 0
    with os.scandir("/proc") as entries:
        for entry in entries:
            if not entry.name.isdigit():
                continue
            try:
                fd = os.open(f"/proc/{entry.name}/status", os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue  # gone already
            try:
                text = os.read(fd, 4096).decode("ascii", "replace")
            except OSError:
                continue
            finally:
                os.close(fd)
            lines = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if lines.get("Uid", "").split()[:1] == [str(uid)]:
                count += int(lines.get("Threads", "1").strip() or 1)
    return count


def _limit(uid: int, tasks: int, memory: int | None) -> None:
    """The rlimits (soft = hard, so nothing the job runs can raise them). memory None: RLIMIT_AS is left alone
    (systemd mode: MemoryMax= bounds the unit's sum, and an address-space limit would break programs that reserve
    large virtual ranges, such as JVMs and Go binaries)."""
    limits = [(resource.RLIMIT_NPROC, _tasks_of(uid) + tasks), (resource.RLIMIT_NOFILE, OPEN_FILES)]
    limits += [(resource.RLIMIT_CORE, 0)] + ([(resource.RLIMIT_AS, memory)] if memory is not None else [])
    for which, value in limits:
        resource.setrlimit(which, (value, value))


def _answer(reply: dict[str, object]) -> int:
    try:
        sys.stdout.buffer.write(json.dumps(reply, separators=(",", ":")).encode("utf-8"))
        sys.stdout.buffer.flush()
    except OSError:
        return EXIT_FAILED
    return 0


def _serve(args: Arguments, *, namespace_init: bool) -> int:
    try:
        job = decode_job(sys.stdin.buffer.read(MAX_JOB_BYTES + 1))
    except OpError as refused:
        return _answer({"ok": False, "error_kind": refused.kind.value, "message": refused.message})
    try:
        reply = run_job(job, home=args.home, user=args.user, namespace_init=namespace_init)
    finally:
        if namespace_init:
            exec_op.sweep_namespace()
    return _answer(reply)


def _namespace_init(args: Arguments, uid: int, gid: int, parent_alive: int) -> int:
    """The child: PID 1 of the new PID namespace, as the account."""
    _drop(uid, gid, args.groups)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    # The parent may have died before PDEATHSIG was set: then its end of the pipe is closed, which poll reports.
    poller = select.poll()
    poller.register(parent_alive, select.POLLIN)
    if poller.poll(0):
        return EXIT_FAILED
    os.close(parent_alive)
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _limit(uid, args.tasks, args.memory)
    return _serve(args, namespace_init=True)


def _in_new_namespace(args: Arguments, uid: int, gid: int) -> int:
    if _libc.unshare(CLONE_NEWPID) != 0:
        raise SystemExit(f"worker_main: unshare(CLONE_NEWPID): {os.strerror(ctypes.get_errno())}")
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(write_end)
        try:
            code = _namespace_init(args, uid, gid, read_end)
        except BaseException as exc:  # the child must never return into the parent's code
            print(exc if isinstance(exc, SystemExit) else f"worker_main: {exc!r}", file=sys.stderr)
            code = EXIT_FAILED
        sys.stdout.flush()
        os._exit(code)
    os.close(read_end)
    os.close(0)  # the child alone reads the job and writes the reply
    os.close(1)
    _, status = os.waitpid(pid, 0)
    return os.WEXITSTATUS(status) if os.WIFEXITED(status) else 128 + os.WTERMSIG(status)


@dataclass
class Arguments:
    drop_to: str = ""
    groups: tuple[int, ...] = ()
    pid_namespace: bool = False
    tasks: int = 64
    memory: int = 512 * 1024 * 1024
    home: str = "/"
    user: str = ""


def parse_arguments(argv: Sequence[str]) -> Arguments:
    """The command line (module docstring); a hand-written parser, as argparse would add ~8 ms to each start."""
    args, rest = Arguments(), list(argv)
    while rest:
        option = rest.pop(0)
        if option == "--pid-namespace":
            args.pid_namespace = True
            continue
        if option not in ("--drop-to", "--groups", "--tasks", "--memory", "--home", "--user") or not rest:
            raise SystemExit(f"worker_main: unknown option or missing value: {option[:40]}")
        value = rest.pop(0)
        try:
            if option == "--groups":
                args.groups = tuple(int(gid) for gid in value.split(",") if gid)
            elif option in ("--tasks", "--memory"):
                setattr(args, option[2:], int(value))
            else:
                setattr(args, option[2:].replace("-", "_"), value)
        except ValueError:
            raise SystemExit(f"worker_main: {option} takes a number") from None
    return args


def main(argv: Sequence[str] | None = None) -> int:
    _harden()
    args = parse_arguments(sys.argv[1:] if argv is None else argv)
    if args.drop_to:
        uid, _, gid = args.drop_to.partition(":")
        if not (args.pid_namespace and uid.isdigit() and gid.isdigit()):
            raise SystemExit("worker_main: --drop-to takes UID:GID, and needs --pid-namespace")
        return _in_new_namespace(args, int(uid), int(gid))
    if os.geteuid() == 0 or 0 in os.getresuid():
        raise SystemExit("worker_main: refusing to run a job as UID 0 (systemd mode runs it with User=)")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)  # the unit sets NoNewPrivileges= already; this costs nothing
    # The unit's TasksMax= needs the pids controller, which a container may not have: RLIMIT_NPROC holds where it
    # does not (a fork bomb in an nspawn container on a cgroup v1 host ran to 2400 processes under TasksMax=16).
    _limit(os.getuid(), args.tasks, None)
    return _serve(args, namespace_init=False)


if __name__ == "__main__":
    sys.exit(main())
