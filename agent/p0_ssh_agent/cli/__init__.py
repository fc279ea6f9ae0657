"""Command-line entry point: `p0-ssh-agent SUBCOMMAND [options]`.

Each subcommand lives in its own module with two functions:

    add_parser(subparsers, parents) -> argparse.ArgumentParser
    run(args: argparse.Namespace) -> int

Subcommand modules import heavy dependencies (trio, jose, cryptography) inside `run`, so `--help` and the
idle daemon only pay for what they use. When the command line names its subcommand (`p0-ssh-agent start ...`),
only that subcommand's parser is built: the daemon does not import the other eleven modules and what they import
(issue 16: start to READY=1). `help`, and a command line with no subcommand or an unknown one, get the whole tree.
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


def requested_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand module `argv` names, if it names one whose parser is enough on its own; else None.

    Global options may come first (`-c PATH start`): -c/--config takes a value, -v/--verbose does not. Anything
    else before the subcommand (--help, --version, a typo) needs the whole parser, as does `help`."""
    values = iter(argv)
    for word in values:
        if word in ("-c", "--config"):
            next(values, None)
        elif word.startswith("--config=") or (word.startswith("-c") and len(word) > 2) or word in ("-v", "--verbose"):
            continue
        else:
            name = word.replace("-", "_")  # the command line's name of module revoke_all is revoke-all
            return name if name in SUBCOMMANDS and name != "help" and "_" not in word else None
    return None


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The whole command-line tree, or with `only` the one subcommand module's parser under the same top level."""
    parents = [_global_options()]
    parser = argparse.ArgumentParser(
        prog="p0-ssh-agent",
        description="Just-in-time SSH access agent for Linux hosts (P0-compatible).",
        parents=parents,
        epilog="Run 'p0-ssh-agent SUBCOMMAND --help' for the options of one subcommand.",
    )
    parser.add_argument("--version", action="version", version=f"p0-ssh-agent {__version__}")
    subparsers = parser.add_subparsers(dest="subcommand", metavar="SUBCOMMAND")
    for name in SUBCOMMANDS if only is None else (only,):
        sub = _module(name).add_parser(subparsers, parents)
        sub.set_defaults(_module_name=name)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser(requested_subcommand(sys.argv[1:] if argv is None else argv))
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
