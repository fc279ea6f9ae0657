"""`p0-ssh-agent key-store [show|store|home]`: where sshd reads the keys of the accounts the agent created.

The order of each switch, and why it never locks anyone out: provisioning/key_store_mode.py. Run as root from a
shell: under the agent's unit /etc/ssh is read-only, and the command says so.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from p0_ssh_agent.errors import ExitCode

MODES = ("show", "store", "home")


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "key-store",
        parents=parents,
        help="show or switch where sshd reads the agent's keys: the root-owned store, or ~/.ssh/authorized_keys",
        description=(
            "store: install the sshd drop-in (checked with sshd -t), make the store readable to sshd, move the live "
            "grants of the accounts the agent created into root-owned files their users cannot edit, set keyStore: "
            "store and reload sshd. home: the reverse. show (the default): the mode, the drop-in, and whether sshd "
            "honours it. Run as root from a shell, not under the agent's unit; safe to repeat."
        ),
    )
    parser.add_argument("mode", nargs="?", choices=MODES, default="show", help="show (default), store or home")
    return parser


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.config.model import DEFAULT_CONFIG_PATH
    from p0_ssh_agent.host.audit_trail import AuditTrail
    from p0_ssh_agent.provisioning.engine import Engine
    from p0_ssh_agent.provisioning.key_store_mode import show, switch_to_home, switch_to_store
    from p0_ssh_agent.runtime.statedir import ensure_state_dir, resolve_state_dir

    config_path = args.config or DEFAULT_CONFIG_PATH
    config = load_config(args.config, missing_ok=True)
    state_dir = resolve_state_dir(config.state_dir, os.environ)
    trail = AuditTrail.from_config(config, os.environ)
    if args.mode == "show":
        show(Engine.for_run(config, state_dir, dry_run=True, audit_trail=trail), print)
        return int(ExitCode.OK)
    ensure_state_dir(state_dir)
    engine = Engine.for_run(config, state_dir, dry_run=False, audit_trail=trail)
    (switch_to_store if args.mode == "store" else switch_to_home)(engine, config_path, print)
    print(f"keyStore is now {args.mode}")
    return int(ExitCode.OK)
