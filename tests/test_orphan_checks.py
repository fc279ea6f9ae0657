"""`p0-ssh-agent doctor`'s orphans finding (issue 12): agent sudo rules and agent-marked key lines on the host that
no ledger knows about, e.g. after a purge that deleted the ledger while the grants stayed. Real grants through the
engine in the namespace sandbox (real useradd, authorized_keys, visudo), then the installed command.

`tests/sandbox/enter .venv/bin/pytest -q tests/test_orphan_checks.py`
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.identity.signing_key import generate_keys
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from sandbox.fixtures import Sandbox, unique_user_name
from test_doctor import KEY, digest

AGENT = Path(sys.executable).with_name("p0-ssh-agent")
pytestmark = pytest.mark.sandbox


def grant(state: Path, user: str, request_id: str) -> None:
    engine = Engine.on_host(AgentConfig(state_dir=state), state, audit_trail=AuditTrail.off())
    for command, fields in (
        ("provisionUser", {"userName": user}),
        ("provisionAuthorizedKeys", {"userName": user, "publicKey": KEY}),
        ("provisionSudo", {"userName": user, "sudo": True}),
    ):
        data: dict[str, object] = {"command": command, "action": "grant", "requestId": request_id, **fields}
        result = run_change(engine, parse_change(command, data)).result
        assert result.success, result.error


def doctor_findings(tmp_path: Path, state: Path) -> dict[str, dict[str, object]]:
    keys = tmp_path / "keys"
    if not keys.exists():
        generate_keys(keys)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"orgId: acme\nhostId: web-1\ntunnelHost: wss://backend.invalid\nkeyPath: {keys}\nstateDir: {state}\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("P0_SSH_AGENT_") and k != "STATE_DIRECTORY"}
    done = subprocess.run(
        [str(AGENT), "doctor", "--offline", "--json", "--config", str(config)],
        capture_output=True,
        text=True,
        check=False,
        env=env,
        timeout=60,
    )
    assert done.returncode in (0, 1), done.stderr
    return {c["name"]: c for c in json.loads(done.stdout)["checks"]}


def test_grants_left_without_a_ledger_are_reported_with_their_fix(sandbox: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    user = unique_user_name()
    grant(state, user, "req-orphan")
    known = doctor_findings(tmp_path, state)["orphans"]
    # The sandbox is shared: an earlier test's leftovers are real orphans; none may be this test's grants, which
    # the ledger holds.
    assert not [i for i in known.get("items") or [] if f" {user} " in str(i)], f"the ledger knows every grant: {known}"  # type: ignore[attr-defined]

    shutil.rmtree(state)  # what a purge did before issue 12: the ledger gone, the grants in place
    watched = (Path("/etc/sudoers.d"), Path("/home"), Path("/etc/passwd"))
    before = digest(*watched)
    orphans = doctor_findings(tmp_path, state)["orphans"]
    assert digest(*watched) == before, "doctor changes nothing"
    assert orphans["level"] == "warn"
    assert f"there is no ledger at {state}/ledger/users" in str(orphans["detail"])
    items = [str(item) for item in orphans["items"]]  # type: ignore[attr-defined]
    assert any(i.startswith(f"sudo {user} req-orphan /etc/sudoers.d/p0-ssh-agent: rule '{user} ALL=") for i in items)
    assert any(i.startswith(f"key {user} req-orphan /home/{user}/.ssh/authorized_keys: 1 line(s)") for i in items)
    assert "revoke-all" in str(orphans["fix"]) and "# RequestID: <id>" in str(orphans["fix"])


def test_a_marked_key_line_the_ledger_does_not_hold_is_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    """With a ledger: a pair under another request's marker (the Go agent's, or a lost grant's) is an orphan."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    user = unique_user_name()
    grant(state, user, "req-known")
    keys = Path("/home", user, ".ssh", "authorized_keys")
    keys.write_text(keys.read_text() + f"# RequestID: req-go-agent\n{KEY}\n")
    orphans = doctor_findings(tmp_path, state)["orphans"]
    assert orphans["level"] == "warn" and "not in the ledger" in str(orphans["detail"])
    # Only this test's account: the sandbox is shared, and an earlier test's orphans are real orphans too.
    mine = [str(i) for i in orphans["items"] if f" {user} " in str(i)]  # type: ignore[attr-defined]
    assert mine == [f"key {user} req-go-agent {keys}: 1 line(s) under the marker, in no ledger"]
