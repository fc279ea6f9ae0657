"""kill -9 at random points during grants and revokes: nothing is ever lost or left broken.

A driver process (tests/reliability/crash_driver.py) runs random key, CA and sudo grants and revokes for a few
users through the real provisioning engine, in the namespace sandbox. The test kills it with SIGKILL after a random
few milliseconds, checks the host, and starts it again, until enough operations were attempted
(P0_CRASH_OPS, default 300 for `make test`; `make reliability` runs 1,000). After every kill:

* every authorized_keys parses into the users' own lines plus marker pairs, and the users' own lines are all
  there, byte for byte and in order;
* the sudoers drop-in (if any) parses as the agent's own file, and `visudo -c` passes for the whole tree;
* the ledger loads.
At the end, one more uninterrupted operation per user removes any temp file the kills left behind, and the
reconciliation a restarted agent runs repairs whatever drift the kills left, so that a second pass finds none.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.authorized_keys_format import MARKER_PREFIX
from p0_ssh_agent.core.sudoers import parse_dropin
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import load_ledger
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.reconcile import reconcile
from reliability.figures import record
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox

TESTS = Path(__file__).parent
OWN_LINES = [
    b"# my own comment",
    b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIEjOwn6Nz/cwJZdz5D5mrbD3hGGo4lJeIBeoN5lOcnfc mine",
]
DROPIN = Path("/etc/sudoers.d/p0-ssh-agent")


def _start(state: Path, seed: int, users: list[str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "reliability.crash_driver", str(state), str(seed), *users],
        cwd=TESTS,
        env={**os.environ, "PYTHONPATH": str(TESTS)},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _check_host(users: list[str], homes: dict[str, Path], state: Path) -> None:
    for user in users:
        data = (homes[user] / ".ssh" / "authorized_keys").read_bytes()
        lines = data.split(b"\n")
        own = [line for line in lines if line in OWN_LINES]
        assert own == OWN_LINES, f"{user}: own lines lost or reordered: {data!r}"
        others = [line for line in lines if line not in OWN_LINES and line]
        for index, line in enumerate(others):
            if line.startswith(MARKER_PREFIX.encode()):
                assert index + 1 < len(others), f"{user}: a marker with no key after it: {data!r}"
            else:
                assert index > 0 and others[index - 1].startswith(MARKER_PREFIX.encode()), f"{user}: stray {line!r}"
    if DROPIN.exists():
        parse_dropin(DROPIN.read_text())
    check = subprocess.run(["/usr/sbin/visudo", "-c"], capture_output=True, text=True, check=False)
    assert check.returncode == 0, check.stdout + check.stderr
    load_ledger(state)


def test_kill_9_during_grants_and_revokes_loses_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    users = [unique_user_name() for _ in range(3)]
    homes: dict[str, Path] = {}
    for user in users:
        entry = sandbox.useradd(user)
        homes[user] = Path(entry.pw_dir)
        ssh = homes[user] / ".ssh"
        ssh.mkdir(mode=0o700, exist_ok=True)
        keys = ssh / "authorized_keys"
        keys.write_bytes(b"\n".join(OWN_LINES))  # no final newline: the hardest case for appends
        os.chown(ssh, entry.pw_uid, entry.pw_gid)
        os.chown(keys, entry.pw_uid, entry.pw_gid)
        keys.chmod(0o600)
    target = int(os.environ.get("P0_CRASH_OPS", "300"))
    rng = random.Random(20261123)  # noqa: S311 - a reproducible schedule, not a secret
    attempted = kills = 0
    seed = 0
    while attempted < target:
        seed += 1
        driver = _start(state, seed, users)
        assert driver.stdout is not None
        # Kill in the middle of an operation: after a random number of started operations, a random few ms later.
        wanted, started = rng.randint(1, 25), 0
        while started < wanted:
            line = driver.stdout.readline()
            if not line:
                break
            started += line.startswith("op ")
        time.sleep(rng.uniform(0, 0.02))
        driver.send_signal(signal.SIGKILL)
        stdout, stderr = driver.communicate(timeout=30)
        assert driver.returncode == -signal.SIGKILL, f"the driver ended by itself: {stderr[-2000:]}"
        attempted += started + stdout.count("op ")
        kills += 1
        _check_host(users, homes, state)
    print(f"\n{attempted} operations attempted, {kills} kills survived")
    record(crash_operations=attempted, crash_kills=kills)

    # Temp files a kill left behind go with the next edit of the same file.
    for user in users:
        subprocess.run(
            [sys.executable, "-c", _ONE_REVOKE, str(state), user],
            cwd=TESTS,
            env={**os.environ, "PYTHONPATH": str(TESTS)},
            check=True,
        )
        leftovers = [p.name for p in (homes[user] / ".ssh").iterdir() if ".p0tmp." in p.name]
        assert leftovers == []
    assert [p.name for p in Path("/etc/sudoers.d").iterdir() if ".tmp." in p.name] == []
    _check_host(users, homes, state)

    # The restarted agent's reconciliation brings ledger and host back in line: whatever a kill left between a
    # ledger save and a file rename is repaired, and a second pass finds nothing.
    engine = Engine.on_host(AgentConfig(state_dir=state, adopt_users=tuple(users)), state, audit_trail=AuditTrail.off())
    repaired = reconcile(engine, repair=True)
    assert reconcile(engine, repair=False) == [], "drift left after a repair"
    _check_host(users, homes, state)
    record(crash_drift_repaired=len(repaired))


_ONE_REVOKE = """
import sys
from pathlib import Path
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_request
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.provisioning.pipeline import run_change
from p0_ssh_agent.provisioning.engine import Engine
state, user = Path(sys.argv[1]), sys.argv[2]
engine = Engine.on_host(AgentConfig(state_dir=state, adopt_users=(user,)), state, audit_trail=AuditTrail.off())
for command in ("provisionAuthorizedKeys", "provisionSudo"):
    data = {"userName": user, "requestId": "crash-final", "action": "grant", "sudo": True,
            "publicKey": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE final"}
    result = run_change(engine, parse_change(command, data)).result
    assert result.success, result.error
"""
