"""`p0-ssh-agent adopt`: on a host migrating from P0's Go agent, list its accounts and adopt the ones confirmed.

The evidence, and what adoption allows (keys and sudo rules only, like adoptUsers): provisioning/go_agent_accounts.py.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from p0_ssh_agent.errors import ExitCode, UsageError


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "adopt",
        parents=parents,
        help="list the accounts P0's Go agent created, and adopt the ones you confirm (keys and sudo rules only)",
        description=(
            "On a host migrating from P0's Go agent: --list shows each account shaped like the Go agent's (UID = GID "
            "in 65536-90000, a group of its name) that the ledger does not hold, with its evidence, a rule for it "
            "in the root-owned /etc/sudoers-p0. NAME... records those accounts in the ledger as adopted; one "
            "without evidence is refused (list it under adoptUsers instead). Adopted accounts get keys and sudo "
            "rules only: the agent never locks, unlocks or deletes them."
        ),
    )
    parser.add_argument("--list", action="store_true", help="list the candidates and their evidence; change nothing")
    parser.add_argument("names", nargs="*", metavar="NAME", help="accounts to adopt (as --list shows them)")
    return parser


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.host.audit_trail import AuditTrail
    from p0_ssh_agent.provisioning.engine import Engine
    from p0_ssh_agent.provisioning.go_agent_accounts import adopt, candidates
    from p0_ssh_agent.runtime.statedir import ensure_state_dir, resolve_state_dir

    if args.list == bool(args.names):
        raise UsageError("give either --list or the NAMEs to adopt")
    config = load_config(args.config, missing_ok=True)
    state_dir = resolve_state_dir(config.state_dir, os.environ)
    if not args.list:
        ensure_state_dir(state_dir)
    # Listing changes nothing: a describing engine, which reads a ledger not made yet as an empty one.
    trail = AuditTrail.from_config(config, os.environ)
    engine = Engine.for_run(config, state_dir, dry_run=args.list, audit_trail=trail)
    if args.list:
        found = candidates(engine)
        for candidate in found:
            evidence = ", ".join(candidate.evidence) or "no evidence (adopt refuses it; adoptUsers if it is P0's)"
            print(f"{candidate.name}  UID {candidate.uid}  {evidence}")
        adoptable = sum(1 for candidate in found if candidate.evidence)
        print(f"{len(found)} candidate(s), {adoptable} with evidence: p0-ssh-agent adopt NAME... adopts them")
        return int(ExitCode.OK)
    report = adopt(engine, list(args.names))
    for line in report.done:
        print(f"ok       {line}")
    for line in report.refused:
        print(f"REFUSED  {line}")
    print(f"{len(report.done)} done, {len(report.refused)} refused")
    return int(ExitCode.FAILURE) if report.refused else int(ExitCode.OK)
