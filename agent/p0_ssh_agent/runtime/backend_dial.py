"""How the agent reaches the backend: which route (directly, or through the HTTP CONNECT proxy that applies), the
TCP dial, TLS, and the WebSocket handshake on top.

Which proxy applies: the configuration's `proxy` key if set (an explicit choice, used as is); otherwise
HTTPS_PROXY/https_proxy for wss:// (HTTP_PROXY/http_proxy for ws://), skipped for hosts matching NO_PROXY/no_proxy
and, as Go does, for localhost and loopback addresses (config/values.py is_loopback_host: the one rule for
"stays on this host"). The CONNECT protocol itself is runtime/http_connect.py.

The route (proxy_for) is worked out before READY=1; trio-websocket is imported by the first dial, after it.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import trio

from p0_ssh_agent.config.values import is_loopback_host
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.runtime.http_connect import ProxySettings, hide_userinfo, open_tunnel_stream, parse_proxy_url
from p0_ssh_agent.runtime.limits import MESSAGE_QUEUE_SIZE
from p0_ssh_agent.runtime.tunnel_pins import check_peer_pin

if TYPE_CHECKING:
    import trio_websocket


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
    if is_loopback_host(target.host) or bypass_proxy(target.host, target.port, no_proxy):
        return None
    return parse_proxy_url(value, source=f"environment variable {name}")


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
    pins: Sequence[str] = (),
) -> trio_websocket.WebSocketConnection:
    """Open a WebSocket to `url` (through `proxy` when given) whose background task lives in `nursery`.

    TCP, CONNECT, TLS (with `ssl_context`, or the system defaults for wss://) and the handshake must all
    finish within `connect_timeout` (trio.TooSlowError otherwise). A refused handshake raises
    trio_websocket.ConnectionRejected (read .status_code) itself, not wrapped in an exception group, and
    leaves `nursery` running. `stream_wrapper`, when given, wraps the finished TCP/TLS stream before the
    WebSocket layer sees it (the tunnel uses it to notice every byte that arrives, pings included). `pins`
    (tunnelPins), when given, must hold the pin of the server's key (runtime/tunnel_pins.py): checked after the
    TLS handshake, before the WebSocket request (and its headers, the token) is written; PinMismatch otherwise.
    """
    endpoint = _parse_ws_url(url)
    if pins and not endpoint.secure:
        raise ConfigError(f"tunnelPins are set but {url!r} is not wss://: there is no certificate to pin")
    run = functools.partial(
        _run_client,
        endpoint=endpoint,
        extra_headers=[(_as_bytes(name), _as_bytes(value)) for name, value in headers],
        ssl_context=ssl_context,
        proxy=proxy,
        connect_timeout=connect_timeout,
        max_message_size=max_message_size,
        stream_wrapper=stream_wrapper,
        pins=tuple(pins),
    )
    with trio.fail_after(connect_timeout):
        # nursery.start: everything before task_status.started() runs under this call, so a failure (the
        # rejected handshake above all) is raised here and not into the caller's nursery as a group.
        return cast("trio_websocket.WebSocketConnection", await nursery.start(run))


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
    pins: tuple[str, ...],
    task_status: trio.TaskStatus[trio_websocket.WebSocketConnection],
) -> None:
    import trio_websocket  # imported by the first dial (module docstring)

    opened = await _open_stream(endpoint, ssl_context, proxy, connect_timeout, pins)
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
    pins: tuple[str, ...],
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
        if pins:
            # Before any byte of ours: the WebSocket request that follows carries the token.
            check_peer_pin(tls.getpeercert(binary_form=True), pins)
    except BaseException:
        await trio.aclose_forcefully(raw)
        raise
    return tls
