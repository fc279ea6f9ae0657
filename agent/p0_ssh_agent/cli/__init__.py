"""Command-line entry point: `p0-ssh-agent SUBCOMMAND [options]`.

Each subcommand lives in its own module with two functions:

    add_parser(subparsers, parents) -> argparse.ArgumentParser
    run(args: argparse.Namespace) -> int

Subcommand modules import heavy dependencies (trio, jose, cryptography) inside `run`, so `--help` and the
idle daemon only pay for what they use.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from p0_ssh_agent._version import __version__
from p0_ssh_agent.errors import AgentError, ExitCode

# Order here is the order `--help` lists them in.
SUBCOMMANDS: tuple[str, ...] = (
    "start",
    "keygen",
    "register",
    "status",
    "doctor",
    "command",
    "revoke_all",
    "adopt",
    "key_store",
    "policy",
    "dev_backend",
    "version",
    "help",
)


def _module(name: str) -> ModuleType:
    return importlib.import_module(f"p0_ssh_agent.cli.{name}")


def _global_options() -> argparse.ArgumentParser:
    """Options every subcommand accepts, before or after the subcommand name."""
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "-c",
        "--config",
        metavar="PATH",
        default=argparse.SUPPRESS,
        help="configuration file (default: /etc/p0-ssh-agent/config.yaml)",
    )
    parent.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS, help="debug logging")
    return parent


def build_parser() -> argparse.ArgumentParser:
    parents = [_global_options()]
    parser = argparse.ArgumentParser(
        prog="p0-ssh-agent",
        description="Just-in-time SSH access agent for Linux hosts (P0-compatible).",
        parents=parents,
        epilog="Run 'p0-ssh-agent SUBCOMMAND --help' for the options of one subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"p0-ssh-agent {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS:
        sub = _module(name).add_parser(subparsers, parents)
        sub.set_defaults(_module_name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # argparse exits 2 on usage errors; sysexits says 64
        code = exc.code if isinstance(exc.code, int) else ExitCode.USAGE
        return int(ExitCode.USAGE) if code == 2 else code
    if not hasattr(args, "config"):
        args.config = None
    if not hasattr(args, "verbose"):
        args.verbose = False
    if args.subcommand is None:
        parser.print_help()
        return int(ExitCode.USAGE)
    args.parser = parser
    # Every subcommand logs through the same redacting configuration, not just the daemon.
    from p0_ssh_agent.adapters.logging import configure_logging

    configure_logging(verbose=args.verbose)
    try:
        return int(_module(args._module_name).run(args))
    except AgentError as exc:
        print(f"p0-ssh-agent {args.subcommand}: {exc}", file=sys.stderr)
        return int(exc.exit_code)
    except KeyboardInterrupt:
        return 130
