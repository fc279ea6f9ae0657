"""Figures the reliability tests publish: appended as JSON lines to $P0_RELIABILITY_REPORT when it is set.

`make reliability` (tests/reliability/run.py) sets it, runs the tests and renders docs/reliability.md from them;
under plain pytest nothing is written.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

REPORT_ENV = "P0_RELIABILITY_REPORT"


def record(**figures: int | str) -> None:
    target = os.environ.get(REPORT_ENV)
    if target:
        with Path(target).open("a", encoding="utf-8") as out:
            out.write(json.dumps(figures) + "\n")
