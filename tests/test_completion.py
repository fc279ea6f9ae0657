"""Bash completion (issue 15): the packaged file is exactly what the argparse tree generates now (so it cannot
drift), and a real bash, given the file, offers every subcommand and every flag of every subcommand."""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

from p0_ssh_agent.cli import build_parser
from p0_ssh_agent.cli.completion import generate, nodes

PACKAGED = Path(__file__).resolve().parents[1] / "packaging" / "p0-ssh-agent.bash-completion"
BASH = "/bin/bash"


def completions(*lines: list[str]) -> list[set[str]]:
    """COMPREPLY for each command line (the last word is the one being completed), from one real bash."""
    script = [f"source {shlex.quote(str(PACKAGED))}"]
    for words in lines:
        script.append(f"COMP_WORDS=({' '.join(shlex.quote(w) for w in words)}); COMP_CWORD={len(words) - 1}")
        script.append('COMPREPLY=(); _p0_ssh_agent; printf "%s " "${COMPREPLY[@]}"; echo')
    done = subprocess.run([BASH, "--norc", "-c", "\n".join(script)], capture_output=True, text=True, check=True)
    assert done.stderr == ""
    return [set(line.split()) for line in done.stdout.splitlines()]


def test_the_packaged_file_is_what_the_parser_generates() -> None:
    assert PACKAGED.read_text() == generate(build_parser()), (
        "regenerate: python -m p0_ssh_agent.cli.completion > packaging/p0-ssh-agent.bash-completion"
    )


def test_every_subcommand_and_every_flag_is_offered() -> None:
    tree = nodes(build_parser())
    assert {" ".join(n.path) for n in tree} >= {"start", "register", "status", "doctor", "policy check", "dev-backend"}
    flags = [["p0-ssh-agent", *n.path, "-"] for n in tree]
    subcommands = [["p0-ssh-agent", *n.path, ""] for n in tree if n.subcommands]
    got = completions(*flags, *subcommands)
    for node, offered in zip(tree, got, strict=False):
        assert set(node.options) <= offered, (node.path, set(node.options) - offered)
        assert all(option.startswith("-") for option in node.options)
    for node, offered in zip([n for n in tree if n.subcommands], got[len(flags) :], strict=True):
        assert set(node.subcommands) <= offered, node.path
    assert len(tree) == 1 + sum(len(n.subcommands) for n in tree)  # every subcommand, nested ones too
    assert {("policy", "check"), ("dev-backend", "call")} <= {n.path for n in tree}


def test_values_complete_from_choices_paths_and_known_words(tmp_path: Path) -> None:
    (tmp_path / "policy.cedar").write_text("")
    (tmp_path / "keys").mkdir()
    output, users, command, policy, key_dir, after_value, topic = completions(
        ["p0-ssh-agent", "register", "--output", ""],
        ["p0-ssh-agent", "revoke-all", "--users", "l"],
        ["p0-ssh-agent", "command", "--command", "list"],
        ["p0-ssh-agent", "policy", "check", "--policy", str(tmp_path / "pol")],
        ["p0-ssh-agent", "keygen", "--key-path", str(tmp_path / "k")],
        ["p0-ssh-agent", "-c", "/etc/x.yaml", "status", "--j"],  # a global option's value is skipped
        ["p0-ssh-agent", "help", "do"],
    )
    assert output == {"json", "yaml"} and users == {"lock"} and command == {"listUsers"}
    assert policy == {str(tmp_path / "policy.cedar")} and key_dir == {str(tmp_path / "keys")}
    assert after_value == {"--json"} and topic == {"doctor"}
