"""Bash completion for p0-ssh-agent, generated from the argparse tree (`build_parser()`), so it cannot drift.

    python -m p0_ssh_agent.cli.completion > packaging/p0-ssh-agent.bash-completion

The packages install that file as /usr/share/bash-completion/completions/p0-ssh-agent; tests/test_completion.py
fails when it differs from what this module generates now, and runs it in a real bash to check that every
subcommand and every flag is offered. Written here rather than with shtab: some sixty lines, no dependency, and
the few value hints (file, directory, fixed words) come from the parser's own metavars and choices.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from p0_ssh_agent.core.requests import Action, Command
from p0_ssh_agent.runtime.metrics import ACCESS_COMMANDS

# Metavars that name a path: complete files or directories for them.
FILE_METAVARS = frozenset({"PATH", "FILE", "REQUEST.json"})
DIR_METAVARS = frozenset({"DIR"})
# Values the parser does not restrict (argparse choices would make a typo's error worse) but that have a fixed
# set of useful answers.
VALUE_WORDS: dict[str, tuple[str, ...]] = {
    "--command": (*(command.value for command in Command), *sorted(ACCESS_COMMANDS)),  # ssh_*: --dry-run only
    "--action": tuple(action.value for action in Action),
}


@dataclass
class Node:
    """One parser in the tree: its path of subcommand names, options, subcommands and value hints."""

    path: tuple[str, ...]
    options: list[str] = field(default_factory=list)
    subcommands: list[str] = field(default_factory=list)
    values: dict[str, str] = field(default_factory=dict)  # option -> "files", "dirs", "words:a b c" or "none"
    positional: str = "none"  # what a bare word completes to when there are no subcommands


def _hint(action: argparse.Action) -> str:
    if action.choices is not None and not isinstance(action, argparse._SubParsersAction):
        return "words:" + " ".join(str(choice) for choice in action.choices)
    for option in action.option_strings:
        if option in VALUE_WORDS:
            return "words:" + " ".join(VALUE_WORDS[option])
    metavar = action.metavar if isinstance(action.metavar, str) else ""
    if metavar in FILE_METAVARS:
        return "files"
    if metavar in DIR_METAVARS:
        return "dirs"
    return "none"


def nodes(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[Node]:
    node = Node(path)
    found = [node]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                node.subcommands.append(name)
                found += nodes(child, (*path, name))
        elif action.option_strings:
            node.options += action.option_strings
            if action.nargs != 0:
                for option in action.option_strings:
                    node.values[option] = _hint(action)
        elif action.metavar == "SUBCOMMAND" or action.dest == "topic":
            node.positional = "subcommands"
        else:
            node.positional = _hint(action)
    return found


def _case(node: Node, body: str) -> str:
    return f'        "{" ".join(node.path)}") {body} ;;'


def generate(parser: argparse.ArgumentParser) -> str:
    tree = nodes(parser)
    top = tree[0]
    words = [_case(n, f'echo "{" ".join(n.subcommands + n.options)}"') for n in tree]
    valued = [_case(n, f'echo "{" ".join(n.values)}"') for n in tree if n.values]
    hints = []
    for n in tree:
        branches = " ".join(f'{option}) echo "{hint}" ;;' for option, hint in n.values.items())
        hints.append(_case(n, f'case "$2" in {branches} *) echo "none" ;; esac'))
    positional = [_case(n, f'echo "{n.positional}"') for n in tree if n.positional != "none"]
    subcommands = [_case(n, f'echo "{" ".join(n.subcommands)}"') for n in tree if n.subcommands]
    return f"""# bash completion for p0-ssh-agent, generated from its argparse tree by p0_ssh_agent.cli.completion.
# Do not edit; regenerate: python -m p0_ssh_agent.cli.completion > packaging/p0-ssh-agent.bash-completion

_p0_ssh_agent_words() {{
    case "$1" in
{chr(10).join(words)}
    esac
}}

_p0_ssh_agent_valued() {{
    case "$1" in
{chr(10).join(valued)}
    esac
}}

_p0_ssh_agent_hint() {{
    case "$1" in
{chr(10).join(hints)}
    esac
}}

_p0_ssh_agent_positional() {{
    case "$1" in
{chr(10).join(positional)}
        *) echo "none" ;;
    esac
}}

_p0_ssh_agent_subcommands() {{
    case "$1" in
{chr(10).join(subcommands)}
    esac
}}

_p0_ssh_agent_reply() {{
    case "$1" in
        files) COMPREPLY=($(compgen -f -- "$2")) ;;
        dirs) COMPREPLY=($(compgen -d -- "$2")) ;;
        subcommands) COMPREPLY=($(compgen -W "{" ".join(top.subcommands)}" -- "$2")) ;;
        words:*) COMPREPLY=($(compgen -W "${{1#words:}}" -- "$2")) ;;
        *) COMPREPLY=() ;;
    esac
}}

_p0_ssh_agent() {{
    local cur="${{COMP_WORDS[COMP_CWORD]}}" path="" word i skip=0
    # Walk the words before the cursor: a subcommand name descends, an option that takes a value skips it.
    for ((i = 1; i < COMP_CWORD; i++)); do
        word="${{COMP_WORDS[i]}}"
        if ((skip)); then skip=0; continue; fi
        if [[ " $(_p0_ssh_agent_valued "$path") " == *" $word "* ]]; then skip=1; continue; fi
        if [[ " $(_p0_ssh_agent_subcommands "$path") " == *" $word "* ]]; then path="${{path:+$path }}$word"; fi
    done
    if ((skip)); then
        _p0_ssh_agent_reply "$(_p0_ssh_agent_hint "$path" "${{COMP_WORDS[COMP_CWORD - 1]}}")" "$cur"
        return
    fi
    local positional
    positional="$(_p0_ssh_agent_positional "$path")"
    if [[ "$cur" == -* || -n "$(_p0_ssh_agent_subcommands "$path")" || "$positional" == none ]]; then
        COMPREPLY=($(compgen -W "$(_p0_ssh_agent_words "$path")" -- "$cur"))
        return
    fi
    _p0_ssh_agent_reply "$positional" "$cur"
}}

complete -F _p0_ssh_agent p0-ssh-agent
"""


def main() -> int:
    from p0_ssh_agent.cli import build_parser

    sys.stdout.write(generate(build_parser()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
