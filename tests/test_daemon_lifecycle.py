"""The daemon as systemd and the backend see it: a real `p0-ssh-agent start` process, a real NOTIFY_SOCKET
datagram socket, the in-process dev backend on loopback.

Covers issue 3's bar: READY before any connection, STATUS in words, WATCHDOG pings, RELOADING (with
MONOTONIC_USEC) then READY on SIGHUP, STOPPING and exit 0 within 10 s of SIGTERM with close code 1001; still alive
after 401s; heartbeats at the configured interval; 200 concurrent dry-run calls; no token in any log.
"""

from __future__ import annotations

import json
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio

from daemon_helpers import NotifyListener
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.identity.signing_key import generate_keys, load_public_jwk_file

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
ORG, HOST = "life-org", "host-1"
CLIENT_ID = f"{ORG}:{HOST}:ssh"

pytestmark = pytest.mark.slow  # every test here runs the real daemon and waits on it in wall-clock time


@pytest.fixture(params=["path", "abstract"])
def notify(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[NotifyListener]:
    address = str(tmp_path / "notify.sock") if request.param == "path" else f"@p0-test-{tmp_path.name}"
    listener = NotifyListener(address)
    yield listener
    listener.close()


def write_config(tmp_path: Path, url: str, keys: Path, *, heartbeat: int = 60, extra: str = "") -> Path:
    config = tmp_path / "config.yaml"
    config.write_text(
        f"orgId: {ORG}\nhostId: {HOST}\ntunnelHost: {url}\nkeyPath: {keys}\nstateDir: {tmp_path / 'state'}\n"
        f"runtimeDir: {tmp_path / 'run'}\n"
        f"dryRun: true\nheartbeatIntervalSeconds: {heartbeat}\n{extra}"
    )
    return config


def start_agent(config: Path, log: Path, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    with log.open("w") as out:
        return subprocess.Popen(
            [str(AGENT), "start", "--config", str(config)], stdout=out, stderr=out, env=env or {"PATH": "/usr/bin"}
        )


def kinds(messages: list[str]) -> list[str]:
    """READY / STATUS / WATCHDOG / RELOADING / STOPPING, in order, one per datagram field."""
    found: list[str] = []
    for message in messages:
        for line in message.splitlines():
            name = line.split("=", 1)[0]
            if name in ("READY", "STATUS", "WATCHDOG", "RELOADING", "STOPPING"):
                found.append(name)
    return found


async def test_notify_sequence_reload_and_clean_stop(tmp_path: Path, notify: NotifyListener) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    backend = DevBackend()
    backend.register_client(CLIENT_ID, load_public_jwk_file(keys / "jwk.public.json"))

    async def keep_draining() -> None:  # like systemd: read every datagram as it comes (the queue is short)
        while True:
            notify.drain()
            await trio.sleep(0.02)

    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        nursery.start_soon(keep_draining)
        config = write_config(tmp_path, backend.rpc_url, keys)
        env = {"PATH": "/usr/bin", "NOTIFY_SOCKET": notify.address, "WATCHDOG_USEC": "1000000"}
        agent = start_agent(config, tmp_path / "agent.log", env)
        try:
            with trio.fail_after(30):
                await backend.wait_registered(CLIENT_ID)
            await trio.sleep(1.5)  # a few watchdog intervals (WATCHDOG_USEC/2 = 0.5 s)
            agent.send_signal(signal.SIGHUP)
            await trio.sleep(1.0)
            answer = await backend.call(CLIENT_ID, {"path": "", "headers": {}, "method": "POST", "params": {},
                                                    "data": {"command": "listUsers"}})  # fmt: skip
            assert isinstance(answer, dict) and answer["data"]["success"] is True
            sent_term = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            code = await trio.to_thread.run_sync(agent.wait, 15)
            took = time.monotonic() - sent_term
        finally:
            if agent.poll() is None:
                agent.kill()
        nursery.cancel_scope.cancel()

    assert code == 0 and took < 10, (code, took)
    assert 1001 in backend.close_codes, backend.close_codes
    messages = notify.drain()
    sequence = kinds(messages)
    assert "STATUS" in sequence[: sequence.index("READY")]  # "starting" is said before READY=1
    assert sequence.index("READY") < sequence.index("RELOADING") < len(sequence) - 1
    after_reload = sequence[sequence.index("RELOADING") + 1 :]
    assert "READY" in after_reload and after_reload.index("READY") < after_reload.index("STOPPING")
    assert sequence.count("WATCHDOG") >= 2
    reloading = next(m for m in messages if "RELOADING=1" in m)
    assert "MONOTONIC_USEC=" in reloading
    assert any("STATUS=connected to" in m for m in messages), messages


def test_ready_comes_before_any_connection(tmp_path: Path, notify: NotifyListener) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    with socket.socket() as unused:  # nothing listens here: the agent cannot connect
        unused.bind(("127.0.0.1", 0))
        port = unused.getsockname()[1]
    config = write_config(tmp_path, f"ws://127.0.0.1:{port}", keys)
    agent = start_agent(config, tmp_path / "agent.log", {"PATH": "/usr/bin", "NOTIFY_SOCKET": notify.address})
    try:
        deadline = time.monotonic() + 20
        while "READY" not in kinds(notify.drain()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert "READY" in kinds(notify.messages)
        while not any("STATUS=retrying" in m for m in notify.drain()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert any("STATUS=retrying" in m for m in notify.messages), notify.messages
        assert agent.poll() is None
    finally:
        agent.terminate()
        assert agent.wait(timeout=15) == 0


async def test_alive_after_401_heartbeats_and_200_concurrent_calls(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    backend = DevBackend(call_timeout_ms=30_000)
    backend.register_client(CLIENT_ID, load_public_jwk_file(keys / "jwk.public.json"))
    backend.hooks.reject_status, backend.hooks.reject_count = 401, 2
    log = tmp_path / "agent.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        # unauthorizedRetrySeconds: 1: the waits after the two 401s are drawn from [0, 1] and [0, 2] s, not from
        # [0, 30] and [0, 60] s (the default); the test waits the backoff out in real time all the same.
        config = write_config(tmp_path, backend.rpc_url, keys, heartbeat=1, extra="unauthorizedRetrySeconds: 1\n")
        agent = start_agent(config, log)
        try:
            with trio.fail_after(30):
                await backend.wait_registered(CLIENT_ID)
            assert backend.handshakes[:2] == [401, 401] and agent.poll() is None

            heard = len(backend.set_client_id_log)
            await trio.sleep(3.5)
            assert 2 <= len(backend.set_client_id_log) - heard <= 5  # heartbeats about once a second

            results: list[object] = []

            async def grant(n: int) -> None:
                # A revoke: a dry-run grant for the missing u{n} is refused like a real one (issue 14 item 7).
                data = {"command": "provisionAuthorizedKeys", "userName": f"u{n}", "action": "revoke",
                        "requestId": f"r{n}"}  # fmt: skip
                forwarded = {"path": "", "headers": {"authorization": "Bearer caller-secret"}, "method": "POST",
                             "params": {}, "data": data}  # fmt: skip
                results.append(await backend.call(CLIENT_ID, forwarded))

            started = trio.current_time()
            async with trio.open_nursery() as calls:
                for n in range(200):
                    calls.start_soon(grant, n)
            elapsed = trio.current_time() - started
            print(f"\n200 concurrent dry-run key calls answered in {elapsed * 1000:.0f} ms")
            assert len(results) == 200
            assert all(isinstance(r, dict) and r["data"]["success"] is True for r in results)
            assert {r["data"]["command"] for r in results if isinstance(r, dict)} == {"provisionAuthorizedKeys"}
        finally:
            agent.terminate()
            agent.wait(timeout=15)
        nursery.cancel_scope.cancel()
    text = log.read_text()
    assert ("401" in text and "key not registered" in text.lower()) or "clock" in text.lower(), text[-2000:]
    # Each 401 was followed by a wait within its (configured) ceiling, 1 s then 2 s, before the next attempt.
    waits = [int(wait) for wait in re.findall(r"unauthorized \(HTTP 401\), retrying in (\d+)s", text)]
    assert len(waits) == 2 and waits[0] <= 1 and waits[1] <= 2, waits
    for secret in ("eyJ", "Bearer ", "caller-secret", json.loads((keys / "jwk.private.json").read_text())["d"]):
        assert secret not in text, f"{secret[:8]}... leaked into the log"
