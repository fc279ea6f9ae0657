"""Help a newcomer can read (issue 15): no project jargon in any subcommand's --help, and dev-backend says what it
is for, which ports do what and how to try it."""

from __future__ import annotations

import subprocess

import pytest

from daemon_helpers import AGENT, BASE_ENV
from p0_ssh_agent.cli import build_parser
from p0_ssh_agent.cli.completion import nodes

JARGON = ("braekhus",)  # the name of P0's tunnel server's source; a reader of --help has no reason to know it


def help_text(*path: str) -> str:
    done = subprocess.run(
        [str(AGENT), *path, "--help"], capture_output=True, text=True, env=BASE_ENV, check=True, timeout=60
    )
    return done.stdout


@pytest.mark.parametrize("path", [n.path for n in nodes(build_parser())], ids=lambda p: " ".join(p) or "top")
def test_no_help_text_uses_jargon(path: tuple[str, ...]) -> None:
    text = help_text(*path).lower()
    assert not [word for word in JARGON if word in text]


def test_dev_backend_help_explains_itself() -> None:
    text = " ".join(help_text("dev-backend").split())
    for phrase in (
        "stand-in for P0's tunnel server",
        "/client/<orgId>:<hostId>:ssh",
        "where agents connect",
        "Example: p0-ssh-agent dev-backend --public-key",
    ):
        assert phrase in text, phrase
