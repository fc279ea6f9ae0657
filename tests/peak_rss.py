"""Run a command and record its own peak resident set size, unpolluted by the process that started it.

A child forked from pytest starts with pytest's resident pages counted as its own, and that high-water mark
survives exec (the kernel keeps the larger of the old and new maxrss), so `wait4` on a process forked from a large
pytest reports pytest's size: 291 MiB late in the full suite, whatever the agent used. This small wrapper is forked
from pytest instead; its child, forked from the wrapper (a bare interpreter, some 10 MiB), is what is measured.

Usage: python peak_rss.py RSS_FILE ARGV...  Writes the child's ru_maxrss in bytes to RSS_FILE, forwards SIGTERM and
SIGINT to the child, and exits with the child's exit code.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

WRAPPER = Path(__file__)


def measured_argv(rss_file: Path, argv: list[str]) -> list[str]:
    """The argv that runs argv under this wrapper, writing its peak RSS to rss_file."""
    return [sys.executable, "-I", str(WRAPPER), str(rss_file), *argv]


def read_peak_rss(rss_file: Path) -> int:
    return int(rss_file.read_text())


def main(rss_file: str, argv: list[str]) -> int:
    pid = os.posix_spawn(argv[0], argv, os.environ)
    for forwarded in (signal.SIGTERM, signal.SIGINT):
        signal.signal(forwarded, lambda signum, _frame: os.kill(pid, signum))
    while True:
        try:
            _pid, status, usage = os.wait4(pid, 0)
            break
        except InterruptedError:  # pragma: no cover - PEP 475 retries; kept for clarity
            continue
    Path(rss_file).write_text(str(usage.ru_maxrss * 1024))
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2:]))
