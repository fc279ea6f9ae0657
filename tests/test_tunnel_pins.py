"""tunnelPins (issue 17 item 8): the configuration's rules (at least two, no duplicates, the canonical spelling, not
with ws://), the pin itself against the openssl pipeline docs/connection.md gives, and the check on real TLS
connections on loopback: direct and through a CONNECT proxy, a mismatch refused before a byte of the WebSocket
request (so before the token), the tunnel's retry on its normal period, and doctor's `pin` finding.

The daemon end to end (a matching pin against the dev backend over wss://, a mismatch in `status`) is
tests/test_daemon_pins.py.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import shutil
import ssl
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
import trio.testing
from trio_websocket import ConnectionRejected

from daemon_helpers import ConnectProxy, self_signed_tls
from p0_ssh_agent.config import load_config
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.identity.signing_key import AgentKey, generate_keys
from p0_ssh_agent.runtime.backend_dial import connect_websocket
from p0_ssh_agent.runtime.backoff import RECONNECT_PERIOD
from p0_ssh_agent.runtime.http_connect import parse_proxy_url
from p0_ssh_agent.runtime.session_settings import SessionSettings
from p0_ssh_agent.runtime.tunnel import Tunnel, TunnelSettings
from p0_ssh_agent.runtime.tunnel_pins import PinMismatch, spki_pin
from p0_ssh_agent.runtime.worker import Worker
from test_doctor import DateServer, probe, start_date_server, with_servers
from test_proxy import make_pki
from test_tunnel import AUTOJUMP_REAL_SECONDS, CLIENT_ID, RETRY, DryPipeline, StatusLog

GUARD_SECONDS = 20.0  # a broken build fails instead of hanging; never asserted on
OPENSSL = shutil.which("openssl") or "/usr/bin/openssl"


def pin_of(text: str) -> str:
    """A well-formed pin of arbitrary bytes (for keys nobody holds)."""
    return "sha256//" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


OTHER, NEXT = pin_of("some other key"), pin_of("the next key")


def pem_pin(cert_file: Path) -> str:
    return spki_pin(ssl.PEM_cert_to_DER_cert(cert_file.read_text()))


# --- configuration ---------------------------------------------------------------------------------------------


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> tuple[str, ...]:
    config = tmp_path / "config.yaml"
    config.write_text(text)
    return load_config(config, env=env or {}).tunnel_pins


def refused(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> str:
    with pytest.raises(ConfigError) as info:
        load(tmp_path, text, env)
    return str(info.value)


def test_two_pins_load_and_none_is_the_default(tmp_path: Path) -> None:
    assert load(tmp_path, f"tunnelPins:\n  - {OTHER}\n  - {NEXT}\n") == (OTHER, NEXT)
    assert load(tmp_path, "orgId: a\n") == ()
    assert load(tmp_path, "tunnelPins: []\n") == ()
    assert load(tmp_path, "", {"P0_SSH_AGENT_TUNNELPINS": f"{OTHER},{NEXT}"}) == (OTHER, NEXT)


def test_one_pin_is_a_configuration_error_that_says_why(tmp_path: Path) -> None:
    message = refused(tmp_path, f"tunnelPins: [{OTHER}]\n")
    assert "config.yaml:1:13: tunnelPins: a single pin" in message and "at least two" in message
    assert "single pin" in refused(tmp_path, "", {"P0_SSH_AGENT_TUNNELPINS": OTHER})


@pytest.mark.parametrize(
    ("item", "fragment"),
    [
        ("sha1//" + base64.b64encode(hashlib.sha1(b"k").digest()).decode(), "does not start with sha256//"),  # noqa: S324
        ("sha256//not base64!", "not base64"),
        ("sha256//" + base64.b64encode(b"short").decode(), "not a SHA-256 digest"),
        (OTHER.rstrip("="), "not base64"),  # the padding is part of the canonical spelling
        (f"{OTHER};{NEXT}", "one pin per list item"),
        (OTHER.removeprefix("sha256//"), "does not start with sha256//"),
    ],
)
def test_malformed_pins_are_refused_at_the_item(tmp_path: Path, item: str, fragment: str) -> None:
    message = refused(tmp_path, f'tunnelPins:\n  - {NEXT}\n  - "{item}"\n')
    assert "config.yaml:3:5: tunnelPins: item 2" in message and fragment in message, message


def test_a_repeated_pin_is_refused(tmp_path: Path) -> None:
    message = refused(tmp_path, f"tunnelPins: [{OTHER}, {NEXT}, {OTHER}]\n")
    assert "item 3 repeats item 1" in message, message


def test_pins_with_clear_text_loopback_are_a_configuration_error(tmp_path: Path) -> None:
    message = refused(tmp_path, f"tunnelHost: ws://127.0.0.1:8079\ntunnelPins: [{OTHER}, {NEXT}]\n")
    assert "tunnelPins: tunnelHost 'ws://127.0.0.1:8079' is ws://" in message and "no TLS certificate" in message
    assert message.startswith(f"{tmp_path / 'config.yaml'}:2:13:"), message


def test_the_pin_is_what_the_documented_openssl_pipeline_prints(tmp_path: Path) -> None:
    """docs/connection.md: openssl x509 -pubkey -noout | openssl pkey -pubin -outform der | openssl dgst -sha256
    -binary | base64 (each step run here without a shell, piping by hand)."""
    _, cert_file = self_signed_tls(tmp_path)
    steps = [
        [OPENSSL, "x509", "-in", str(cert_file), "-pubkey", "-noout"],
        [OPENSSL, "pkey", "-pubin", "-outform", "der"],
        [OPENSSL, "dgst", "-sha256", "-binary"],
    ]
    data = b""
    for argv in steps:
        data = subprocess.run(argv, input=data, capture_output=True, check=True, timeout=30).stdout
    assert pem_pin(cert_file) == "sha256//" + base64.b64encode(data).decode()
    assert len(data) == 32


# --- the check on real connections ------------------------------------------------------------------------------


@dataclass
class TlsRecorder:
    """A TLS server on 127.0.0.1 that completes each handshake, records whatever the client then sends and refuses
    a request once it has its head (403)."""

    context: ssl.SSLContext
    connections: int = 0
    received: bytearray = field(default_factory=bytearray)
    port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
            self.port = int(listeners[0].socket.getsockname()[1])
            task_status.started()

    async def _handle(self, raw: trio.SocketStream) -> None:
        self.connections += 1
        tls = trio.SSLStream(raw, self.context, server_side=True, https_compatible=True)
        with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
            async with tls:
                while data := await tls.receive_some(65536):
                    self.received += data
                    if b"\r\n\r\n" in self.received:
                        await tls.send_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
                        return


@pytest.fixture
def agent_key(tmp_path: Path) -> AgentKey:
    return generate_keys(tmp_path / "keys")


async def dial(url: str, ca_file: Path | None, pins: tuple[str, ...], *, proxy_port: int | None = None) -> None:
    """Open the agent's WebSocket (a token-shaped header included) and close it again; a failure is raised as
    itself, out of the nursery's exception group."""
    try:
        await _dial(url, ca_file, pins, proxy_port)
    except BaseExceptionGroup as group:
        if len(group.exceptions) != 1:
            raise
        raise group.exceptions[0] from None


async def _dial(url: str, ca_file: Path | None, pins: tuple[str, ...], proxy_port: int | None) -> None:
    async with trio.open_nursery() as nursery:
        ws = await connect_websocket(
            url,
            headers=[(b"authorization", b"Bearer eyJ-the-token")],
            ssl_context=ssl.create_default_context(cafile=str(ca_file)) if ca_file else None,
            proxy=parse_proxy_url(f"http://127.0.0.1:{proxy_port}", source="test") if proxy_port else None,
            connect_timeout=10.0,
            max_message_size=1 << 20,
            nursery=nursery,
            pins=pins,
        )
        await ws.aclose()
        nursery.cancel_scope.cancel()


async def test_a_mismatch_is_refused_before_any_byte_of_the_websocket_request(tmp_path: Path) -> None:
    context, ca_file = self_signed_tls(tmp_path)
    server = TlsRecorder(context)
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(server.serve)
            with pytest.raises(PinMismatch) as info:
                await dial(f"wss://127.0.0.1:{server.port}/", ca_file, (OTHER, NEXT))
            # The same server, with its pin listed: the request (and the header) goes out and the recorder sees
            # it, so the empty recording of the first connection means something.
            with pytest.raises(ConnectionRejected):  # the recorder refuses every upgrade it reads
                await dial(f"wss://127.0.0.1:{server.port}/", ca_file, (OTHER, pem_pin(ca_file)))
            nursery.cancel_scope.cancel()
    seen = pem_pin(ca_file)
    assert str(info.value).startswith(f"the tunnel's certificate key {seen} matches none of tunnelPins (2 set)")
    assert server.connections == 2
    assert server.received.startswith(b"GET / HTTP/1.1\r\n") and b"eyJ-the-token" in server.received
    assert server.received.count(b"GET ") == 1  # the first connection sent nothing after its handshake


async def test_the_leaf_key_is_pinned_not_the_ca(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)  # a CA and a leaf with its own key
    backend = DevBackend(rpc_tls=pki.server, rpc_host="127.0.0.1")
    leaf, ca = pem_pin(tmp_path / "cert.pem"), pem_pin(tmp_path / "ca.pem")
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            with pytest.raises(PinMismatch):
                await dial(backend.rpc_url, tmp_path / "ca.pem", (ca, OTHER))
            assert backend.handshakes == []
            with pytest.raises(ConnectionRejected):  # this test's token is no JWT: the pin let the upgrade through
                await dial(backend.rpc_url, tmp_path / "ca.pem", (OTHER, leaf))
            nursery.cancel_scope.cancel()
    assert backend.handshakes == [401]


async def test_through_a_connect_proxy_a_mismatch_is_refused_too(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    backend = DevBackend(rpc_tls=pki.server)
    proxy = ConnectProxy()
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            await nursery.start(proxy.serve)
            with pytest.raises(PinMismatch):
                await dial(backend.rpc_url, tmp_path / "ca.pem", (OTHER, NEXT), proxy_port=proxy.port)
            nursery.cancel_scope.cancel()
    assert len(proxy.heads) == 1 and proxy.heads[0].startswith(f"CONNECT 127.0.0.1:{backend.rpc_port} ")
    assert backend.handshakes == [] and b"eyJ" not in proxy.tunnelled


async def test_pins_with_a_ws_url_built_in_code_are_refused_by_the_dial() -> None:
    with pytest.raises(ConfigError, match="no certificate to pin"):
        await dial("ws://127.0.0.1:9/", None, (OTHER, NEXT))


@asynccontextmanager
async def tunnel_running(url: str, key: AgentKey, ca_file: Path, pins: tuple[str, ...]) -> AsyncIterator[StatusLog]:
    log = StatusLog()
    worker = Worker(DryPipeline())
    settings = TunnelSettings(url=url, client_id=CLIENT_ID, key=key, ca_file=str(ca_file), proxy=None, pins=pins)
    tunnel = Tunnel(settings, SessionSettings(CLIENT_ID, heartbeat_interval=60.0), worker, log)
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await nursery.start(tunnel.run)
        yield log
        tunnel.shutdown()
        nursery.cancel_scope.cancel()


async def test_the_tunnel_retries_a_mismatch_on_its_normal_period(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey, tmp_path: Path
) -> None:
    autojump_clock.autojump_threshold = AUTOJUMP_REAL_SECONDS
    context, ca_file = self_signed_tls(tmp_path)
    server = TlsRecorder(context)
    async with trio.open_nursery() as nursery:
        await nursery.start(server.serve)
        url = f"wss://127.0.0.1:{server.port}/"
        async with tunnel_running(url, agent_key, ca_file, (OTHER, NEXT)) as log:
            await log.wait_for(lambda _: len(log.retry_gaps()) >= 4)
        nursery.cancel_scope.cancel()
    gaps = log.retry_gaps()
    assert [slept for slept, _, _ in gaps[1:4]] == pytest.approx([RECONNECT_PERIOD] * 3, abs=1e-6)
    for _, text, _ in gaps:
        match = RETRY.search(text)
        assert match is not None and f"certificate key {pem_pin(ca_file)} matches none of tunnelPins" in text
    retries = len([text for _, text in log.entries if RETRY.search(text)])
    assert server.received == b"" and server.connections in (retries, retries + 1)  # one connection per attempt


# --- doctor ----------------------------------------------------------------------------------------------------


async def test_doctor_shows_the_live_pin_and_whether_it_matches(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    leaf = pem_pin(tmp_path / "cert.pem")

    async def body(nursery: trio.Nursery) -> None:
        port = await start_date_server(nursery, DateServer(tls=pki.server))
        url, ca_file = f"wss://localhost:{port}", tmp_path / "ca.pem"
        unset = await probe(url, ca_file=ca_file)
        assert unset["pin"].level == "skip" and unset["pin"].detail.endswith(f"the live certificate key is {leaf}")
        assert unset["clock"].level != "skip"
        matching = await probe(url, ca_file=ca_file, pins=(OTHER, leaf))
        assert matching["pin"].level == "ok" and f"{leaf} is pin 2 of 2" in matching["pin"].detail
        wrong = await probe(url, ca_file=ca_file, pins=(OTHER, NEXT))
        assert wrong["pin"].level == "fail" and f"key {leaf} matches none of tunnelPins" in wrong["pin"].detail
        assert "another channel" in wrong["pin"].fix
        assert wrong["clock"].level == "skip" and "pin step failed" in wrong["clock"].detail

    await with_servers(body)
