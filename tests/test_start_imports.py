"""What `p0-ssh-agent start` has imported when it sends READY=1 (issue 16: start to READY, idle footprint).

Only what READY needs may load before it: the configuration, the key, the state directory, the local Cedar policy
(loaded and validated: a broken one is exit 78 before READY), the audit trail and trio. With agentAccess off (the
default) nothing of agent_access loads at all. The connection
(trio-websocket, wsproto, h11, jose for the token), the request line (provisioning/pipeline.py, the handlers, the
host actions, the ledger), the guard tasks' work and every other subcommand load after READY. The daemon runs in a
subprocess whose Notifier.ready records sys.modules and exits, so the test sees a real cold start of the real CLI.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from daemon_helpers import keygen, write_config
from p0_ssh_agent.cli import build_parser, requested_subcommand

# Modules that READY=1 does not need (a prefix matches the package and its submodules).
NOT_BEFORE_READY = (
    "trio_websocket",
    "wsproto",
    "h11",
    "jose",
    "p0_ssh_agent.identity.token",
    "p0_ssh_agent.runtime.connection",
    "p0_ssh_agent.provisioning.pipeline",
    "p0_ssh_agent.provisioning.facts",
    "p0_ssh_agent.provisioning.expiry",
    "p0_ssh_agent.provisioning.reconcile",
    "p0_ssh_agent.provisioning.engine",
    "p0_ssh_agent.host.actions",
    "p0_ssh_agent.host.apply",
    "p0_ssh_agent.host.ledger",
    "p0_ssh_agent.diagnostics",
    "p0_ssh_agent.cli.status",
    "p0_ssh_agent.cli.doctor",
    "p0_ssh_agent.cli.register",
    "p0_ssh_agent.devbackend",
    # Agent access (issue 17) is off by default: with agentAccess false nothing of it loads, before READY or after
    # (access_policy parses its schema at import).
    "p0_ssh_agent.agent_access",
)
# What READY=1 does need: the policy is compiled before it, so cedarpy is loaded.
BEFORE_READY = ("trio", "cedarpy", "p0_ssh_agent.core.local_policy", "p0_ssh_agent.runtime.supervisor")

AT_READY = """
import json, os, sys
from p0_ssh_agent.adapters import sdnotify

def ready(self):
    with open(sys.argv[1], "w") as out:
        json.dump(sorted(sys.modules), out)
    os._exit(0)

sdnotify.Notifier.ready = ready
from p0_ssh_agent.cli import main
sys.exit(main(["start", "--config", sys.argv[2]]))
"""


def modules_at_ready(tmp_path: Path, **extra: object) -> list[str]:
    keygen(tmp_path / "keys")
    # Loopback port 9: nothing listens, and READY=1 never waits for the backend anyway.
    config = write_config(tmp_path, "ws://127.0.0.1:9", tmp_path / "keys", **extra)
    out = tmp_path / "modules.json"
    done = subprocess.run(
        [sys.executable, "-c", AT_READY, str(out), str(config)],
        capture_output=True,
        text=True,
        timeout=60,
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    modules: list[str] = json.loads(out.read_text())
    return modules


def loaded(modules: list[str], name: str) -> list[str]:
    return [module for module in modules if module == name or module.startswith(name + ".")]


def test_ready_loads_only_what_it_needs(tmp_path: Path) -> None:
    modules = modules_at_ready(tmp_path)
    early = {name: loaded(modules, name) for name in NOT_BEFORE_READY if loaded(modules, name)}
    assert early == {}, f"imported before READY=1 although READY does not need them: {early}"
    for name in BEFORE_READY:
        assert name in modules, f"{name} is needed before READY=1"


def test_with_agent_access_on_its_policy_and_trust_file_load_before_ready(tmp_path: Path) -> None:
    """The other side of the switch: what agentAccess needs is checked before READY=1 (a bad file is exit 78), so
    the modules are there; with it off (the test above) none of them is."""
    missing = tmp_path / "none"  # no files: the built-in deny-all policy and an empty trust file
    modules = modules_at_ready(
        tmp_path,
        agentAccess=True,
        agentAccessPolicyFile=str(missing / "a.cedar"),
        agentAccessKeysFile=str(missing / "k.json"),
        agentAccessConfinement="namespace",
    )
    for name in ("p0_ssh_agent.agent_access.line", "p0_ssh_agent.agent_access.access_policy"):
        assert name in modules


@pytest.mark.parametrize(
    ("argv", "only"),
    [
        (["start", "--config", "x"], "start"),
        (["-c", "x", "-v", "start"], "start"),
        (["--config=x", "revoke-all", "--dry-run"], "revoke_all"),
        (["-cx", "dev-backend"], "dev_backend"),
        (["help", "start"], None),  # help prints the others' help: the whole tree
        (["--help"], None),
        (["--version"], None),
        (["revoke_all"], None),  # not a command-line name: the whole tree's "invalid choice" names the right ones
        (["nonsense"], None),
        ([], None),
    ],
)
def test_only_the_named_subcommands_parser_is_built(argv: list[str], only: str | None) -> None:
    assert requested_subcommand(argv) == only


def test_a_subcommand_parses_the_same_alone_and_in_the_whole_tree() -> None:
    argv = ["-c", "/etc/x.yaml", "start", "--dry-run", "--labels", "a=b,c=d", "--tunnel-timeout", "5"]
    alone, whole = vars(build_parser("start").parse_args(argv)), vars(build_parser().parse_args(argv))
    assert alone == whole
