"""`p0-ssh-agent doctor`: find what on this host breaks grants (diagnostics/checks.py), and say how to fix each thing.

Rendered like `status`: one line per finding, its fix under it, or `--json`. Exit 0 when nothing fails, 1 when a
finding fails, 78 when the configuration cannot be loaded (nothing is checked then).
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from p0_ssh_agent.diagnostics.checks import Finding


def _timeout(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value <= 300:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 300")
    return value


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "doctor",
        parents=parents,
        help="find what on this host breaks grants: sshd, sudo, SELinux, NSS, clock, proxy, TLS, ledger",
        description="Check what makes grants fail on this host and say how to fix each thing. Changes nothing.",
        epilog="Exit status: 0 when no check fails (warnings allowed), 1 when one does, 78 for a bad configuration.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    parser.add_argument("--offline", action="store_true", help="skip the network checks (proxy, TLS, clock)")
    parser.add_argument(
        "--timeout", type=_timeout, default=10.0, metavar="SECONDS", help="per network step (default: 10)"
    )
    return parser


def render_text(findings: list[Finding]) -> str:
    from p0_ssh_agent.diagnostics.findings import render

    return render(findings, all_clear="no check failed")


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.diagnostics.checks import collect, exit_code

    config = load_config(args.config, env=os.environ)  # ConfigError: main prints it, exit 78
    findings = collect(config, os.environ, offline=args.offline, timeout=args.timeout)
    code = exit_code(findings)
    if args.json:
        print(json.dumps({"ok": code == 0, "checks": [asdict(f) for f in findings]}, indent=2))
    else:
        print(render_text(findings))
    return code
