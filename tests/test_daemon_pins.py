"""tunnelPins end to end (issue 17 item 8): `p0-ssh-agent start` as a real subprocess against the dev backend over
wss:// on loopback (its RPC side with a throwaway certificate, tunnelCaFile trusting it). A matching pin connects
and carries a call; a mismatch (directly and through a CONNECT proxy) is refused before the upgrade request, so the
backend sees no handshake and no token, is logged, shows in `p0-ssh-agent status`, and is retried on the
configured period, not in a loop; a single pin is a configuration error (exit 78). The pin rules and the check
itself are tests/test_tunnel_pins.py.
"""

from __future__ import annotations

import base64
import hashlib
import json
import signal
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from daemon_helpers import (
    AGENT,
    BASE_ENV,
    CLIENT_ID,
    AgentProcess,
    ConnectProxy,
    http_post_json,
    keygen,
    private_scalar,
    self_signed_tls,
    write_config,
)
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.runtime.tunnel_pins import spki_pin

pytestmark = pytest.mark.slow  # every test here runs the real daemon and waits on it in wall-clock time

GUARD = 30.0  # never asserted on: only stops a broken agent from hanging the suite
OTHER = "sha256//" + base64.b64encode(hashlib.sha256(b"a key nobody holds").digest()).decode()
NEXT = "sha256//" + base64.b64encode(hashlib.sha256(b"the next key").digest()).decode()
MISMATCH = "matches none of tunnelPins"


@pytest.fixture
def started(tmp_path: Path) -> Iterator[list[AgentProcess]]:
    """The agents a test starts: killed at teardown, and none may have put its key in its output."""
    agents: list[AgentProcess] = []
    yield agents
    for agent in agents:
        agent.kill()
        assert agent.leaked((private_scalar(tmp_path / "keys"),)) == [], f"secret in {agent.log}"


def wss_backend(tmp_path: Path) -> tuple[DevBackend, str]:
    """A dev backend whose RPC side is wss:// with a throwaway certificate (trusted by tmp_path/backend.pem) and
    that knows this agent's key (made in tmp_path/keys); returns it and the pin of its key."""
    public = keygen(tmp_path / "keys")
    context, ca_file = self_signed_tls(tmp_path)
    backend = DevBackend(rpc_tls=context, call_timeout_ms=20_000)
    backend.register_client(CLIENT_ID, public)
    return backend, spki_pin(ssl.PEM_cert_to_DER_cert(ca_file.read_text()))


async def test_a_matching_pin_connects_and_carries_a_call(tmp_path: Path, started: list[AgentProcess]) -> None:
    backend, live = wss_backend(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        config = write_config(
            tmp_path, backend.rpc_url, tmp_path / "keys", tunnelCaFile=str(tmp_path / "backend.pem"),
            tunnelPins=[OTHER, live],
        )  # fmt: skip
        assert backend.rpc_url.startswith("wss://127.0.0.1:")
        started.append(AgentProcess.start(config, tmp_path / "agent.log"))
        with trio.fail_after(GUARD):
            await backend.wait_registered(CLIENT_ID)
            body = {"command": "provisionAuthorizedKeys", "userName": "user1", "action": "revoke", "requestId": "r1"}
            status, answer = await http_post_json("127.0.0.1", backend.http_port, f"/client/{CLIENT_ID}", body)
        assert status == 200 and isinstance(answer, dict), (status, answer)
        assert backend.handshakes == [101]
        started[0].signal(signal.SIGTERM)
        assert await started[0].wait_exit(GUARD) == 0
        nursery.cancel_scope.cancel()
    assert MISMATCH not in started[0].output()


def last_error(tmp_path: Path) -> str:
    try:
        document = json.loads((tmp_path / "run" / "status.json").read_text())
    except (FileNotFoundError, ValueError):
        return ""
    error = document.get("last_error") or {}
    return str(error.get("text", ""))


@pytest.mark.parametrize("route", ["direct", "proxy"])
async def test_a_mismatch_is_refused_logged_shown_and_retried_on_the_period(
    route: str, tmp_path: Path, started: list[AgentProcess]
) -> None:
    backend, live = wss_backend(tmp_path)
    proxy = ConnectProxy()
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        await nursery.start(proxy.serve)
        extra: dict[str, object] = {"proxy": f"http://127.0.0.1:{proxy.port}"} if route == "proxy" else {}
        config = write_config(
            tmp_path, backend.rpc_url, tmp_path / "keys", tunnelCaFile=str(tmp_path / "backend.pem"),
            tunnelPins=[OTHER, NEXT], reconnectMaxSeconds=1, **extra,
        )  # fmt: skip
        agent = AgentProcess.start(config, tmp_path / "agent.log")
        started.append(agent)
        with trio.fail_after(GUARD):
            while MISMATCH not in last_error(tmp_path):
                await trio.sleep(0.05)
        attempts_before = agent.output().count("tunnel_pin_mismatch")
        await trio.sleep(3.0)  # three reconnect periods
        attempts = agent.output().count("tunnel_pin_mismatch") - attempts_before
        # status shows the live state: between two attempts (one a second) it may catch "connecting", which does
        # not carry the last error, so ask again until it shows a refused attempt (bounded by GUARD).
        with trio.fail_after(GUARD):
            while True:
                status = await trio.run_process(
                    [str(AGENT), "status", "--config", str(config), "--json"],
                    capture_stdout=True, capture_stderr=True, check=False, env=BASE_ENV,
                )  # fmt: skip
                if MISMATCH in status.stdout.decode():
                    break
                await trio.sleep(0.1)
        nursery.cancel_scope.cancel()
    assert agent.running, agent.output()  # a refused key is not a reason to exit
    assert backend.handshakes == []  # no upgrade request reached the server: no token either
    assert 2 <= attempts <= 5, (attempts, agent.output()[-3000:])  # on the 1 s period, not in a loop
    expected = f"the tunnel's certificate key {live} {MISMATCH} (2 set)"
    assert expected in last_error(tmp_path)
    assert expected in agent.output()
    document = json.loads(status.stdout)
    agent_check = next(check for check in document["checks"] if check["name"] == "agent")
    assert expected in agent_check["detail"] and status.returncode == 151, (status.returncode, agent_check)
    if route == "proxy":
        assert len(proxy.heads) >= 3 and b"eyJ" not in proxy.tunnelled and b"Bearer" not in proxy.tunnelled
    else:
        assert proxy.heads == []


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"tunnelPins": [OTHER]}, "tunnelPins: a single pin leaves no way"),
        ({"tunnelPins": [OTHER, OTHER]}, "tunnelPins: item 2 repeats item 1"),
        ({"tunnelPins": [OTHER, NEXT], "tunnelHost": "ws://127.0.0.1:8079"}, "no TLS certificate to pin"),
    ],
    ids=["one-pin", "duplicate", "clear-text"],
)
async def test_pin_configuration_errors_exit_78_without_connecting(
    extra: dict[str, object], message: str, tmp_path: Path, started: list[AgentProcess]
) -> None:
    backend, _ = wss_backend(tmp_path)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        settings = {"tunnelCaFile": str(tmp_path / "backend.pem"), **extra}
        url = str(settings.pop("tunnelHost", backend.rpc_url))
        agent = AgentProcess.start(write_config(tmp_path, url, tmp_path / "keys", **settings), tmp_path / "agent.log")
        started.append(agent)
        code = await agent.wait_exit(GUARD)
        nursery.cancel_scope.cancel()
    assert code == 78 and message in agent.output(), agent.output()
    assert backend.handshakes == []
