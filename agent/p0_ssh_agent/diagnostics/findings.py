"""One health finding and its text rendering, shared by `status` (is the agent healthy?) and `doctor` (what on this
host breaks grants?), so both read the same way: `[warn] name  detail`, its items, then `fix: ...`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

Level = Literal["ok", "warn", "fail", "skip"]
MARKS: dict[str, str] = {"ok": "ok  ", "warn": "warn", "fail": "FAIL", "skip": "skip"}


@dataclass(frozen=True)
class Finding:
    """One result. `items` lists what it counted (drift, mislabelled paths), for --json and the text report."""

    name: str
    level: Level
    detail: str
    fix: str = ""
    items: tuple[str, ...] = ()


def render(findings: Sequence[Finding], *, all_clear: str) -> str:
    """One line per finding, its items and its fix (unless ok) indented under it, then a verdict line."""
    width = max(len(f.name) for f in findings)
    pad = " " * (width + 9)
    lines = []
    for f in findings:
        lines.append(f"[{MARKS[f.level]}] {f.name.ljust(width)}  {f.detail}")
        lines += [f"{pad}- {item}" for item in f.items]
        if f.fix and f.level != "ok":
            lines.append(f"{pad}fix: {f.fix}")
    failed = sum(f.level == "fail" for f in findings)
    lines.append(all_clear if not failed else f"{failed} check(s) failed")
    return "\n".join(lines)
