"""`p0-ssh-agent revoke-all`: revoke every grant in the agent's ledger (keys, sudo rules, created users)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from p0_ssh_agent.errors import ExitCode

USER_MODES = ("keep", "lock", "delete")


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "revoke-all",
        parents=parents,
        help="revoke every grant this agent made on the host (run before removing the package)",
        description=(
            "Remove every key, CA line and sudo rule in the agent's ledger, and keep, lock or delete the users it "
            "created. Adopted users keep their accounts. Safe to repeat; safe while the daemon runs."
        ),
    )
    parser.add_argument(
        "--users",
        choices=USER_MODES,
        help="what happens to the accounts the agent created (default: userRevokeMode from the config, lock)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print what would be revoked; change nothing")
    return parser


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.host.actions import Description
    from p0_ssh_agent.host.audit_trail import AuditTrail
    from p0_ssh_agent.provisioning.engine import Engine
    from p0_ssh_agent.provisioning.revoke_everything import revoke_all
    from p0_ssh_agent.runtime.statedir import resolve_state_dir

    config = load_config(args.config, missing_ok=True)
    state_dir = resolve_state_dir(config.state_dir, os.environ)
    plan = Description()
    trail = AuditTrail.from_config(config, os.environ)
    engine = Engine.for_run(config, state_dir, dry_run=args.dry_run, audit_trail=trail)
    report = revoke_all(engine, args.users or config.user_revoke_mode, plan)
    for line in report.done:
        print(f"ok      {line}")
    for line in report.failed:
        print(f"FAILED  {line}")
    if args.dry_run and plan.steps:
        print("\nplan:\n" + plan.text())
    print(
        f"{len(report.done)} done, {len(report.failed)} failed"
        + (" (dry run: nothing changed)" if args.dry_run else "")
    )
    return int(ExitCode.FAILURE) if report.failed else int(ExitCode.OK)
