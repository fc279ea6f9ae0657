"""`make run` (`p0-ssh-agent dev-backend --demo-once`) end to end: the grants, then the agent-access dry run, run as
an ordinary account in the namespace sandbox (where a developer runs it) and as root (where it is refused), and the
machine's /etc and accounts unchanged by it. `tests/sandbox/enter .venv/bin/pytest -q tests/test_demo_sandbox.py`.
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

import pytest

from p0_ssh_agent.config.model import KEY_BY_NAME
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox
AGENT = Path(sys.executable).parent / "p0-ssh-agent"
DEMO = [str(AGENT), "dev-backend", "--demo-once", "--rpc-listen", "127.0.0.1:0", "--http-listen", "127.0.0.1:0"]
needs_agent_access = pytest.mark.skipif(
    "agentAccess" not in KEY_BY_NAME, reason="this build has no agent access yet (the demo says so and skips it)"
)


def etc_digest() -> dict[str, str]:
    watched = [Path("/etc/passwd"), Path("/etc/group"), Path("/etc/shadow"), *Path("/etc").glob("p0-ssh-agent/**/*")]
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in watched if p.is_file()}


def demo(*prefix: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*prefix, *DEMO],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        cwd="/tmp",
        env={"PATH": "/usr/bin:/bin"},
    )


@needs_agent_access
def test_as_an_ordinary_account_the_demo_shows_a_dry_run_operation(sandbox: Sandbox) -> None:
    name = unique_user_name()
    sandbox.useradd(name)
    try:
        before = etc_digest()
        done = demo("/usr/sbin/runuser", "-u", name, "--")
        after = etc_digest()
    finally:
        sandbox.userdel(name)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    section = done.stdout.partition(f"Agent access (a dry run as {name}):")[2]
    assert "HTTP 200" in section and f"DRY-RUN: Would execute ssh_dir_list for user {name}" in section, section
    assert '"dry_run": true' in section and "demo:host-pinned-read" in section and "nothing was run" in section
    assert "eyJ" not in done.stdout + done.stderr  # the UCAN is shown by its length only
    assert before == after


@needs_agent_access
def test_as_root_the_operation_is_refused_and_the_demo_says_why() -> None:
    done = demo()
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    section = done.stdout.partition("Agent access (a dry run as root):")[2]
    assert "HTTP 403" in section and "agent access never runs as root" in section, section
    assert "expected when the demo runs as root" in section
