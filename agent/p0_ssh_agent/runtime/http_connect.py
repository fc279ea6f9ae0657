"""The HTTP CONNECT proxy protocol: a proxy URL parsed into settings, and a tunnel opened through the proxy.

trio-websocket has no proxy support (python-trio/trio-websocket#169), and the Go agent honoured HTTPS_PROXY
through Go's http.ProxyFromEnvironment (upstream-protocol.md §3.1), so hosts that only reach the internet
through a proxy need this. Which proxy applies, and the dial that uses the tunnel, are runtime/backend_dial.py.

Only http:// proxies: TLS to the backend runs inside the tunnel, so the proxy never sees the token. Proxy
credentials (user:password in the URL) become a Basic Proxy-Authorization header; they never appear in a
repr, a log line or an error message.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

import trio

from p0_ssh_agent._version import __version__
from p0_ssh_agent.errors import AgentError, ConfigError

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
