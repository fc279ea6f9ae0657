"""`p0-ssh-agent version`: print the version and the Python it runs on."""

from __future__ import annotations

import argparse
import platform
from typing import Any

from p0_ssh_agent._version import __version__


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    return subparsers.add_parser(  # type: ignore[no-any-return]
        "version", parents=parents, help="print the version", description="Print the agent's version."
    )


def run(args: argparse.Namespace) -> int:
    print(f"p0-ssh-agent {__version__} (Python {platform.python_version()})")
    return 0
