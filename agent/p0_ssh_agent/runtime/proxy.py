"""The outbound WebSocket, directly or through an HTTP CONNECT proxy.

trio-websocket has no proxy support (python-trio/trio-websocket#169), and the Go agent honoured HTTPS_PROXY
through Go's http.ProxyFromEnvironment (upstream-protocol.md §3.1), so hosts that only reach the internet
through a proxy need this. Which proxy applies: the configuration's `proxy` key if set (an explicit choice,
used as is); otherwise HTTPS_PROXY/https_proxy for wss:// (HTTP_PROXY/http_proxy for ws://), skipped for
hosts matching NO_PROXY/no_proxy and, as Go does, for localhost and loopback addresses.

Only http:// proxies: TLS to the backend runs inside the tunnel, so the proxy never sees the token. Proxy
credentials (user:password in the URL) become a Basic Proxy-Authorization header; they never appear in a
repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import functools
import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import cast
from urllib.parse import unquote, urlsplit

import trio
import trio_websocket

from p0_ssh_agent._version import __version__
from p0_ssh_agent.errors import AgentError, ConfigError
from p0_ssh_agent.runtime.limits import MESSAGE_QUEUE_SIZE

# A CONNECT answer is a status line and a few headers; a proxy that sends more is broken or hostile.
MAX_RESPONSE_HEAD_BYTES = 16 * 1024

_STATUS_LINE = re.compile(r"HTTP/1\.[01] (\d{3})(?: (.*))?")
_HEAD_END = re.compile(rb"\r?\n\r?\n")
# A host as it may appear in a CONNECT authority: a DNS name or an IP literal, nothing that could end the
# request line or add a header.
_HOST_CHARS = re.compile(r"[A-Za-z0-9._:%-]+")


class ProxyError(AgentError):
    """The proxy could not be reached or would not open the tunnel. Messages never carry credentials."""


@dataclass(frozen=True)
class ProxySettings:
    """A proxy to CONNECT through. `url` has no credentials in it; `auth_header` is the full header value."""

    url: str
    host: str
    port: int
    auth_header: str | None

    def __repr__(self) -> str:
        auth = "'[REDACTED]'" if self.auth_header else "None"
        return f"ProxySettings(url={self.url!r}, host={self.host!r}, port={self.port}, auth_header={auth})"


@dataclass(frozen=True)
class _Endpoint:
    secure: bool
    host: str
    port: int
    resource: str

    @property
    def host_header(self) -> str:
        default = 443 if self.secure else 80
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == default else f"{host}:{self.port}"


def _parse_ws_url(url: str) -> _Endpoint:
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        parts, port = None, None
    if parts is None or parts.scheme.lower() not in ("ws", "wss") or not parts.hostname:
        raise ConfigError(f"tunnelHost {hide_userinfo(url)!r} is not a valid ws:// or wss:// URL")
    secure = parts.scheme.lower() == "wss"
    resource = parts.path or "/"
    if parts.query:
        resource = f"{resource}?{parts.query}"
    return _Endpoint(secure, parts.hostname, port or (443 if secure else 80), resource)


def proxy_for(target_url: str, *, config_proxy: str | None, env: Mapping[str, str]) -> ProxySettings | None:
    """The proxy to use for `target_url` (a ws:// or wss:// URL), or None to connect directly.

    Raises ConfigError for an unusable target or proxy URL (an https:// proxy, a bad port, ...).
    """
    target = _parse_ws_url(target_url)
    if config_proxy is not None and config_proxy.strip():
        return parse_proxy_url(config_proxy.strip(), source="configuration key `proxy`")

    for name in ("https_proxy", "HTTPS_PROXY") if target.secure else ("http_proxy", "HTTP_PROXY"):
        value = env.get(name, "").strip()
        if value:
            break
    else:
        return None
    no_proxy = env.get("no_proxy") or env.get("NO_PROXY") or ""
    if is_loopback(target.host) or bypass_proxy(target.host, target.port, no_proxy):
        return None
    return parse_proxy_url(value, source=f"environment variable {name}")


def parse_proxy_url(value: str, *, source: str) -> ProxySettings:
    """Parse `http://[user:password@]host[:port]` (the scheme may be left out, as curl and Go allow)."""
    shown = hide_userinfo(value)
    usage = "expected http://[user:password@]host:port"
    text = value if "://" in value else f"http://{value}"
    try:
        parts = urlsplit(text)
        port = parts.port or 80
    except ValueError:
        raise ConfigError(f"{source}: {shown!r} is not a valid proxy URL; {usage}") from None
    scheme = parts.scheme.lower()
    host = parts.hostname or ""
    if scheme == "https":
        raise ConfigError(
            f"{source}: {shown!r} is an https:// proxy, and TLS to the proxy itself is not supported: use "
            "http://host:port (the connection to the tunnel server is still TLS end to end inside the tunnel)"
        )
    if scheme != "http":
        raise ConfigError(f"{source}: {shown!r}: only http:// proxies (HTTP CONNECT) are supported")
    if not _HOST_CHARS.fullmatch(host):
        raise ConfigError(f"{source}: {shown!r} has no usable host; {usage}")
    auth = None
    if parts.username is not None:
        credentials = f"{unquote(parts.username)}:{unquote(parts.password or '')}".encode()
        auth = "Basic " + base64.b64encode(credentials).decode("ascii")
    return ProxySettings(url=f"http://{authority(host, port)}", host=host, port=port, auth_header=auth)


def bypass_proxy(host: str, port: int, no_proxy: str) -> bool:
    """True if NO_PROXY says to connect to host:port directly.

    Entries are separated by commas or spaces: "*" (everything), a domain ("example.com", ".example.com" and
    "*.example.com" all match example.com and its subdomains, as curl and Python do), an IP address, a CIDR
    block, each optionally with ":port" ("[v6]:port" for IPv6).
    """
    host = host.lower().rstrip(".").strip("[]")
    try:
        ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None = ipaddress.ip_address(host)
    except ValueError:
        ip = None
    for raw in re.split(r"[,\s]+", no_proxy):
        entry = raw.strip().lower()
        if entry == "*":
            return True
        if not entry:
            continue
        entry_host, entry_port = _split_entry(entry)
        if entry_port is not None and entry_port != port:
            continue
        if _entry_matches(entry_host, host, ip):
            return True
    return False


def is_loopback(host: str) -> bool:
    host = host.lower().rstrip(".").strip("[]")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _split_entry(entry: str) -> tuple[str, int | None]:
    if entry.startswith("["):
        inside, _, rest = entry[1:].partition("]")
        return inside, int(rest[1:]) if rest.startswith(":") and rest[1:].isdigit() else None
    if "/" not in entry and entry.count(":") == 1:
        name, _, port = entry.partition(":")
        return (name, int(port)) if port.isdigit() else (entry, None)
    return entry, None


def _entry_matches(entry: str, host: str, ip: ipaddress.IPv4Address | ipaddress.IPv6Address | None) -> bool:
    if "/" in entry:
        try:
            return ip is not None and ip in ipaddress.ip_network(entry, strict=False)
        except ValueError:
            return False
    try:
        return ip == ipaddress.ip_address(entry)
    except ValueError:
        pass
    domain = entry.removeprefix("*").lstrip(".").rstrip(".")
    return bool(domain) and (host == domain or host.endswith("." + domain))


def hide_userinfo(url: str) -> str:
    """The URL with any user:password@ hidden, for messages (up to the last "@": a password may hold one)."""
    return re.sub(r"^([A-Za-z][A-Za-z0-9+.-]*://)?.*@", r"\1[REDACTED]@", url, flags=re.DOTALL)


def authority(host: str, port: int) -> str:
    """host:port for a request line or Host header, IPv6 in brackets. Refuses anything that could break out
    of the request line (the host comes from configuration, but still)."""
    if not _HOST_CHARS.fullmatch(host) or not 0 < port < 65536:
        raise ConfigError(f"{host!r}:{port} cannot be used as a CONNECT target")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def open_tunnel_stream(
    target_host: str,
    target_port: int,
    proxy: ProxySettings,
    *,
    timeout: float,  # noqa: ASYNC109 (the agreed API; the error message names the timeout)
) -> trio.SocketStream:
    """TCP to the proxy, `CONNECT target_host:target_port`, and the raw stream once the proxy says 2xx.

    Raises ProxyError (unreachable proxy, 407, any other refusal, a malformed or oversized answer, no answer
    within `timeout` seconds).
    """
    target = authority(target_host, target_port)
    lines = [f"CONNECT {target} HTTP/1.1", f"Host: {target}", f"User-Agent: p0-ssh-agent/{__version__}"]
    if proxy.auth_header:
        lines.append(f"Proxy-Authorization: {proxy.auth_header}")
    request = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    try:
        with trio.fail_after(timeout):
            try:
                stream = await trio.open_tcp_stream(proxy.host, proxy.port)
            except OSError as exc:
                raise ProxyError(f"cannot reach the proxy {proxy.url}: {exc.strerror or exc}") from None
            try:
                await stream.send_all(request)
                head, extra = await _read_response_head(stream, proxy)
                _check_response(head, extra, proxy, target)
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
    except trio.TooSlowError:
        raise ProxyError(f"the proxy {proxy.url} did not open a tunnel to {target} within {timeout:g}s") from None
    except trio.BrokenResourceError:
        raise ProxyError(f"the proxy {proxy.url} dropped the connection during CONNECT {target}") from None
    return stream


async def _read_response_head(stream: trio.SocketStream, proxy: ProxySettings) -> tuple[bytes, bytes]:
    buffer = bytearray()
    while True:
        end = _HEAD_END.search(buffer)
        if end is not None and end.start() <= MAX_RESPONSE_HEAD_BYTES:
            return bytes(buffer[: end.start()]), bytes(buffer[end.end() :])
        if end is not None or len(buffer) > MAX_RESPONSE_HEAD_BYTES:
            raise ProxyError(f"the proxy {proxy.url} sent a CONNECT response head over {MAX_RESPONSE_HEAD_BYTES} bytes")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise ProxyError(f"the proxy {proxy.url} closed the connection without answering CONNECT")
        buffer += chunk


def _check_response(head: bytes, extra: bytes, proxy: ProxySettings, target: str) -> None:
    status_line, *header_lines = head.decode("latin-1").splitlines()
    match = _STATUS_LINE.fullmatch(status_line)
    if match is None:
        raise ProxyError(
            f"the proxy {proxy.url} answered CONNECT with something that is not HTTP: {_scrub(status_line, proxy)!r}"
        )
    code = int(match.group(1))
    if 200 <= code < 300:
        if extra:
            # Nothing may come before our own first bytes (the TLS ClientHello or the WebSocket request);
            # passing such bytes on would hand the proxy's words to the TLS or WebSocket layer.
            raise ProxyError(f"the proxy {proxy.url} sent data into the tunnel before it was used")
        return
    if code == 407:
        schemes = sorted(
            {
                value.strip().split(" ", 1)[0].lower()
                for name, _, value in (line.partition(":") for line in header_lines)
                if name.strip().lower() == "proxy-authenticate" and value.strip()
            }
        )
        if proxy.auth_header:
            message = f"the proxy {proxy.url} rejected the user name and password in the proxy URL (HTTP 407)"
        else:
            message = (
                f"the proxy {proxy.url} requires authentication (HTTP 407): put the credentials in the "
                "proxy URL as http://user:password@host:port"
            )
        if schemes and "basic" not in schemes:
            message += f"; it asks for {', '.join(schemes)}, and only the Basic scheme is supported"
        raise ProxyError(message)
    raise ProxyError(f"the proxy {proxy.url} refused CONNECT {target}: {_scrub(status_line, proxy)!r}")


def _scrub(text: str, proxy: ProxySettings) -> str:
    """A proxy's own words, made safe for a message: printable, short, and never echoing our credentials."""
    text = "".join(c if c.isprintable() else "?" for c in text)[:200]
    if proxy.auth_header:
        token = proxy.auth_header.split(" ", 1)[-1]
        text = text.replace(token, "[REDACTED]")
        try:
            decoded = base64.b64decode(token).decode("utf-8", "replace")
        except ValueError:  # binascii.Error: a header not made by parse_proxy_url
            decoded = ""
        for secret in {decoded, decoded.partition(":")[2]} - {""}:
            text = text.replace(secret, "[REDACTED]")
    return text


async def connect_websocket(
    url: str,
    *,
    headers: Sequence[tuple[bytes, bytes]] | Sequence[tuple[str, str]],
    ssl_context: ssl.SSLContext | None,
    proxy: ProxySettings | None,
    connect_timeout: float,
    max_message_size: int,
    nursery: trio.Nursery,
    stream_wrapper: Callable[[trio.abc.Stream], trio.abc.Stream] | None = None,
) -> trio_websocket.WebSocketConnection:
    """Open a WebSocket to `url` (through `proxy` when given) whose background task lives in `nursery`.

    TCP, CONNECT, TLS (with `ssl_context`, or the system defaults for wss://) and the handshake must all
    finish within `connect_timeout` (trio.TooSlowError otherwise). A refused handshake raises
    trio_websocket.ConnectionRejected (read .status_code) itself, not wrapped in an exception group, and
    leaves `nursery` running. `stream_wrapper`, when given, wraps the finished TCP/TLS stream before the
    WebSocket layer sees it (the tunnel uses it to notice every byte that arrives, pings included).
    """
    endpoint = _parse_ws_url(url)
    run = functools.partial(
        _run_client,
        endpoint=endpoint,
        extra_headers=[(_as_bytes(name), _as_bytes(value)) for name, value in headers],
        ssl_context=ssl_context,
        proxy=proxy,
        connect_timeout=connect_timeout,
        max_message_size=max_message_size,
        stream_wrapper=stream_wrapper,
    )
    with trio.fail_after(connect_timeout):
        # nursery.start: everything before task_status.started() runs under this call, so a failure (the
        # rejected handshake above all) is raised here and not into the caller's nursery as a group.
        return cast(trio_websocket.WebSocketConnection, await nursery.start(run))


def _as_bytes(text: bytes | str) -> bytes:
    return text.encode("latin-1") if isinstance(text, str) else text


async def _run_client(
    *,
    endpoint: _Endpoint,
    extra_headers: list[tuple[bytes, bytes]],
    ssl_context: ssl.SSLContext | None,
    proxy: ProxySettings | None,
    connect_timeout: float,
    max_message_size: int,
    stream_wrapper: Callable[[trio.abc.Stream], trio.abc.Stream] | None,
    task_status: trio.TaskStatus[trio_websocket.WebSocketConnection],
) -> None:
    opened = await _open_stream(endpoint, ssl_context, proxy, connect_timeout)
    stream: trio.abc.Stream = stream_wrapper(opened) if stream_wrapper is not None else opened
    connected = False
    try:
        # trio-websocket raises ConnectionRejected from its reader task, i.e. into the nursery it is given;
        # a private one lets us unwrap it below.
        async with trio.open_nursery() as inner:
            connection = await trio_websocket.wrap_client_stream(
                inner,
                cast(trio.SocketStream, stream),  # annotated narrowly upstream; any trio Stream works
                endpoint.host_header,
                endpoint.resource,
                extra_headers=extra_headers,
                message_queue_size=MESSAGE_QUEUE_SIZE,
                max_message_size=max_message_size,
            )
            connected = True
            task_status.started(connection)
    except BaseExceptionGroup as group:
        if not connected:
            await trio.aclose_forcefully(stream)
        if len(group.exceptions) == 1:
            raise group.exceptions[0] from None
        raise


async def _open_stream(
    endpoint: _Endpoint,
    ssl_context: ssl.SSLContext | None,
    proxy: ProxySettings | None,
    connect_timeout: float,
) -> trio.SocketStream | trio.SSLStream[trio.SocketStream]:
    if proxy is None:
        raw = await trio.open_tcp_stream(endpoint.host, endpoint.port)
    else:
        raw = await open_tunnel_stream(endpoint.host, endpoint.port, proxy, timeout=connect_timeout)
    if not endpoint.secure:
        return raw
    tls = trio.SSLStream(
        raw,
        ssl_context or ssl.create_default_context(),
        server_hostname=endpoint.host,
        # WebSocket has its own close handshake; servers that drop TCP without close_notify are common.
        https_compatible=True,
    )
    try:
        await tls.do_handshake()
    except BaseException:
        await trio.aclose_forcefully(raw)
        raise
    return tls
