"""`p0-ssh-agent status`: is the agent running and connected, and is this host set up correctly? The checks are
diagnostics/status_checks.py (with doctor's configuration check and the running agent's, diagnostics/live_checks.py);
this module parses the arguments and renders them as text or JSON.

Read-only: it creates nothing (not even the state directory) and never prints key material, only the key's
RFC 7638 thumbprint and SSH key fingerprints. Exit codes (diagnostics/live_checks.py): 0 only when the agent runs,
is connected and every check passes (warnings allowed).

It also lists the live grants from the ledger (age, expiry under maxGrantSeconds) and the drift a read-only
reconciliation finds between the ledger and the host (provisioning/reconcile.py); drift is a warning, never a failure.
"""

from __future__ import annotations

import argparse
import json
import os
from dataclasses import asdict
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from p0_ssh_agent.diagnostics.findings import Finding, render
from p0_ssh_agent.diagnostics.live_checks import live_json, state_word

if TYPE_CHECKING:  # imported inside run(): the checks pull in trio, and --help stays small
    from p0_ssh_agent.diagnostics.status_checks import GuardView
    from p0_ssh_agent.provisioning.expiry import LiveGrant


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        parents=parents,
        help="check configuration, keys, directories and the systemd unit",
        description="Check that this host is set up to run the agent, and say how to fix what is not.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expires(grant: LiveGrant, now: datetime) -> str:
    if grant.expires_at is None:
        return "never (backend revokes)"
    left = (grant.expires_at - now).total_seconds()
    when = _stamp(grant.expires_at)
    return f"{when} (in {_duration(left)})" if left > 0 else f"{when} (overdue {_duration(left)})"


def render_guard(view: GuardView) -> str:
    lines = [f"live grants ({len(view.grants)}):"]
    rows = [
        (g.kind, g.user, g.request_id, _duration(g.age(view.now).total_seconds()), _expires(g, view.now), g.detail)
        for g in view.grants
    ]
    if rows:
        header = ("KIND", "USER", "REQUEST", "AGE", "EXPIRES", "DETAIL")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    lines.append(f"drift ({len(view.drift)}):")
    for d in view.drift:
        where = " ".join(part for part in (d.user, d.request_id) if part)
        lines.append(f"  {d.kind:<13} {where}  {d.path}: {d.detail}")
    return "\n".join(lines)


def guard_json(view: GuardView) -> dict[str, Any]:
    return {
        "grants": [
            {
                "kind": g.kind,
                "user": g.user,
                "request_id": g.request_id,
                "granted_at": _stamp(g.granted_at),
                "age_seconds": int(g.age(view.now).total_seconds()),
                "expires_at": _stamp(g.expires_at) if g.expires_at else None,
                "expires_in_seconds": int((g.expires_at - view.now).total_seconds()) if g.expires_at else None,
                "detail": g.detail,
            }
            for g in view.grants
        ],
        "drift": [asdict(d) for d in view.drift],
    }


def render_text(checks: list[Finding]) -> str:
    return render(checks, all_clear="all checks passed")


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.diagnostics.status_checks import collect

    status = collect(args.config, os.environ)
    checks = status.checks
    code = status.exit_code
    if args.json:
        document: dict[str, Any] = {
            "ok": code == 0,
            "exit_code": code,
            "state": state_word(code, status.live),
            "checks": [asdict(c) for c in checks],
            "agent": live_json(status.live),
        }
        if status.guard is not None:
            document.update(guard_json(status.guard))
        print(json.dumps(document, indent=2))
    else:
        print(render_text(checks))
        if status.guard is not None:
            print("\n" + render_guard(status.guard))
    return code
