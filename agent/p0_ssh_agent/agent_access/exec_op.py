"""ssh_exec in the confined worker (worker_main.py): one command, as the target account, bounded in time and output.

- argv[0] is an absolute path, or a bare name looked up in the fixed EXEC_PATH (never the agent's PATH).
- The working directory is resolved beneath the prefix like every file operation (file_ops.Beneath: no link is
  followed) and entered with fchdir, so the command starts in the very directory that was checked.
- The environment is scrubbed to PATH, HOME, USER, LOGNAME and LANG=C.UTF-8; stdin is /dev/null; the command
  starts in a session of its own (setsid) with SIGPIPE and SIGXFSZ at their defaults (Python ignores SIGPIPE, and
  an ignored signal survives exec).
- stdout and stderr are pipes read with selectors, each captured up to MAX_STREAM_BYTES. When a stream passes its
  cap, the bytes beyond it are dropped, the stream is named in truncatedStreams, and our end of that pipe is
  closed: the command's next write gets SIGPIPE (or EPIPE if it ignores the signal), so an output flood such as
  `yes` ends at once, usually with signal 13, instead of running to its timeout.
- The run ends when the command has exited and both pipes are at EOF, or EXIT_GRACE after it exited if something
  it started still holds a pipe (its output after that is not waited for), or at the timeout.
- On the timeout, or when the run ends with processes left: in the PID namespace (namespace_init), everything in
  the namespace but us is killed (kill(-1, SIGKILL), which a `setsid` cannot escape); in systemd mode the
  command's process group is killed, and the unit's KillMode=control-group removes whatever left the group when
  the worker exits.
- Result: {"exitCode": int|null, "signal": int|null, "durationMs", "stdout": base64, "stderr": base64,
  "truncated", "truncatedStreams": [...], "timedOut"}.
"""

from __future__ import annotations

import base64
import contextlib
import os
import selectors
import signal
import stat
import time

from p0_ssh_agent.agent_access.access_model import (
    MAX_EXEC_ARG_BYTES,
    MAX_EXEC_ARGS,
    MAX_EXEC_SECONDS,
    MAX_STREAM_BYTES,
    RefusalKind,
    WorkerJob,
)
from p0_ssh_agent.agent_access.file_ops import Beneath, OpError, refusal

EXEC_PATH = ("/usr/local/bin", "/usr/bin", "/bin")
EXIT_GRACE = 0.25  # seconds the pipes may stay open after the command exited
READ_CHUNK = 64 * 1024
POLL_SECONDS = 0.1  # how often PID 1 of the namespace reaps orphans while a command runs


def find_program(name: str) -> str:
    """The executable argv[0] names: itself if absolute, else the first match in EXEC_PATH.
    (*) os, not pathlib: importing pathlib would add about 15 ms to every worker's start."""
    if name.startswith("/"):
        return name
    if not name or "/" in name:
        raise OpError(RefusalKind.INVALID, "argv[0] must be an absolute path or a bare program name")
    for directory in EXEC_PATH:
        candidate = f"{directory}/{name}"
        with contextlib.suppress(OSError):
            if stat.S_ISREG(os.stat(candidate).st_mode) and os.access(candidate, os.X_OK):  # noqa: PTH116 (*)
                return candidate
    raise OpError(RefusalKind.NOT_FOUND, f"program not found in {':'.join(EXEC_PATH)}: {name[:100]}")


def _check(job: WorkerJob) -> None:
    if not job.argv or len(job.argv) > MAX_EXEC_ARGS:
        raise OpError(RefusalKind.INVALID, f"argv must hold 1 to {MAX_EXEC_ARGS} arguments")
    if sum(len(part.encode("utf-8", "surrogateescape")) + 1 for part in job.argv) > MAX_EXEC_ARG_BYTES:
        raise OpError(RefusalKind.TOO_LARGE, f"argv is longer than {MAX_EXEC_ARG_BYTES} bytes")
    if any("\x00" in part for part in job.argv):
        raise OpError(RefusalKind.INVALID, "argv contains a NUL byte")
    if not 1 <= job.timeout_seconds <= MAX_EXEC_SECONDS:
        raise OpError(RefusalKind.INVALID, f"timeout_seconds must be between 1 and {MAX_EXEC_SECONDS}")


def _spawn(job: WorkerJob, program: str, env: dict[str, str], out: int, err: int) -> int:
    """posix_spawn the command in the job's working directory (fchdir there, and back, around the spawn)."""
    cwd = job.cwd or job.prefix
    with Beneath(job.prefix) as beneath:
        directory = beneath.directory(cwd)
        saved = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fchdir(directory)
            return os.posix_spawn(
                program,
                list(job.argv),
                env,
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_DUP2, out, 1),
                    (os.POSIX_SPAWN_DUP2, err, 2),
                ],
                setsid=True,
                setsigdef=(signal.SIGPIPE, signal.SIGXFSZ),
            )
        except OSError as exc:
            raise refusal(exc, job.argv[0][:100]) from None
        finally:
            with contextlib.suppress(OSError):  # best effort: the worker itself no longer needs its old directory
                os.fchdir(saved)
            os.close(saved)


def sweep_namespace(pid: int | None = None) -> int | None:
    """As PID 1 of the namespace: kill everything else in it and reap it all; `pid`'s wait status if reaped here.
    kill(-1) again before each wait: it is atomic against fork, so no child is born after a round unkilled."""
    status = None
    while True:
        with contextlib.suppress(ProcessLookupError):
            os.kill(-1, signal.SIGKILL)
        try:
            reaped, wait_status = os.waitpid(-1, 0)
        except ChildProcessError:
            return status
        if reaped == pid:
            status = wait_status


class _Child:
    """The command's process and, in the namespace, the orphans PID 1 inherits."""

    def __init__(self, pid: int, *, namespace_init: bool) -> None:
        self.pid, self.namespace_init = pid, namespace_init
        self.status: int | None = None
        self.ended_at: float | None = None

    def poll(self) -> None:
        """Note the command's exit. Outside the namespace without reaping it (WNOWAIT): its zombie keeps its PID
        and process group from being reused until finish() has killed the group. In the namespace, reap every
        orphan as it ends (zombies count against RLIMIT_NPROC); kill(-1) there needs no PID."""
        if self.namespace_init:
            while True:
                try:
                    pid, status = os.waitpid(-1, os.WNOHANG)
                except ChildProcessError:
                    return
                if pid == 0:
                    return
                if pid == self.pid:
                    self.status, self.ended_at = status, time.monotonic()
        elif self.ended_at is None and os.waitid(os.P_PID, self.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT):
            self.ended_at = time.monotonic()

    def finish(self) -> None:
        """Kill what is left (everything in the namespace, else the command's process group), then reap."""
        if self.namespace_init:
            reaped = sweep_namespace(self.pid)
            self.status = self.status if reaped is None else reaped
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, signal.SIGKILL)
        self.status = os.waitpid(self.pid, 0)[1]


class _Streams:
    """stdout and stderr, read with a selector, each kept up to MAX_STREAM_BYTES; the selector also watches the
    command's pidfd, so its exit wakes the loop as its output does."""

    def __init__(self, out: int, err: int, pid: int) -> None:
        self.selector = selectors.DefaultSelector()
        self.names = {out: "stdout", err: "stderr"}
        self.data = {"stdout": bytearray(), "stderr": bytearray()}
        self.truncated: list[str] = []
        self.watched: set[int] = set()
        for fd in (out, err):
            os.set_blocking(fd, False)
            self.watch(fd)
        try:
            self.pidfd: int | None = self.watch(os.pidfd_open(pid))
        except OSError:
            self.pidfd = None  # no pidfd (an old kernel, a seccomp filter): poll for the exit instead

    def watch(self, fd: int) -> int:
        self.selector.register(fd, selectors.EVENT_READ)
        self.watched.add(fd)
        return fd

    @property
    def open(self) -> bool:
        return any(fd in self.names for fd in self.watched)

    def close(self, fd: int) -> None:
        self.selector.unregister(fd)
        self.watched.discard(fd)
        os.close(fd)

    def pump(self, timeout: float) -> None:
        for key, _ in self.selector.select(max(timeout, 0) if self.pidfd is not None else min(timeout, 0.05)):
            fd = int(key.fd)
            if fd == self.pidfd:
                self.close(fd)  # it exited: the loop's poll() notes it
                self.pidfd = -1
                continue
            try:
                chunk = os.read(fd, READ_CHUNK)
            except BlockingIOError:
                continue
            name = self.names[fd]
            if not chunk:
                self.close(fd)
                continue
            kept = self.data[name]
            room = MAX_STREAM_BYTES - len(kept)
            kept += chunk[:room]
            if len(chunk) > room:
                self.truncated.append(name)
                self.close(fd)  # the writer gets SIGPIPE/EPIPE from now on

    def close_all(self) -> None:
        for fd in list(self.watched):
            self.close(fd)
        self.selector.close()


def run_exec(job: WorkerJob, *, home: str, user: str, namespace_init: bool) -> dict[str, object]:
    _check(job)
    program = find_program(job.argv[0])
    env = {"PATH": ":".join(EXEC_PATH), "HOME": home, "USER": user, "LOGNAME": user, "LANG": "C.UTF-8"}
    out_read, out_write = os.pipe()
    err_read, err_write = os.pipe()
    try:
        started = time.monotonic()
        pid = _spawn(job, program, env, out_write, err_write)
    except BaseException:
        for fd in (out_read, err_read):
            os.close(fd)
        raise
    finally:
        os.close(out_write)
        os.close(err_write)
    child, streams = _Child(pid, namespace_init=namespace_init), _Streams(out_read, err_read, pid)
    deadline, timed_out = started + job.timeout_seconds, False
    try:
        while True:
            child.poll()
            now = time.monotonic()
            if child.ended_at is not None and (not streams.open or now >= child.ended_at + EXIT_GRACE):
                break
            if child.ended_at is None and now >= deadline:
                timed_out = True
                break
            wait = (deadline if child.ended_at is None else child.ended_at + EXIT_GRACE) - now
            streams.pump(min(wait, POLL_SECONDS) if namespace_init else wait)
    finally:
        child.finish()  # leftovers of a finished command, or the whole tree at the timeout
        streams.close_all()
    ended = child.ended_at if child.ended_at is not None else time.monotonic()
    status = child.status if child.status is not None else 0
    return {
        "exitCode": os.WEXITSTATUS(status) if os.WIFEXITED(status) else None,
        "signal": os.WTERMSIG(status) if os.WIFSIGNALED(status) else None,
        "durationMs": round((ended - started) * 1000),
        "stdout": base64.b64encode(bytes(streams.data["stdout"])).decode("ascii"),
        "stderr": base64.b64encode(bytes(streams.data["stderr"])).decode("ascii"),
        "truncated": bool(streams.truncated),
        "truncatedStreams": list(streams.truncated),
        "timedOut": timed_out,
    }
