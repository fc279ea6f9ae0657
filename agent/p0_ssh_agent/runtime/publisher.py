"""Publish the live state (status.json) and the metrics textfile: on every change and every few seconds.

Files are replaced by rename (temporary file in the same directory, O_EXCL|O_NOFOLLOW, then os.replace), so a
reader sees the old document or the new one. No fsync: both files describe the running process and are worth
nothing after a crash, and the runtime directory is a tmpfs anyway.

Publishing is a convenience for `status` and monitoring, never a reason to stop the agent: a runtime directory
that cannot be used (not root, a symlink, another agent holding the lock) is logged once and the agent runs on
without it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import stat
from collections.abc import Callable
from pathlib import Path

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.runtime.livestate import LOCK_FILE, STATE_FILE, STATE_MODE

log = get_logger(__name__)

REFRESH_SECONDS = 5.0
METRICS_MODE = 0o640
RUNTIME_DIR_MODE = 0o755  # traversable, so node_exporter can reach a metrics file in it; the files are not
LOCK_ATTEMPTS = 20  # `status` holds a shared lock for a moment; this rides that out (20 x 50 ms)


class RuntimeDirUnusable(Exception):
    pass


def open_runtime_dir(path: Path) -> int:
    """A directory fd for the runtime directory, created if missing; refused when a symlink, not ours, or
    writable by others (anyone could then swap our files)."""
    with contextlib.suppress(FileExistsError):
        path.mkdir(RUNTIME_DIR_MODE)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise RuntimeDirUnusable(f"{path}: {exc.strerror} (a symlink is refused)") from None
    info = os.fstat(fd)
    if info.st_uid != os.geteuid() or stat.S_IMODE(info.st_mode) & 0o022:
        os.close(fd)
        raise RuntimeDirUnusable(f"{path} is not owned by uid {os.geteuid()}, or others may write in it")
    return fd


def replace_file(dir_fd: int, name: str, data: bytes, *, mode: int, gid: int | None = None) -> None:
    temp = f".{name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dir_fd)
    try:
        try:
            if gid is not None:
                os.fchown(fd, -1, gid)
            os.fchmod(fd, mode)  # after the chown: the group gets its read bit only once it is the right group
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp, dir_fd=dir_fd)
        raise


class Publisher:
    def __init__(
        self,
        runtime_dir: Path,
        metrics_file: Path,
        *,
        metrics_gid: int | None,
        state: Callable[[], bytes],
        metrics: Callable[[], bytes],
        refresh: Callable[[], None] | None = None,
    ) -> None:
        self.runtime_dir = runtime_dir
        self.metrics_file = metrics_file
        self.metrics_gid = metrics_gid
        self._state = state
        self._metrics = metrics
        self._refresh = refresh  # runs before each periodic write (the ledger summary, in a thread)
        self._wake = trio.Event()
        self._dir_fd: int | None = None
        self._lock_fd: int | None = None
        self._locked = False
        self._metrics_failing = False

    def poke(self) -> None:
        """Something changed: write soon (not now: several changes in one tick make one write)."""
        self._wake.set()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        # The first refresh comes before the lock, so that status.json follows the lock at once: a reader in between
        # sees a running agent with no state yet. It is also the slow one (runtime/health.py imports the ledger
        # modules for it, after READY=1).
        await self._refreshed()
        await self._open()
        task_status.started()
        try:
            while True:
                self.write_now()
                with trio.move_on_after(REFRESH_SECONDS):
                    await self._wake.wait()
                self._wake = trio.Event()
                await self._refreshed()
        finally:
            self._close()

    async def _refreshed(self) -> None:
        if self._refresh is not None:
            await trio.to_thread.run_sync(self._refresh)

    async def _open(self) -> None:
        try:
            self._dir_fd = open_runtime_dir(self.runtime_dir)
            self._lock_fd = os.open(
                LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, STATE_MODE, dir_fd=self._dir_fd
            )
        except (OSError, RuntimeDirUnusable) as exc:
            self._give_up(f"{exc.strerror if isinstance(exc, OSError) else exc}")
            return
        for _ in range(LOCK_ATTEMPTS):
            try:
                fcntl.flock(self._lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                await trio.sleep(0.05)
            else:
                self._locked = True
                return
        self._give_up(f"another agent holds {self.runtime_dir / LOCK_FILE}")

    def _give_up(self, why: str) -> None:
        hint = "p0-ssh-agent status cannot see this agent; set runtimeDir"
        log.warning("live_state_unavailable", runtime_dir=str(self.runtime_dir), error=why, hint=hint)
        self._close()

    def write_now(self) -> None:
        if not self._locked or self._dir_fd is None:
            return
        try:
            replace_file(self._dir_fd, STATE_FILE, self._state(), mode=STATE_MODE)
        except OSError as exc:
            log.warning("live_state_write_failed", path=str(self.runtime_dir / STATE_FILE), error=exc.strerror)
        self._write_metrics()

    def _write_metrics(self) -> None:
        path = self.metrics_file
        try:
            fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                replace_file(fd, path.name, self._metrics(), mode=METRICS_MODE, gid=self.metrics_gid)
            finally:
                os.close(fd)
        except OSError as exc:
            if not self._metrics_failing:  # once, not every five seconds
                log.warning("metrics_write_failed", path=str(path), error=exc.strerror or type(exc).__name__)
            self._metrics_failing = True
            return
        if self._metrics_failing:
            self._metrics_failing = False
            log.info("metrics_write_recovered", path=str(path))

    def _close(self) -> None:
        """On the way out: no state file for a stopped agent, no metrics saying it is connected. Only the lock's
        holder removes anything: another agent's files are not ours."""
        if self._locked and self._dir_fd is not None:
            with contextlib.suppress(OSError):
                os.unlink(STATE_FILE, dir_fd=self._dir_fd)
            with contextlib.suppress(OSError):
                self.metrics_file.unlink()
        for fd in (self._lock_fd, self._dir_fd):  # closing the lock file releases the lock
            if fd is not None:
                os.close(fd)
        self._lock_fd = self._dir_fd = None
        self._locked = False
