"""The tunnel's connect loop against real servers on 127.0.0.1: the reconnect period with its random phase and
when a new phase is drawn, Retry-After on a 503/429, the 401/403 backoff and what STATUS says about it, ws:// only
to loopback, and wss:// with a private CA (a throwaway self-signed certificate made with `cryptography`).

Backoff timing runs on trio's autojump clock. The sockets are real, so the clock may only jump while the loop is
idle for a moment of real time (AUTOJUMP_REAL_SECONDS), which loopback I/O never is. Delays are measured between
the tunnel's own status reports ("retrying in ..." then "connecting to ..."), between which it only sleeps.
"""

from __future__ import annotations

import datetime
import ipaddress
import re
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest
import trio
import trio.testing
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from trio_websocket import ConnectionClosed, WebSocketRequest, serve_websocket

from p0_ssh_agent.config.values import ValueProblem, check_tunnel_url
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.identity.signing_key import AgentKey, generate_keys
from p0_ssh_agent.protocol import jsonrpc
from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest
from p0_ssh_agent.runtime import status_text
from p0_ssh_agent.runtime.backoff import AUTH_BACKOFF_CAP, RECONNECT_PERIOD, RETRY_AFTER_CAP, RetrySettings
from p0_ssh_agent.runtime.connection import SessionSettings
from p0_ssh_agent.runtime.jobs import JobKey
from p0_ssh_agent.runtime.tunnel import Tunnel, TunnelSettings
from p0_ssh_agent.runtime.worker import Worker

CLIENT_ID = "acme:host-1:ssh"
AUTOJUMP_REAL_SECONDS = 0.1
GUARD_SECONDS = 20.0  # real-time guard so a broken build fails instead of hanging; never asserted on
RETRY = re.compile(r"retrying in (\d+)s: (.*)")


class DryPipeline:
    async def execute(self, request: ForwardedRequest, key: JobKey) -> CommandResult:
        return CommandResult(success=True, message=f"DRY-RUN: {key.command}")


@dataclass
class StatusLog:
    """What the tunnel reports (the supervisor puts each text in STATUS=), with the virtual time of each."""

    entries: list[tuple[float, str]] = field(default_factory=list)
    _changed: trio.Event = field(default_factory=trio.Event)

    def __call__(self, text: str) -> None:
        self.entries.append((trio.current_time(), text))
        self._changed.set()
        self._changed = trio.Event()

    async def wait_for(self, predicate: Callable[[list[tuple[float, str]]], bool]) -> None:
        while not predicate(self.entries):
            await self._changed.wait()

    async def wait_count(self, prefix: str, at_least: int) -> None:
        await self.wait_for(lambda _: self.count(prefix) >= at_least)

    def count(self, prefix: str) -> int:
        return sum(1 for _, text in self.entries if text.startswith(prefix))

    def retry_gaps(self) -> list[tuple[float, str, str]]:
        """(seconds slept, the retry text, the report before it) for each retry the tunnel has finished waiting."""
        gaps = []
        for index, (when, text) in enumerate(self.entries[:-1]):
            following_when, following = self.entries[index + 1]
            if RETRY.search(text) and following.startswith("connecting to "):
                gaps.append((following_when - when, text, self.entries[index - 1][1] if index else ""))
        return gaps


@pytest.fixture
def agent_key(tmp_path: Path) -> AgentKey:
    return generate_keys(tmp_path / "keys")


@asynccontextmanager
async def tunnel_running(
    url: str, key: AgentKey, *, ca_file: str | None = None, retry: RetrySettings | None = None
) -> AsyncIterator[StatusLog]:
    log = StatusLog()
    worker = Worker(DryPipeline())
    tunnel = Tunnel(
        TunnelSettings(url=url, client_id=CLIENT_ID, key=key, ca_file=ca_file, proxy=None),
        SessionSettings(CLIENT_ID, heartbeat_interval=60.0),
        worker,
        log,
        retry=retry,
    )
    async with trio.open_nursery() as nursery:
        await nursery.start(worker.run)
        await nursery.start(tunnel.run)
        yield log
        tunnel.shutdown()
        with trio.move_on_after(5):
            await tunnel.stopped.wait()
        nursery.cancel_scope.cancel()


@asynccontextmanager
async def backend_running(key: AgentKey) -> AsyncIterator[DevBackend]:
    backend = DevBackend()
    backend.register_client(CLIENT_ID, key.public_jwk)
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        yield backend
        nursery.cancel_scope.cancel()


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def slow_autojump(clock: trio.testing.MockClock) -> None:
    clock.autojump_threshold = AUTOJUMP_REAL_SECONDS


# --- backoff ------------------------------------------------------------------------------------------------------


async def test_reconnect_waits_are_a_random_phase_then_one_period(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey
) -> None:
    """Issue 16: not the Go agent's 1, 2, 4 ... 30 s, nor full jitter from 1 s (a fleet's first second), but a phase
    uniform over [0, 11 s] and then exactly 11 s per refused attempt, however long the backend stays away."""
    slow_autojump(autojump_clock)
    async with tunnel_running(f"ws://127.0.0.1:{closed_port()}/", agent_key) as log:
        await log.wait_for(lambda _: len(log.retry_gaps()) >= 20)
    gaps = log.retry_gaps()[:20]
    assert RECONNECT_PERIOD == 11.0
    for n, (slept, text, _) in enumerate(gaps):
        if n == 0:
            assert 0 <= slept <= 11.0 + 1e-6, slept
        else:
            assert slept == pytest.approx(11.0, abs=1e-6), (n, slept)
        match = RETRY.search(text)
        assert match is not None and abs(int(match.group(1)) - slept) <= 0.5 + 1e-6, (text, slept)
        assert "refused" in match.group(2).lower(), text


async def test_a_new_phase_is_drawn_once_set_client_id_succeeds(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey
) -> None:
    slow_autojump(autojump_clock)
    async with backend_running(agent_key) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = 503, 6  # six refusals: the phase, then periods
        async with tunnel_running(backend.rpc_url, agent_key) as log:
            for round_ in range(1, 4):
                await log.wait_count("connected to ", round_)
                await backend.drop(CLIENT_ID)
            await log.wait_for(lambda _: log.count("connected to ") >= 4)
    assert backend.handshakes.count(503) == 6
    gaps = log.retry_gaps()
    refused = [slept for slept, text, _ in gaps if "HTTP 503" in text]
    assert len(refused) == 6 and refused[1:] == pytest.approx([11.0] * 5, abs=1e-6)
    after_session = [(slept, text) for slept, text, before in gaps if before.startswith("connected to ")]
    assert len(after_session) == 3
    # A reset draws a new phase: without it each wait would be exactly one period (a draw hits 11.0 with odds 0).
    for slept, text in after_session:
        assert 0 <= slept < 11.0 - 1e-6, (slept, text)
        assert "connection closed by server (code 1011)" in text
    # The first frame on every connection is setClientId with the agent's own id.
    assert [client for _, client in backend.set_client_id_log][:4] == [CLIENT_ID] * 4


@pytest.mark.parametrize("http_status", [503, 429])
async def test_a_refusal_with_retry_after_waits_what_it_asks_plus_a_phase(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey, http_status: int
) -> None:
    slow_autojump(autojump_clock)
    async with backend_running(agent_key) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = http_status, 3
        backend.hooks.reject_headers = [(b"Retry-After", b"120")]
        async with tunnel_running(backend.rpc_url, agent_key) as log:
            await log.wait_count("connected to ", 1)
    gaps = log.retry_gaps()[:3]
    assert len(gaps) == 3
    for slept, text, _ in gaps:
        assert 120.0 - 1e-6 <= slept <= 120.0 + 11.0 + 1e-6, slept
        assert f"with HTTP {http_status}, Retry-After 120s" in text, text
    assert backend.handshakes == [http_status] * 3 + [101]


async def test_retry_after_is_bounded_and_ignored_where_it_does_not_apply(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey
) -> None:
    """A day's Retry-After waits at most RETRY_AFTER_CAP (plus the phase); on a 502 (which still carries the header
    here) it means nothing: the waits are the ordinary phase after the drop, then one period per refusal."""
    slow_autojump(autojump_clock)
    async with backend_running(agent_key) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = 503, 1
        backend.hooks.reject_headers = [(b"retry-after", b"86400")]
        async with tunnel_running(backend.rpc_url, agent_key) as log:
            await log.wait_count("connected to ", 1)
            backend.hooks.reject_status, backend.hooks.reject_count = 502, 2
            await backend.drop(CLIENT_ID)
            await log.wait_count("connected to ", 2)
    gaps = log.retry_gaps()
    assert RETRY_AFTER_CAP <= gaps[0][0] <= RETRY_AFTER_CAP + 11.0 + 1e-6, gaps[0]
    after_drop = [slept for slept, text, _ in gaps if "connection closed by server" in text]
    assert len(after_drop) == 1 and 0 <= after_drop[0] <= 11.0 + 1e-6
    bad_gateway = [slept for slept, text, _ in gaps if "HTTP 502" in text]
    assert bad_gateway == pytest.approx([11.0, 11.0], abs=1e-6)
    assert not any("Retry-After" in text for _, text, _ in gaps[1:])


@pytest.mark.parametrize(
    ("http_status", "hint"),
    [(401, "key not registered with P0, or the clock is skewed"), (403, "client not authorised")],
)
async def test_401_and_403_back_off_up_to_five_minutes_and_say_so(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey, http_status: int, hint: str
) -> None:
    slow_autojump(autojump_clock)
    async with backend_running(agent_key) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = http_status, 10**6
        async with tunnel_running(backend.rpc_url, agent_key) as log:
            await log.wait_for(lambda _: len(log.retry_gaps()) >= 9)
            gaps = log.retry_gaps()[:9]
            # The registration gets fixed: the same process connects, no restart needed.
            backend.hooks.reject_count = 0
            await log.wait_for(lambda _: log.count("connected to ") >= 1)
    ceilings = [min(AUTH_BACKOFF_CAP, 30.0 * 2**n) for n in range(9)]
    for (slept, text, _), ceiling in zip(gaps, ceilings, strict=True):
        assert 0 <= slept <= ceiling + 1e-6, (slept, ceiling)
        assert text.startswith(f"unauthorized (HTTP {http_status}), retrying in "), text
        assert f"with HTTP {http_status}" in text and hint in text, text
    # Past the ordinary 30 s cap (odds of every draw from 60..300 staying under 30: far below 1e-6).
    assert max(slept for slept, _, _ in gaps) > 30
    assert backend.handshakes.count(http_status) >= len(gaps) and backend.handshakes[-1] == 101


async def test_reconnect_max_seconds_is_the_period(autojump_clock: trio.testing.MockClock, agent_key: AgentKey) -> None:
    """reconnectMaxSeconds (config): the phase within it, then exactly it per refused attempt, instead of 11 s."""
    slow_autojump(autojump_clock)
    retry = RetrySettings(reconnect_max=4.0)
    async with tunnel_running(f"ws://127.0.0.1:{closed_port()}/", agent_key, retry=retry) as log:
        await log.wait_for(lambda _: len(log.retry_gaps()) >= 12)
    gaps = [slept for slept, _, _ in log.retry_gaps()[:12]]
    assert 0 <= gaps[0] <= 4.0 + 1e-6
    assert gaps[1:] == pytest.approx([4.0] * 11, abs=1e-6)


async def test_unauthorized_retry_seconds_is_the_first_ceiling_after_a_401(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey
) -> None:
    """unauthorizedRetrySeconds (config): the first 401 wait is within it, and the ceiling still doubles to 300 s."""
    slow_autojump(autojump_clock)
    async with backend_running(agent_key) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = 401, 10**6
        async with tunnel_running(backend.rpc_url, agent_key, retry=RetrySettings(unauthorized_first=2.0)) as log:
            await log.wait_for(lambda _: len(log.retry_gaps()) >= 12)
    gaps = log.retry_gaps()[:12]
    for n, (slept, text, _) in enumerate(gaps):
        assert 0 <= slept <= min(AUTH_BACKOFF_CAP, 2.0 * 2**n) + 1e-6, (n, slept)
        assert text.startswith("unauthorized (HTTP 401), retrying in "), text
    # Past the ordinary cap: it still grows towards 5 minutes (odds of the last seven draws all under 30: ~1e-6).
    assert max(slept for slept, _, _ in gaps) > 30


async def test_other_handshake_rejections_name_their_status_and_hint(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey
) -> None:
    slow_autojump(autojump_clock)
    async with backend_running(agent_key) as backend:
        backend.hooks.reject_status, backend.hooks.reject_count = 404, 10**6
        async with tunnel_running(backend.rpc_url, agent_key) as log:
            await log.wait_for(lambda _: len(log.retry_gaps()) >= 3)
    for slept, text, _ in log.retry_gaps()[:3]:
        assert text.startswith("retrying in ") and "HTTP 404 (wrong WebSocket path in tunnelHost)" in text
        assert slept <= RECONNECT_PERIOD + 1e-6


async def test_an_unregistered_key_is_a_401_and_the_tunnel_stays_up(
    autojump_clock: trio.testing.MockClock, agent_key: AgentKey, tmp_path: Path
) -> None:
    """No test hook: the backend's real JWT check refuses a key it does not know, and the agent waits it out."""
    slow_autojump(autojump_clock)
    stranger = generate_keys(tmp_path / "other-keys")
    async with backend_running(stranger) as backend, tunnel_running(backend.rpc_url, agent_key) as log:
        await log.wait_for(lambda _: len(log.retry_gaps()) >= 2)
        backend.register_client(CLIENT_ID, agent_key.public_jwk)
        await log.wait_for(lambda _: log.count("connected to ") >= 1)
    assert backend.handshakes[:2] == [401, 401] and backend.handshakes[-1] == 101
    assert all(text.startswith("unauthorized (HTTP 401)") for _, text, _ in log.retry_gaps())


# --- ws:// only to loopback -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["ws://10.1.2.3/", "ws://p0.example.com:8080/x", "ws://[2001:db8::1]/"])
def test_config_refuses_ws_to_other_hosts(url: str) -> None:
    with pytest.raises(ValueProblem, match="clear text"):
        check_tunnel_url(url)


@pytest.mark.parametrize("url", ["ws://127.0.0.1:8080/", "ws://localhost/", "ws://[::1]:9/", "wss://p0.example.com/"])
def test_config_accepts_ws_to_loopback_and_wss_anywhere(url: str) -> None:
    assert check_tunnel_url(url) == url


@pytest.mark.parametrize("host", ["192.0.2.10", "p0.invalid"])
async def test_the_tunnel_itself_refuses_ws_to_other_hosts(agent_key: AgentKey, host: str) -> None:
    with trio.fail_after(GUARD_SECONDS):
        async with tunnel_running(f"ws://{host}:80/", agent_key) as log:
            await log.wait_for(lambda entries: any(RETRY.search(text) for _, text in entries))
    retry = next(text for _, text in log.entries if RETRY.search(text))
    assert f"refusing ws:// to {host}" in retry and "clear text" in retry


# --- TLS ----------------------------------------------------------------------------------------------------------


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost, signed by its own key: the "private CA" is the cert itself."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / f"{name}.crt", directory / f"{name}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    return cert_path, key_path


async def _answer_set_client_id(request: WebSocketRequest) -> None:
    """A minimal tunnel server behind TLS: accept, answer setClientId, keep the connection."""
    ws = await request.accept()
    try:
        while True:
            incoming = jsonrpc.parse_frame(await ws.get_message())
            if isinstance(incoming, jsonrpc.Request) and incoming.method == "setClientId":
                await ws.send_message(jsonrpc.encode_result(incoming.id, {"ok": True}))
    except ConnectionClosed:
        return


@asynccontextmanager
async def wss_server(cert: Path, key: Path) -> AsyncIterator[str]:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    async with trio.open_nursery() as nursery:
        server = await nursery.start(serve_websocket, _answer_set_client_id, "127.0.0.1", 0, context)
        yield f"wss://127.0.0.1:{server.port}/"
        nursery.cancel_scope.cancel()


async def test_wss_with_tunnel_ca_file_connects(tmp_path: Path, agent_key: AgentKey) -> None:
    cert, key = self_signed(tmp_path, "backend")
    with trio.fail_after(GUARD_SECONDS):
        async with wss_server(cert, key) as url, tunnel_running(url, agent_key, ca_file=str(cert)) as log:
            await log.wait_for(lambda _: log.count("connected to ") >= 1)
    assert not any(RETRY.search(text) for _, text in log.entries), log.entries


async def test_ws_to_loopback_builds_no_tls_context(tmp_path: Path, agent_key: AgentKey) -> None:
    """ws:// never uses TLS, so the CA store is not loaded for it (about 2 MiB of the idle daemon, issue 16): a
    tunnelCaFile that cannot be read, which would fail every wss:// attempt, does not matter to ws://."""
    missing = str(tmp_path / "no-such-ca.pem")
    async with backend_running(agent_key) as backend:
        with trio.fail_after(GUARD_SECONDS):
            async with tunnel_running(backend.rpc_url, agent_key, ca_file=missing) as log:
                await log.wait_for(lambda _: log.count("connected to ") >= 1)
    assert not any(RETRY.search(text) for _, text in log.entries), log.entries


@pytest.mark.parametrize("with_other_ca", [False, True], ids=["system-store", "other-ca-file"])
async def test_wss_without_the_right_ca_fails_with_a_clear_error(
    tmp_path: Path, agent_key: AgentKey, with_other_ca: bool
) -> None:
    cert, key = self_signed(tmp_path, "backend")
    other_ca = str(self_signed(tmp_path, "someone-else")[0]) if with_other_ca else None
    with trio.fail_after(GUARD_SECONDS):
        async with wss_server(cert, key) as url, tunnel_running(url, agent_key, ca_file=other_ca) as log:
            await log.wait_for(lambda entries: any(RETRY.search(text) for _, text in entries))
    retry = next(text for _, text in log.entries if RETRY.search(text))
    assert "TLS certificate not trusted" in retry, retry
    assert "self-signed" in retry or "local issuer" in retry, retry
    assert log.count("connected to ") == 0


def test_status_texts_never_show_url_credentials() -> None:
    """Guard for the texts above: a URL with user:password (refused by config, but) never echoed into STATUS."""
    text = status_text.unauthorized(401, "wss://user:s3cret@p0.example.com/x", 42)
    assert "s3cret" not in text and "user:" not in text
    assert "wss://p0.example.com/x" in text
