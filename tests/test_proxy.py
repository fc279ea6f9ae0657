"""The outbound WebSocket through a real HTTP CONNECT proxy (written here, on 127.0.0.1:0) in front of a real
trio-websocket server, with and without TLS (a throwaway CA made with `cryptography`); proxy refusals; and
the pure proxy-selection rules (config vs environment, NO_PROXY)."""

from __future__ import annotations

import base64
import contextlib
import datetime
import ipaddress
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path

import pytest
import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from trio_websocket import ConnectionClosed, ConnectionRejected, WebSocketRequest, serve_websocket

from p0_ssh_agent.config.values import ValueProblem, check_tunnel_url, is_loopback_host
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.runtime.backend_dial import bypass_proxy, connect_websocket, proxy_for
from p0_ssh_agent.runtime.http_connect import (
    MAX_RESPONSE_HEAD_BYTES,
    ProxyError,
    ProxySettings,
    hide_userinfo,
    open_tunnel_stream,
    parse_proxy_url,
)

# Guards so a broken build fails instead of hanging the suite; never asserted on.
GUARD_SECONDS = 20.0
CONNECT_TIMEOUT = 10.0
MAX_MESSAGE = 1 << 20


# --- a real CONNECT proxy -----------------------------------------------------------------------------------


@dataclass
class ConnectProxy:
    """CONNECT only. `expected_auth` (a full header value) makes it demand Proxy-Authorization; `answer`
    replaces the whole exchange with fixed bytes; `silent` accepts and never answers."""

    expected_auth: str | None = None
    answer: bytes | None = None
    silent: bool = False
    challenge: str = 'Basic realm="test proxy"'
    heads: list[str] = field(default_factory=list)
    client_bytes: bytearray = field(default_factory=bytearray)

    async def handle(self, client: trio.SocketStream) -> None:
        async with client:
            with contextlib.suppress(trio.BrokenResourceError):
                await self._serve(client)

    async def _serve(self, client: trio.SocketStream) -> None:
        buffer = b""
        while b"\r\n\r\n" not in buffer:
            chunk = await client.receive_some(4096)
            if not chunk:
                return
            buffer += chunk
        head = buffer.split(b"\r\n\r\n", 1)[0].decode("latin-1")
        self.heads.append(head)
        if self.silent:
            await trio.sleep_forever()
        if self.answer is not None:
            await client.send_all(self.answer)
            return
        request_line, *lines = head.split("\r\n")
        method, target, _version = request_line.split(" ")
        headers = {name.strip().lower(): value.strip() for name, _, value in (x.partition(":") for x in lines)}
        if method != "CONNECT":
            await client.send_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
            return
        if self.expected_auth is not None and headers.get("proxy-authorization") != self.expected_auth:
            await client.send_all(
                b"HTTP/1.1 407 Proxy Authentication Required\r\n"
                + f"Proxy-Authenticate: {self.challenge}\r\n".encode()
                + b"Content-Length: 12\r\n\r\nAccess denied"
            )
            return
        host, _, port = target.rpartition(":")
        upstream = await trio.open_tcp_stream(host.strip("[]"), int(port))
        await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
        async with upstream, trio.open_nursery() as nursery:
            nursery.start_soon(pump, client, upstream, self.client_bytes)
            nursery.start_soon(pump, upstream, client, None)


async def pump(source: trio.SocketStream, sink: trio.SocketStream, record: bytearray | None) -> None:
    try:
        while data := await source.receive_some(65536):
            if record is not None:
                record += data
            await sink.send_all(data)
        await sink.send_eof()
    except (trio.BrokenResourceError, trio.ClosedResourceError):
        pass


async def start_proxy(nursery: trio.Nursery, proxy: ConnectProxy) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, proxy.handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


# --- a real WebSocket server --------------------------------------------------------------------------------


@dataclass
class EchoServer:
    reject_status: int | None = None
    requests: list[tuple[str, dict[str, str]]] = field(default_factory=list)

    async def handle(self, request: WebSocketRequest) -> None:
        self.requests.append((request.path, {k.decode().lower(): v.decode() for k, v in request.headers}))
        if self.reject_status is not None:
            await request.reject(self.reject_status, body=b'{"error":"no"}')
            return
        ws = await request.accept()
        try:
            while True:
                message = await ws.get_message()
                await ws.send_message(f"echo:{message!s}")
        except ConnectionClosed:
            pass


async def start_ws(nursery: trio.Nursery, server: EchoServer, tls: ssl.SSLContext | None = None) -> int:
    ws_server = await nursery.start(partial(serve_websocket, server.handle, "127.0.0.1", 0, tls))
    return int(ws_server.port)


# --- a throwaway CA and server certificate ------------------------------------------------------------------


@dataclass
class Pki:
    client: ssl.SSLContext
    server: ssl.SSLContext


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def make_pki(directory: Path) -> Pki:
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("p0 test CA"))
        .issuer_name(_name("p0 test CA"))
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name("localhost"))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    ca_file, cert_file, key_file = directory / "ca.pem", directory / "cert.pem", directory / "key.pem"
    ca_file.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return Pki(client=ssl.create_default_context(cafile=str(ca_file)), server=server)


async def exchange(
    nursery: trio.Nursery, url: str, *, proxy: ProxySettings | None, tls: ssl.SSLContext | None = None
) -> str:
    ws = await connect_websocket(
        url,
        headers=[("Authorization", "Bearer token-for-the-server")],
        ssl_context=tls,
        proxy=proxy,
        connect_timeout=CONNECT_TIMEOUT,
        max_message_size=MAX_MESSAGE,
        nursery=nursery,
    )
    await ws.send_message("ping")
    reply = await ws.get_message()
    await ws.aclose()
    return str(reply)


async def run_with_servers(body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await body(nursery)
            nursery.cancel_scope.cancel()


# --- end to end ---------------------------------------------------------------------------------------------


async def test_websocket_through_proxy_with_basic_auth() -> None:
    async def body(nursery: trio.Nursery) -> None:
        server = EchoServer()
        ws_port = await start_ws(nursery, server)
        expected = "Basic " + base64.b64encode(b"agent:s3cr%t:x").decode()
        proxy = ConnectProxy(expected_auth=expected)
        proxy_port = await start_proxy(nursery, proxy)
        settings = parse_proxy_url(f"http://agent:s3cr%25t%3Ax@127.0.0.1:{proxy_port}", source="test")

        reply = await exchange(nursery, f"ws://127.0.0.1:{ws_port}/rpc?x=1", proxy=settings)

        assert reply == "echo:ping"
        assert proxy.heads == [
            f"CONNECT 127.0.0.1:{ws_port} HTTP/1.1\r\nHost: 127.0.0.1:{ws_port}\r\n"
            f"User-Agent: p0-ssh-agent/0.1.0\r\nProxy-Authorization: {expected}"
        ]
        [(path, headers)] = server.requests
        assert path == "/rpc?x=1"
        assert headers["authorization"] == "Bearer token-for-the-server"
        # Plain ws:// lets the proxy read the handshake: the Host header carries the non-default port.
        assert f"Host: 127.0.0.1:{ws_port}\r\n".encode() in proxy.client_bytes

    await run_with_servers(body)


async def test_wss_through_proxy_hides_the_token_from_the_proxy(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def body(nursery: trio.Nursery) -> None:
        server = EchoServer()
        ws_port = await start_ws(nursery, server, pki.server)
        proxy = ConnectProxy()
        proxy_port = await start_proxy(nursery, proxy)
        settings = parse_proxy_url(f"127.0.0.1:{proxy_port}", source="test")

        reply = await exchange(nursery, f"wss://localhost:{ws_port}/", proxy=settings, tls=pki.client)

        assert reply == "echo:ping"
        assert proxy.heads[0].startswith(f"CONNECT localhost:{ws_port} HTTP/1.1\r\n")
        assert "Proxy-Authorization" not in proxy.heads[0]
        assert len(proxy.client_bytes) > 0  # the TLS session really went through the proxy
        assert b"Bearer" not in proxy.client_bytes
        assert b"token-for-the-server" not in proxy.client_bytes
        assert server.requests[0][1]["authorization"] == "Bearer token-for-the-server"

    await run_with_servers(body)


async def test_wss_direct_checks_the_ip_address_in_the_certificate(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)

    async def body(nursery: trio.Nursery) -> None:
        ws_port = await start_ws(nursery, EchoServer(), pki.server)
        assert await exchange(nursery, f"wss://127.0.0.1:{ws_port}", proxy=None, tls=pki.client) == "echo:ping"

    await run_with_servers(body)


async def test_untrusted_certificate_fails_the_connection(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / ".")
    other = tmp_path / "other"
    other.mkdir()
    stranger = make_pki(other)

    async def body(nursery: trio.Nursery) -> None:
        ws_port = await start_ws(nursery, EchoServer(), pki.server)
        proxy_port = await start_proxy(nursery, ConnectProxy())
        settings = parse_proxy_url(f"http://127.0.0.1:{proxy_port}", source="test")
        with pytest.raises(trio.BrokenResourceError) as info:
            await exchange(nursery, f"wss://localhost:{ws_port}/", proxy=settings, tls=stranger.client)
        assert isinstance(info.value.__cause__, ssl.SSLCertVerificationError)

    await run_with_servers(body)


@pytest.mark.parametrize(("through_proxy", "status"), [(True, 401), (False, 403), (True, 404)])
async def test_handshake_rejection_propagates_unchanged(through_proxy: bool, status: int) -> None:
    async def body(nursery: trio.Nursery) -> None:
        ws_port = await start_ws(nursery, EchoServer(reject_status=status))
        good_port = await start_ws(nursery, EchoServer())
        settings = None
        if through_proxy:
            settings = parse_proxy_url(f"http://127.0.0.1:{await start_proxy(nursery, ConnectProxy())}", source="t")
        with pytest.raises(ConnectionRejected) as info:
            await exchange(nursery, f"ws://127.0.0.1:{ws_port}/", proxy=settings)
        assert info.value.status_code == status
        # The caller's nursery is unharmed and serves the next connection.
        assert await exchange(nursery, f"ws://127.0.0.1:{good_port}/", proxy=settings) == "echo:ping"

    await run_with_servers(body)


# --- proxy refusals -----------------------------------------------------------------------------------------


async def tunnel_error(proxy: ConnectProxy, settings_for: Callable[[int], ProxySettings]) -> str:
    """Run open_tunnel_stream against `proxy` and return the ProxyError message."""
    message = ""

    async def body(nursery: trio.Nursery) -> None:
        nonlocal message
        settings = settings_for(await start_proxy(nursery, proxy))
        with pytest.raises(ProxyError) as info:
            await open_tunnel_stream("backend.example", 443, settings, timeout=CONNECT_TIMEOUT)
        message = str(info.value)

    await run_with_servers(body)
    return message


async def test_407_without_credentials_says_how_to_add_them() -> None:
    message = await tunnel_error(
        ConnectProxy(expected_auth="Basic x"), lambda port: parse_proxy_url(f"127.0.0.1:{port}", source="t")
    )
    assert message.startswith("the proxy http://127.0.0.1:")
    assert message.endswith(
        " requires authentication (HTTP 407): put the credentials in the proxy URL as http://user:password@host:port"
    )


async def test_407_with_wrong_credentials_never_shows_them() -> None:
    proxy = ConnectProxy(expected_auth="Basic " + base64.b64encode(b"agent:right").decode())
    message = await tunnel_error(
        proxy, lambda port: parse_proxy_url(f"http://agent:wrong-pass@127.0.0.1:{port}", source="t")
    )
    assert "rejected the user name and password" in message
    assert "HTTP 407" in message
    assert "wrong-pass" not in message
    assert base64.b64encode(b"agent:wrong-pass").decode() not in message
    assert proxy.heads[0].endswith("Proxy-Authorization: Basic " + base64.b64encode(b"agent:wrong-pass").decode())


async def test_407_with_an_unsupported_scheme_says_so() -> None:
    message = await tunnel_error(
        ConnectProxy(expected_auth="never", challenge="Negotiate"),
        lambda port: parse_proxy_url(f"http://u:p@127.0.0.1:{port}", source="t"),
    )
    assert message.endswith("; it asks for negotiate, and only the Basic scheme is supported")


CREDENTIALS = b"agent:pw-9f3k"
TOKEN = base64.b64encode(CREDENTIALS)


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (
            b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
            "refused CONNECT backend.example:443: 'HTTP/1.1 403 Forbidden'",
        ),
        (
            b"HTTP/1.0 502 Bad Gateway\r\n\r\n",
            "refused CONNECT backend.example:443: 'HTTP/1.0 502 Bad Gateway'",
        ),
        (
            b"SSH-2.0-OpenSSH_9.2\r\n\r\n",
            "answered CONNECT with something that is not HTTP: 'SSH-2.0-OpenSSH_9.2'",
        ),
        (b"HTTP/1.1 200 OK\r\n", "closed the connection without answering CONNECT"),
        (b"", "closed the connection without answering CONNECT"),
        (b"HTTP/1.1 200 OK\r\n\r\nsurprise", "sent data into the tunnel before it was used"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * MAX_RESPONSE_HEAD_BYTES + b"\r\n\r\n", "over 16384 bytes"),
        (b"HTTP/1.1 200 OK\r\nX-Pad: " + b"a" * 3 * MAX_RESPONSE_HEAD_BYTES, "over 16384 bytes"),
        (
            b"HTTP/1.1 500 leaked " + TOKEN + b" and pw-9f3k\x00\r\n\r\n",
            "'HTTP/1.1 500 leaked [REDACTED] and [REDACTED]?'",
        ),
    ],
)
async def test_proxy_refusals_become_proxy_errors(answer: bytes, expected: str) -> None:
    message = await tunnel_error(
        ConnectProxy(answer=answer),
        lambda port: parse_proxy_url(f"http://{CREDENTIALS.decode()}@127.0.0.1:{port}", source="t"),
    )
    assert message.startswith("the proxy http://127.0.0.1:")
    assert expected in message
    assert "pw-9f3k" not in message


async def test_unreachable_proxy() -> None:
    with trio.socket.socket() as sock:  # a port that was free a moment ago and has no listener now
        await sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = parse_proxy_url(f"http://127.0.0.1:{port}", source="t")
    with pytest.raises(ProxyError, match=rf"^cannot reach the proxy http://127\.0\.0\.1:{port}: "):
        await open_tunnel_stream("backend.example", 443, settings, timeout=CONNECT_TIMEOUT)


async def test_silent_proxy_times_out(autojump_clock: trio.testing.MockClock) -> None:
    proxy = ConnectProxy(silent=True)
    async with trio.open_nursery() as nursery:
        settings = parse_proxy_url(f"http://127.0.0.1:{await start_proxy(nursery, proxy)}", source="t")
        with pytest.raises(ProxyError, match=r"did not open a tunnel to backend\.example:443 within 30s$"):
            await open_tunnel_stream("backend.example", 443, settings, timeout=30.0)
        with pytest.raises(trio.TooSlowError):
            await connect_websocket(
                "wss://backend.example/",
                headers=[],
                ssl_context=None,
                proxy=settings,
                connect_timeout=30.0,
                max_message_size=MAX_MESSAGE,
                nursery=nursery,
            )
        nursery.cancel_scope.cancel()


# --- choosing a proxy (pure) --------------------------------------------------------------------------------


def test_config_proxy_wins_over_the_environment() -> None:
    settings = proxy_for(
        "wss://api.p0.app",
        config_proxy="http://config-proxy:3128",
        env={"HTTPS_PROXY": "http://env-proxy:8080", "NO_PROXY": "*"},
    )
    assert settings == ProxySettings("http://config-proxy:3128", "config-proxy", 3128, None)


@pytest.mark.parametrize(
    ("url", "env", "expected_host"),
    [
        ("wss://api.p0.app", {"HTTPS_PROXY": "http://upper:1"}, "upper"),
        ("wss://api.p0.app", {"https_proxy": "http://lower:1", "HTTPS_PROXY": "http://upper:1"}, "lower"),
        ("wss://api.p0.app", {"HTTP_PROXY": "http://plain:1"}, None),
        ("ws://api.p0.app", {"HTTP_PROXY": "http://plain:1", "HTTPS_PROXY": "http://tls:1"}, "plain"),
        ("ws://api.p0.app", {"http_proxy": "plain:1"}, "plain"),
        ("wss://api.p0.app", {"HTTPS_PROXY": "  "}, None),
        ("wss://api.p0.app", {}, None),
        ("wss://api.p0.app", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "p0.app"}, None),
        ("wss://api.p0.app", {"HTTPS_PROXY": "http://p:1", "no_proxy": "other", "NO_PROXY": "p0.app"}, "p"),
        ("wss://api.p0.app", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.p0.app:8443"}, "p"),
        ("wss://api.p0.app:8443/ws", {"HTTPS_PROXY": "http://p:1", "NO_PROXY": "api.p0.app:8443"}, None),
        ("wss://localhost:8079", {"HTTPS_PROXY": "http://p:1"}, None),
        ("ws://127.0.0.1:8079", {"HTTP_PROXY": "http://p:1"}, None),
        ("wss://[::1]:8079", {"HTTPS_PROXY": "http://p:1"}, None),
        ("wss://api.p0.app", {"HTTPS_PROXY": "https://broken-but-bypassed", "NO_PROXY": "*"}, None),
    ],
)
def test_proxy_from_the_environment(url: str, env: dict[str, str], expected_host: str | None) -> None:
    settings = proxy_for(url, config_proxy=None, env=env)
    assert (settings.host if settings else None) == expected_host


def test_credentials_become_a_basic_header_and_stay_hidden() -> None:
    settings = parse_proxy_url("http://d%C3%A9v%40corp:p%40ss:w0rd@Proxy.Corp:3128/", source="t")
    assert settings.url == "http://proxy.corp:3128"
    assert settings.host == "proxy.corp"
    assert settings.port == 3128
    assert settings.auth_header == "Basic " + base64.b64encode("dév@corp:p@ss:w0rd".encode()).decode()
    shown = repr(settings)
    assert shown == (
        "ProxySettings(url='http://proxy.corp:3128', host='proxy.corp', port=3128, auth_header='[REDACTED]')"
    )
    assert str(settings) == shown
    assert parse_proxy_url("proxy.corp", source="t") == ProxySettings("http://proxy.corp:80", "proxy.corp", 80, None)
    assert parse_proxy_url("http://[2001:db8::1]:3128", source="t").url == "http://[2001:db8::1]:3128"


@pytest.mark.parametrize(
    ("value", "message"),
    [
        (
            "https://user:hunter2@proxy:443",
            "is an https:// proxy, and TLS to the proxy itself is not supported",
        ),
        ("socks5://user:hunter2@proxy:1080", "only http:// proxies (HTTP CONNECT) are supported"),
        ("http://user:hunter2@proxy:99999", "is not a valid proxy URL"),
        ("http://user:hunter2@proxy:port", "is not a valid proxy URL"),
        ("http://user:hunter2@:3128", "has no usable host"),
        ("http://user:hunter2@pro xy:3128", "has no usable host"),
    ],
)
def test_unusable_proxy_urls_are_config_errors_without_the_password(value: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        proxy_for("wss://api.p0.app", config_proxy=value, env={})
    assert message in str(info.value)
    assert str(info.value).startswith("configuration key `proxy`: ")
    assert "hunter2" not in str(info.value)
    assert "[REDACTED]@" in str(info.value)


def test_environment_proxy_errors_name_the_variable() -> None:
    with pytest.raises(ConfigError, match=r"^environment variable https_proxy: 'https://p:1' is an https://"):
        proxy_for("wss://api.p0.app", config_proxy=None, env={"https_proxy": "https://p:1"})


@pytest.mark.parametrize("url", ["https://api.p0.app", "wss://", "api.p0.app", "wss://u:hunter2@h:99999"])
def test_bad_tunnel_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError, match="is not a valid ws:// or wss:// URL") as info:
        proxy_for(url, config_proxy=None, env={})
    assert "hunter2" not in str(info.value)


@pytest.mark.parametrize(
    ("host", "port", "no_proxy", "bypass"),
    [
        ("api.p0.app", 443, "*", True),
        ("api.p0.app", 443, "", False),
        ("api.p0.app", 443, "p0.app", True),
        ("api.p0.app", 443, ".p0.app", True),
        ("p0.app", 443, ".p0.app", True),
        ("api.p0.app", 443, "*.p0.app", True),
        ("notp0.app", 443, "p0.app", False),
        ("p0.app.evil.com", 443, "p0.app", False),
        ("api.p0.app", 443, "API.P0.APP", True),
        ("api.p0.app.", 443, "api.p0.app", True),
        ("api.p0.app", 443, "api.p0.app.", True),
        ("api.p0.app", 443, "other.com, p0.app", True),
        ("api.p0.app", 443, "other.com  p0.app", True),
        ("api.p0.app", 443, "other.com,,", False),
        ("api.p0.app", 443, "api.p0.app:443", True),
        ("api.p0.app", 443, "api.p0.app:8443", False),
        ("10.1.2.3", 443, "10.1.2.3", True),
        ("10.1.2.3", 443, "10.1.2.4", False),
        ("10.1.2.3", 443, "10.1.2", False),
        ("10.1.2.3", 443, "10.0.0.0/8", True),
        ("11.1.2.3", 443, "10.0.0.0/8", False),
        ("10.1.2.3", 443, "10.1.2.3:443", True),
        ("10.1.2.3", 443, "10.1.2.3:80", False),
        ("2001:db8::5", 443, "2001:db8::/32", True),
        ("2001:db8::5", 443, "2001:db8::5", True),
        ("2001:db8::5", 443, "[2001:db8::5]:443", True),
        ("2001:db8::5", 443, "[2001:db8::5]:80", False),
        ("[2001:db8::5]", 443, "2001:db8:0:0::5", True),
        ("10.1.2.3", 443, "::/0", False),
        ("api.p0.app", 443, "10.0.0.0/8", False),
        ("api.p0.app", 443, "not/a/cidr", False),
        ("api.p0.app", 443, ".", False),
    ],
)
def test_no_proxy_matching(host: str, port: int, no_proxy: str, bypass: bool) -> None:
    assert bypass_proxy(host, port, no_proxy) is bypass


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("http://proxy:3128", "http://proxy:3128"),
        ("http://user:pass@proxy:3128", "http://[REDACTED]@proxy:3128"),
        ("http://user:p@ss/w@rd@proxy:3128", "http://[REDACTED]@proxy:3128"),
        ("user:pass@proxy:3128", "[REDACTED]@proxy:3128"),
        ("wss://u:p@api.p0.app/ws", "wss://[REDACTED]@api.p0.app/ws"),
    ],
)
def test_hide_userinfo(url: str, shown: str) -> None:
    assert hide_userinfo(url) == shown


# --- one loopback rule for every caller ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "loopback"),
    [
        ("localhost", True),
        ("LocalHost", True),
        ("127.0.0.1", True),
        ("127.9.9.9", True),
        ("[::1]", True),
        # RFC 6761 names that only some resolvers keep on this host: not loopback for any caller (the token
        # must not travel in clear text to what DNS may answer for them; a proxy, if set, is simply used).
        ("api.localhost", False),
        ("localhost.", False),
        ("localhost.evil.example", False),
        ("10.0.0.1", False),
        ("[::2]", False),
    ],
)
def test_the_proxy_bypass_and_clear_text_rule_agree_on_loopback(host: str, loopback: bool) -> None:
    assert is_loopback_host(host) is loopback
    # The proxy bypass: an environment proxy is skipped exactly for loopback targets.
    settings = proxy_for(f"wss://{host}:8079", config_proxy=None, env={"HTTPS_PROXY": "http://p:1"})
    assert (settings is None) is loopback
    # The clear-text rule: plain ws:// (the token unencrypted) is allowed exactly to loopback targets.
    try:
        check_tunnel_url(f"ws://{host}:8079/x")
    except ValueProblem as exc:
        assert not loopback and "would send the agent's token in clear text" in str(exc)
    else:
        assert loopback
