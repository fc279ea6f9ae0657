"""`p0-ssh-agent status` against a real daemon and the dev backend (issue 15): one exit code per state.

connected (0), refused with 401 (150), backend down (151), not running (3), and a daemon killed with SIGKILL,
whose state file is still there (3, not "live"). Also: the STATUS= line and `status` agree, a good reload clears
a failed one from both, and the metrics textfile parses with prometheus_client's own parser.

The agent runs as a subprocess, as systemd runs it, with runtimeDir in tmp_path; `status` is the installed
command. Timeouts only stop a broken build from hanging the suite; nothing here asserts on time.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import signal
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import trio
from prometheus_client.parser import text_string_to_metric_families

from daemon_helpers import AGENT, BASE_ENV, CLIENT_ID, AgentProcess, DevDriver, NotifyListener, keygen, write_config
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.diagnostics import live_checks

GUARD = 30.0
DEFAULT_POLICY = Path(__file__).resolve().parents[1] / "agent" / "p0_ssh_agent" / "core" / "default_policy.cedar"


@dataclass
class Setup:
    tmp: Path
    keys: Path
    public: dict[str, object]
    notify: NotifyListener
    agents: list[AgentProcess]

    def config(self, url: str, **extra: object) -> Path:
        return write_config(self.tmp, url, self.keys, **extra)

    def start(self, config: Path) -> AgentProcess:
        agent = AgentProcess.start(
            config, self.tmp / f"agent-{len(self.agents)}.log", {"NOTIFY_SOCKET": self.notify.address}
        )
        self.agents.append(agent)
        return agent

    def statuses(self) -> list[str]:
        return [e.removeprefix("STATUS=") for e in self.notify.events() if e.startswith("STATUS=")]


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[Setup]:
    keys = tmp_path / "keys"
    public = keygen(keys)
    notify = NotifyListener(str(tmp_path / "notify.sock"))
    s = Setup(tmp_path, keys, public, notify, [])
    yield s
    for agent in s.agents:
        agent.kill()
    notify.close()


@pytest.fixture
async def dev(nursery: trio.Nursery, setup: Setup) -> AsyncIterator[DevBackend]:
    backend = DevBackend()
    backend.register_client(CLIENT_ID, setup.public)
    await nursery.start(backend.serve)
    yield backend


def status(config: Path) -> tuple[int, dict[str, object]]:
    done = subprocess.run(
        [str(AGENT), "status", "--config", str(config), "--json"],
        capture_output=True,
        text=True,
        env=BASE_ENV,
        check=False,
        timeout=60,
    )
    return done.returncode, json.loads(done.stdout)


async def status_becomes(config: Path, code: int) -> dict[str, object]:
    """Poll `status` until it exits `code` (the daemon gets there on its own time); the last document."""
    with trio.fail_after(GUARD):
        while True:
            got, document = await trio.to_thread.run_sync(status, config)
            if got == code:
                return document
            await trio.sleep(0.1)


def agent_state(document: dict[str, object]) -> dict[str, object]:
    agent = document["agent"]
    assert isinstance(agent, dict)
    state = agent["state"]
    assert isinstance(state, dict)
    return state


def check(document: dict[str, object], name: str) -> dict[str, str]:
    checks = document["checks"]
    assert isinstance(checks, list)
    [found] = [c for c in checks if c["name"] == name]
    return dict(found)


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def metrics(setup: Setup) -> dict[str, list[tuple[str, dict[str, str], float]]]:
    text = (setup.tmp / "run" / "p0-ssh-agent.prom").read_text()
    return {
        family.name: [(sample.name, sample.labels, sample.value) for sample in family.samples]
        for family in text_string_to_metric_families(text)
    }


@pytest.mark.slow
async def test_connected_exits_0_and_says_what_systemd_says(
    setup: Setup, dev: DevBackend, nursery: trio.Nursery
) -> None:
    nursery.start_soon(setup.notify.keep_draining)
    config = setup.config(dev.rpc_url, policyFile=str(DEFAULT_POLICY))
    setup.start(config)
    document = await status_becomes(config, 0)
    state = agent_state(document)
    assert document["ok"] is True and document["state"] == "connected"
    assert state["link"] == "connected" and state["backend_url"] == dev.rpc_url and state["client_id"] == CLIENT_ID
    assert state["connected_since"] is not None
    assert state["last_set_client_id"] == {"at": state["last_set_client_id"]["at"], "answer": {"ok": True}}  # type: ignore[index]
    assert str(state["config_digest"]).startswith("sha256:") and state["config_file"] == str(config)
    assert state["policy_file"] == str(DEFAULT_POLICY) and state["reload_failed"] is False
    assert state["policy_digest"] == "sha256:" + hashlib.sha256(DEFAULT_POLICY.read_bytes()).hexdigest()
    assert state["grants_in_force"] == 0 and state["managed_users"] == 0
    # `systemctl status` shows the last STATUS=; `status` shows the same words.
    assert setup.statuses()[-1] == state["status_text"]
    assert state["status_text"] in check(document, "agent")["detail"]

    for data in (
        {"command": "listUsers"},
        # The shipped default policy refuses sudo as root, in dry-run too: a denial for the metrics.
        {"command": "provisionSudo", "userName": "alice", "action": "grant", "requestId": "r1", "runAsUser": "root"},
    ):
        await DevDriver(dev).call({"path": "", "headers": {}, "method": "POST", "params": {}, "data": data})
    with trio.fail_after(GUARD):  # the file is refreshed after the requests: wait for the new content
        while len(metrics(setup).get("p0_ssh_agent_requests", [])) < 2:
            await trio.sleep(0.1)
    families = metrics(setup)
    assert families["p0_ssh_agent_connected"] == [("p0_ssh_agent_connected", {}, 1.0)]
    assert sorted((labels["command"], labels["outcome"], labels["decision"], value)
                  for _, labels, value in families["p0_ssh_agent_requests"]) == [
        ("listUsers", "ok", "allow", 1.0),
        ("provisionSudo", "failed", "deny", 1.0),
    ]  # fmt: skip
    assert families["p0_ssh_agent_policy_denials"] == [("p0_ssh_agent_policy_denials_total", {}, 1.0)]
    duration = {name: value for name, _, value in families["p0_ssh_agent_request_duration_seconds"]}
    assert duration["p0_ssh_agent_request_duration_seconds_count"] == 2.0


@pytest.mark.slow
async def test_refused_with_401_exits_150(setup: Setup, dev: DevBackend) -> None:
    dev.hooks.reject_status, dev.hooks.reject_count = 401, 1000
    config = setup.config(dev.rpc_url)
    setup.start(config)
    document = await status_becomes(config, 150)
    state = agent_state(document)
    assert document["state"] == "refused" and state["link"] == "refused"
    assert state["last_error"]["http_status"] == 401  # type: ignore[index]
    assert state["reconnects_by_reason"] == {"unauthorized": state["reconnects"]}
    assert "HTTP 401" in check(document, "agent")["detail"]
    families = metrics(setup)
    [(name, labels, count)] = families["p0_ssh_agent_reconnects"]
    assert name == "p0_ssh_agent_reconnects_total" and labels == {"reason": "unauthorized"} and count >= 1
    assert families["p0_ssh_agent_connected"] == [("p0_ssh_agent_connected", {}, 0.0)]


@pytest.mark.slow
async def test_backend_down_exits_151(setup: Setup) -> None:
    config = setup.config(f"ws://127.0.0.1:{closed_port()}")
    setup.start(config)
    document = await status_becomes(config, 151)
    state = agent_state(document)
    assert document["state"] == "unreachable" and state["link"] in ("connecting", "retrying")
    assert check(document, "agent")["level"] == "fail"


async def test_not_running_exits_3(setup: Setup) -> None:
    code, document = status(setup.config("ws://127.0.0.1:9"))
    assert code == 3 and document["state"] == "not-running"
    assert check(document, "agent")["detail"] == "not running"


@pytest.mark.slow
async def test_a_killed_agents_state_does_not_read_as_live(setup: Setup, dev: DevBackend) -> None:
    config = setup.config(dev.rpc_url)
    agent = setup.start(config)
    await status_becomes(config, 0)
    agent.signal(signal.SIGKILL)
    assert await agent.wait_exit(GUARD) == -signal.SIGKILL
    assert (setup.tmp / "run" / "status.json").exists()  # left behind: nobody cleaned up
    code, document = status(config)
    assert code == 3 and document["state"] == "not-running"
    assert "left by an agent" in check(document, "agent")["detail"]


@pytest.mark.slow
async def test_a_good_reload_clears_a_failed_one_from_status_and_systemd(
    setup: Setup, dev: DevBackend, nursery: trio.Nursery
) -> None:
    nursery.start_soon(setup.notify.keep_draining)
    config = setup.config(dev.rpc_url)
    good = config.read_text()
    agent = setup.start(config)
    await status_becomes(config, 0)

    # A file that loads but cannot be used (status can still read it, so it reports instead of exiting 78).
    config.write_text(good.replace(str(setup.keys), "/nonexistent/p0-keys"))
    agent.signal(signal.SIGHUP)
    document = await status_becomes(config, 1)  # running and connected, but a check (the reload) failed
    assert "/nonexistent/p0-keys" in check(document, "reload")["detail"]
    assert agent_state(document)["reload_failed"] is True
    with trio.fail_after(GUARD):
        while "configuration reload failed" not in (setup.statuses() or [""])[-1]:
            await trio.sleep(0.05)

    config.write_text(good)
    agent.signal(signal.SIGHUP)
    document = await status_becomes(config, 0)
    checks = document["checks"]
    assert isinstance(checks, list) and "reload" not in [c["name"] for c in checks]
    assert agent_state(document)["reload_failed"] is False
    with trio.fail_after(GUARD):
        while "configuration reload failed" in setup.statuses()[-1]:
            await trio.sleep(0.05)
    assert setup.statuses()[-1].startswith("connected to ")


@pytest.mark.slow
async def test_the_status_line_after_a_good_reload_no_longer_says_reload_failed(
    setup: Setup, dev: DevBackend, nursery: trio.Nursery
) -> None:
    """The STATUS= part alone (it failed before issue 15: the text stayed 'configuration reload failed')."""
    nursery.start_soon(setup.notify.keep_draining)
    config = setup.config(dev.rpc_url)
    good = config.read_text()
    agent = setup.start(config)
    with trio.fail_after(GUARD):
        await DevDriver(dev).wait_connected()
        config.write_text(good + "heartbeatIntervalSeconds: 0\n")
        agent.signal(signal.SIGHUP)
        while "configuration reload failed" not in (setup.statuses() or [""])[-1]:
            await trio.sleep(0.05)
        reloads = setup.notify.events().count("RELOADING=1")
        config.write_text(good)
        agent.signal(signal.SIGHUP)
        while setup.notify.events().count("RELOADING=1") == reloads or setup.notify.events()[-1] != "READY=1":
            await trio.sleep(0.05)
    assert setup.statuses()[-1].startswith(f"connected to {dev.rpc_url} since ")


def test_docs_list_every_exit_code() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "status.md").read_text()
    codes = {value for name, value in vars(live_checks).items() if name.startswith("EXIT_")}
    assert codes == {0, 1, 3, 4, 78, 150, 151}
    for code in codes:
        assert f"\n| {code} |" in docs, code


SETPRIV = Path("/usr/bin/setpriv")


def status_as_nobody(config: Path) -> subprocess.CompletedProcess[str]:
    """`status --json` as uid 65534, with a copy of the configuration it can read (tmp_path is root's only)."""
    readable = Path(tempfile.mkdtemp(prefix="p0-status-nobody-"))
    try:
        readable.chmod(0o755)
        copy = readable / "config.yaml"
        copy.write_text(config.read_text())
        copy.chmod(0o644)
        argv = [str(SETPRIV), "--reuid=65534", "--regid=65534", "--clear-groups", str(AGENT), "status", "--json"]
        return subprocess.run(
            [*argv, "--config", str(copy)], capture_output=True, text=True, env=BASE_ENV, check=False, timeout=60
        )
    finally:
        shutil.rmtree(readable)


@pytest.mark.slow
@pytest.mark.skipif(not SETPRIV.exists(), reason="needs setpriv (util-linux) to run status as nobody")
async def test_not_root_cannot_tell_and_exits_4(setup: Setup, dev: DevBackend) -> None:
    """The live state is root's: `status` run as nobody says so (4), it does not guess "not running"."""
    config = setup.config(dev.rpc_url)
    setup.start(config)
    await status_becomes(config, 0)
    done = await trio.to_thread.run_sync(status_as_nobody, config)
    assert done.returncode == 4, done.stdout + done.stderr
    document = json.loads(done.stdout)
    assert document["state"] == "unknown" and "run status as root" in check(document, "agent")["fix"]
