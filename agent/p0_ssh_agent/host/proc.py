"""Run one host tool: an argv list with an absolute path, no shell, a minimal environment, a deadline.

Every subprocess the host layer starts goes through `run`, so the rules hold in one place: argv[0] is an absolute
path (no PATH lookup can be hijacked, upstream-protocol.md §12 item 23), the child gets only PATH and LC_ALL=C (so
messages are in English and parseable, and nothing from the daemon's environment leaks into it), stdin is closed
unless `input` is given, and a deadline kills a wedged tool. `run` is synchronous: async callers run it in a worker
thread.

    CommandFailed         the tool ran and exited non-zero (or could not be started: returncode 127)
    └── CommandTimedOut   the tool did not finish before its deadline and was killed
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import crashpoints

CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}
STDERR_IN_MESSAGE = 500
# The shell's convention for "command not found", used when exec itself fails.
EXIT_CANNOT_RUN = 127


@dataclass(frozen=True)
class ProcResult:
    argv: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str


class CommandFailed(AgentError):
    """A host tool exited non-zero; `result` keeps its argv, exit code and full output."""

    def __init__(self, result: ProcResult) -> None:
        self.result = result
        super().__init__(self._describe(result))

    @staticmethod
    def _describe(result: ProcResult) -> str:
        stderr = result.stderr.strip()[:STDERR_IN_MESSAGE]
        detail = f": {stderr}" if stderr else ""
        return f"{result.argv[0]} failed with exit code {result.returncode}{detail}"


class CommandTimedOut(CommandFailed):
    """A host tool ran past its deadline and was killed."""

    def __init__(self, result: ProcResult, timeout: float) -> None:
        self.timeout = timeout
        super().__init__(result)
        self.args = (f"{result.argv[0]} did not finish within {timeout:g} s and was killed",)


def run(argv: Sequence[str], *, timeout: float = 60, check: bool = True, input: str | None = None) -> ProcResult:
    """Run argv and return its result; with `check`, raise CommandFailed on a non-zero exit."""
    args = tuple(argv)
    if not args or not Path(args[0]).is_absolute():
        # A programming error, not an operator's: every caller passes a resolved absolute path.
        raise ValueError(f"run() needs an absolute executable path, got {args[:1]!r}")
    crashpoints.step(f"run {' '.join(args)}")
    try:
        child = subprocess.Popen(
            args,
            stdin=subprocess.DEVNULL if input is None else subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            encoding="utf-8",
            errors="replace",
            env=CHILD_ENV,
            close_fds=True,
            # Its own process group, so a deadline kills helpers it forked too; they would otherwise hold the
            # output pipes open and keep us waiting after the tool itself is dead.
            start_new_session=True,
        )
    except OSError as exc:
        result = ProcResult(args, EXIT_CANNOT_RUN, "", f"cannot run: {exc.strerror or exc}")
        if check:
            raise CommandFailed(result) from None
        return result
    with child:
        try:
            stdout, stderr = child.communicate(input, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(child)
            stdout, stderr = child.communicate()
            raise CommandTimedOut(ProcResult(args, -signal.SIGKILL, stdout, stderr), timeout) from None
        except BaseException:
            _kill_group(child)  # interrupted (KeyboardInterrupt, a cancelled worker): leave nothing running
            raise
    result = ProcResult(args, child.returncode, stdout, stderr)
    if check and result.returncode != 0:
        raise CommandFailed(result)
    return result


def _kill_group(child: subprocess.Popen[str]) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone, group and all
        os.killpg(child.pid, signal.SIGKILL)
    child.wait()


def which(name: str, candidates: Sequence[str]) -> str | None:
    """The first of `candidates` (absolute paths ending in /`name`) that is an executable file, else None.

    No PATH search on purpose: the daemon's PATH is not trusted to pick what runs as root.
    """
    for path in candidates:
        candidate = Path(path)
        if candidate.name != name:
            raise ValueError(f"which({name!r}): candidate {path!r} names a different program")
        if candidate.is_absolute() and candidate.is_file() and os.access(candidate, os.X_OK):
            return path
    return None
