"""Backend chaos: the agent stays up, reconnects within its liveness window, and answers correctly afterwards.

A real agent process (dry-run) against the in-process dev backend, which misbehaves in turn: garbage, binary and
oversized frames; a half-written frame; setClientId answered slowly; a connection dropped right after a call;
setClientId never answered; a backend that stops reading (half-open); a backend that restarts again and again on
the same ports. After each, a call must be answered
correctly, and the agent's memory must stay bounded over the whole run. Real time (the liveness window is the
agent's own 10 s heartbeat timeout and 30 s silence rule), so this takes about a minute.
"""

from __future__ import annotations

import sys
from pathlib import Path

import trio
import trio.lowlevel

from daemon_helpers import start_agent
from p0_ssh_agent.devbackend.server import CallFailed, DevBackend
from p0_ssh_agent.identity.signing_key import generate_keys, load_public_jwk_file
from reliability.figures import record

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
ORG, HOST = "chaos-org", "host-1"
CLIENT_ID = f"{ORG}:{HOST}:ssh"
GRANT: dict[str, object] = {"command": "provisionUser", "userName": "chaos", "action": "grant", "requestId": "chaos-1"}


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _forwarded(data: dict[str, object]) -> dict[str, object]:
    return {"path": "", "headers": {}, "method": "POST", "params": {}, "data": data}


async def answered(backend: DevBackend, within: float) -> dict[str, object]:
    """A dry-run grant, retried while the agent is (re)connecting, must come back right within `within` s."""
    with trio.fail_after(within):
        while True:
            try:
                result = await backend.call(CLIENT_ID, _forwarded(GRANT), timeout_ms=5000)
            except CallFailed:
                await trio.sleep(0.2)
                continue
            assert isinstance(result, dict)
            data = result["data"]
            assert isinstance(data, dict) and data["success"] is True, data
            assert str(data["message"]).startswith("DRY-RUN"), data
            return data


async def test_agent_survives_a_misbehaving_backend(tmp_path: Path) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    jwk = load_public_jwk_file(keys / "jwk.public.json")
    log_path = tmp_path / "agent.log"

    def fresh_backend(rpc_port: int = 0, http_port: int = 0) -> DevBackend:
        backend = DevBackend(rpc_port=rpc_port, http_port=http_port, call_timeout_ms=10_000)
        backend.register_client(CLIENT_ID, jwk)
        return backend

    backend = fresh_backend()
    async with trio.open_nursery() as outer:
        serving = trio.CancelScope()

        async def serve(b: DevBackend, scope: trio.CancelScope, *, task_status: trio.TaskStatus[None]) -> None:
            with scope:
                await b.serve(task_status=task_status)

        await outer.start(serve, backend, serving)
        config = tmp_path / "config.yaml"
        config.write_text(
            f"orgId: {ORG}\nhostId: {HOST}\ntunnelHost: {backend.rpc_url}\nkeyPath: {keys}\n"
            f"stateDir: {tmp_path / 'state'}\nruntimeDir: {tmp_path / 'run'}\n"
            "dryRun: true\nheartbeatIntervalSeconds: 2\n"
        )
        agent = start_agent(config, log_path)
        try:
            await answered(backend, within=30)
            rss_start = _rss_kib(agent.pid)

            # Garbage, binary and oversized frames: refused or ignored; the agent keeps (or regains) the connection.
            for frame in ("{not json", b"\x00\x01binary", '{"jsonrpc":"2.0","id":1,"method":"call","params":7}'):
                await backend.send_raw(CLIENT_ID, frame)
            oversized = '{"jsonrpc":"2.0","method":"call","params":"' + "x" * (2 << 20) + '"}'
            # The agent refuses it (1009) and must hang up that TCP connection: trio-websocket leaves the stream
            # open after a 1009, and a backend still writing the frame into the abandoned socket blocked for ever.
            with trio.fail_after(30):
                await backend.send_raw(CLIENT_ID, oversized)
            await answered(backend, within=40)
            with trio.fail_after(30):
                while len(backend.channels) > 1:  # the old connection ended on the backend's side too
                    await trio.sleep(0.1)

            # The connection drops right after a call went out: the call fails, the agent comes back, a retry works.
            async with trio.open_nursery() as racing:
                racing.start_soon(answered, backend, 40)
                await trio.lowlevel.checkpoint()
                await backend.drop(CLIENT_ID)

            # setClientId never answered: the agent gives up on that connection and tries again.
            heard_before = len(backend.set_client_id_log)
            backend.hooks.answer_set_client_id = False
            await backend.drop(CLIENT_ID)
            for _ in range(80):  # 40 s: the first try, then at least two retries
                if len(backend.set_client_id_log) >= heard_before + 3:
                    break
                await trio.sleep(0.5)
            else:
                raise AssertionError(f"setClientId retries: {backend.set_client_id_log[heard_before:]}")
            backend.hooks.answer_set_client_id = True
            await answered(backend, within=40)

            # A half-written frame: the agent's parser is left mid-frame and what follows is garbage to it; the
            # agent drops that connection (protocol error or unanswered heartbeat) and comes back.
            handshakes = len(backend.handshakes)
            await backend.send_half_frame(CLIENT_ID)
            await answered(backend, within=40)
            assert len(backend.handshakes) > handshakes, "the agent kept a connection with a torn frame on it"

            # A slow backend: setClientId answered after 4 s, inside the agent's heartbeat timeout. The agent keeps
            # the connection (no reconnect) and calls are answered meanwhile.
            handshakes = len(backend.handshakes)
            backend.hooks.set_client_id_delay = 4.0
            await trio.sleep(6)
            await answered(backend, within=20)
            backend.hooks.set_client_id_delay = 0.0
            assert len(backend.handshakes) == handshakes, "a slow but answering backend was abandoned"

            # The backend stops reading (half-open): the heartbeat goes unanswered and the agent reconnects.
            handshakes = len(backend.handshakes)
            backend.pause_reading()
            await trio.sleep(15)
            backend.resume_reading()
            await answered(backend, within=40)
            assert len(backend.handshakes) > handshakes, "the agent never noticed the backend stopped reading"

            # The backend restarts, again and again, on the same ports.
            rpc_port, http_port = backend.rpc_port, backend.http_port
            for _ in range(3):
                serving.cancel()
                await trio.sleep(0.5)
                backend, serving = fresh_backend(rpc_port, http_port), trio.CancelScope()
                await outer.start(serve, backend, serving)
                await answered(backend, within=45)

            rss_end = _rss_kib(agent.pid)
            print(f"\nCHAOS rss_start_kib={rss_start} rss_end_kib={rss_end} restarts=3")
            record(chaos_scenarios=8, chaos_rss_start_kib=rss_start, chaos_rss_end_kib=rss_end)
            assert rss_end <= rss_start + 16 * 1024, f"RSS grew from {rss_start} to {rss_end} KiB"
            assert agent.poll() is None, "the agent exited"
        finally:
            agent.terminate()
            agent.wait(timeout=15)
        outer.cancel_scope.cancel()
    text = log_path.read_text()
    assert "Traceback" not in text, text[-3000:]
