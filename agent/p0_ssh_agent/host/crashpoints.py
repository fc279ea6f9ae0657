"""Crash points: where a test may kill the agent with SIGKILL, one effect on the host at a time (issue 14 item 8).

Every effect the host layer has on the machine calls `step(what)` just before it happens: each write, rename,
unlink, mkdir, chmod/chown and fsync of safefile.py, rootfile.py and ledger_files.py, and each subprocess
(proc.py) and fork (uidkill.py). Off by default: `step` is a single comparison then, and nothing changes.

tests/test_crash_points.py forks a child per crash point and calls `arm(k)` in it: the child then counts the
steps it takes and kills itself at the k-th, just before that effect, so the host is left exactly as the first
k - 1 effects made it. `arm(0)` only counts (and names) the steps, to learn how many a change has. Nothing in the
agent calls `arm`: the daemon never reads a setting for it, from its config or its environment.
"""

from __future__ import annotations

import os
import signal
from dataclasses import dataclass, field


@dataclass
class _Arming:
    at_step: int | None = None  # None: off; 0: count only; k > 0: SIGKILL just before the k-th step
    taken: list[str] = field(default_factory=list)


_ARMING = _Arming()


def arm(at_step: int) -> None:
    """Count steps from now on, and kill this process just before step `at_step` (0: never, only count)."""
    if at_step < 0:
        raise ValueError(f"crashpoints.arm: a step number is 0 or more, got {at_step}")
    _ARMING.at_step = at_step
    _ARMING.taken.clear()


def taken() -> list[str]:
    """The steps taken since `arm`, in order, each named as `step` was told."""
    return list(_ARMING.taken)


def step(what: str) -> None:
    """The caller is about to change the host (`what` names the effect): the place a crash point may fire."""
    if _ARMING.at_step is None:
        return
    _ARMING.taken.append(what)
    if len(_ARMING.taken) == _ARMING.at_step:
        os.write(2, f"crash point {_ARMING.at_step}: before {what}\n".encode())
        os.kill(os.getpid(), signal.SIGKILL)
