"""`p0-ssh-agent help [SUBCOMMAND]`: the same text as `--help`."""

from __future__ import annotations

import argparse
from typing import Any

from p0_ssh_agent.errors import UsageError


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "help", parents=parents, help="show help for the agent or one subcommand"
    )
    parser.add_argument("topic", nargs="?", metavar="SUBCOMMAND", help="subcommand to explain")
    return parser


def run(args: argparse.Namespace) -> int:
    parser: argparse.ArgumentParser = args.parser
    if args.topic is None:
        parser.print_help()
        return 0
    for action in parser._subparsers._group_actions if parser._subparsers else ():
        choices = getattr(action, "choices", None)
        if isinstance(choices, dict) and args.topic in choices:
            choices[args.topic].print_help()
            return 0
    raise UsageError(f"no such subcommand {args.topic!r}; run 'p0-ssh-agent help' for the list")
