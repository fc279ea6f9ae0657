"""`p0-ssh-agent doctor`, network side: does the backend's side of a grant work from here?

One connection, opened the way the tunnel opens it (runtime/backend_dial.py chooses the proxy,
runtime/http_connect.py speaks CONNECT; runtime/tunnel.py's TLS context trusts tunnelCaFile instead of the system
store), walked one step at a time so each step is its own finding:

    proxy   TCP to the proxy and CONNECT to the tunnel host (skip: no proxy applies)
    tls     the handshake, verified as the agent verifies it (skip: ws:// to loopback, the dev backend)
    pin     the live key's pin (runtime/tunnel_pins.py) against tunnelPins (skip: none set, shown for setting them)
    clock   `HEAD /` on that connection, and the answer's Date header against this host's clock

When a step fails the later ones are skipped, naming it. No token is made, so none can leak; the only secret
sent is the proxy's own password, which ProxyError never repeats.
"""

from __future__ import annotations

import email.utils
import ssl
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import trio

from p0_ssh_agent._version import __version__
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.runtime.backend_dial import proxy_for
from p0_ssh_agent.runtime.http_connect import ProxyError, authority, open_tunnel_stream
from p0_ssh_agent.runtime.trust import ca_bundle, tls_context
from p0_ssh_agent.runtime.tunnel_pins import PinMismatch, check_peer_pin, peer_pin

NETWORK_CHECKS = ("proxy", "tls", "pin", "clock")
DEFAULT_TIMEOUT = 10.0
# Beyond a minute the agent's token times (iat backdated 30 s, exp +300 s) and the expiry-time= stamps it writes
# no longer mean what the backend thinks they mean, and backends reject the token (401); a few seconds already
# says time synchronisation is not running.
SKEW_FAIL_SECONDS = 60.0
SKEW_WARN_SECONDS = 5.0
MAX_HEAD_BYTES = 16 * 1024
CERT_WARN_DAYS = 14
# OpenSSL verify codes that the trust store cannot fix.
_EXPIRED = {9, 10}  # X509_V_ERR_CERT_NOT_YET_VALID, X509_V_ERR_CERT_HAS_EXPIRED
_HOSTNAME_MISMATCH = 62  # X509_V_ERR_HOSTNAME_MISMATCH
SYNC_FIX = "start time synchronisation: timedatectl set-ntp true (or chronyd / ntpd), then check `timedatectl`"


@dataclass(frozen=True)
class Target:
    secure: bool
    host: str
    port: int

    @property
    def host_header(self) -> str:
        return authority(self.host, self.port).removesuffix(":443" if self.secure else ":80")


def target_of(url: str) -> Target:
    """The tunnel URL's host and port (load_config has already refused anything but ws:// and wss://)."""
    parts = urlsplit(url)
    secure = parts.scheme.lower() == "wss"
    return Target(secure, parts.hostname or "", parts.port or (443 if secure else 80))


def skip_rest(found: list[Finding]) -> list[Finding]:
    """`found`, completed with a skip for each network check not reached, naming the step that stopped."""
    stopped = found[-1].name if found else "configuration"
    done = {f.name for f in found}
    return found + [
        Finding(n, "skip", f"not tried: the {stopped} step failed") for n in NETWORK_CHECKS if n not in done
    ]


def offline_findings() -> list[Finding]:
    return [Finding(name, "skip", "skipped (--offline)") for name in NETWORK_CHECKS]


# --- the clock -------------------------------------------------------------------------------------------------


def skew_finding(date_header: str | None, local: datetime) -> Finding:
    """How far this host's clock (`local`, when the answer was made) is from the backend's `Date` header."""
    if not date_header:
        return Finding(
            "clock", "skip", "the backend's answer has no Date header: skew not measured", f"check it: {SYNC_FIX}"
        )
    try:
        remote = email.utils.parsedate_to_datetime(date_header)
    except (TypeError, ValueError):
        return Finding("clock", "skip", f"unreadable Date header {date_header[:64]!r}: skew not measured", SYNC_FIX)
    if remote.tzinfo is None:  # "-0000": RFC 5322's "UTC, but no idea where"
        remote = remote.replace(tzinfo=UTC)
    skew = (remote - local).total_seconds()
    where = "behind" if skew > 0 else "ahead of"
    detail = f"this host's clock is {abs(skew):.0f}s {where} the backend's (Date: {date_header})"
    if abs(skew) > SKEW_FAIL_SECONDS:
        return Finding("clock", "fail", detail + ": its tokens are refused (401)", SYNC_FIX)
    if abs(skew) > SKEW_WARN_SECONDS:
        return Finding("clock", "warn", detail, SYNC_FIX)
    return Finding("clock", "ok", f"within {SKEW_WARN_SECONDS:g}s of the backend ({abs(skew):.0f}s)")


def header_value(head: str, name: str) -> str | None:
    """The first `name:` header in an HTTP response head (status line first), or None."""
    for line in head.split("\r\n")[1:]:
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() == name.lower():
            return value.strip()
    return None


async def _read_head(stream: trio.abc.Stream) -> str:
    data = b""
    while b"\r\n\r\n" not in data:
        if len(data) > MAX_HEAD_BYTES:
            raise ValueError(f"an HTTP response head over {MAX_HEAD_BYTES} bytes")
        chunk = await stream.receive_some(4096)
        if not chunk:
            break
        data += chunk
    return data.partition(b"\r\n\r\n")[0].decode("latin-1")


async def _clock(stream: trio.abc.Stream, target: Target, seconds: float, now: Callable[[], datetime]) -> Finding:
    request = (
        f"HEAD / HTTP/1.1\r\nHost: {target.host_header}\r\nUser-Agent: p0-ssh-agent/{__version__} doctor\r\n"
        "Connection: close\r\n\r\n"
    )
    try:
        with trio.fail_after(seconds):
            sent = now()
            await stream.send_all(request.encode("ascii"))
            head = await _read_head(stream)
            received = now()
    except trio.TooSlowError:
        return Finding("clock", "fail", f"no HTTP answer from {target.host_header} within {seconds:g}s", SYNC_FIX)
    except (trio.BrokenResourceError, ValueError) as exc:
        return Finding("clock", "fail", f"the backend's HTTP answer broke off: {exc}", SYNC_FIX)
    # The Date was stamped while we waited; the middle of the wait is the best guess of when.
    return skew_finding(header_value(head, "date"), sent + (received - sent) / 2)


# --- TLS -------------------------------------------------------------------------------------------------------


def _cert_fix(error: ssl.SSLCertVerificationError, ca_file: Path | None) -> str:
    if error.verify_code == _HOSTNAME_MISMATCH:
        return "tunnelHost must name a host the backend's certificate was issued for"
    if error.verify_code in _EXPIRED:
        return f"check this host's clock first ({SYNC_FIX}); if it is right, the backend's certificate is out of date"
    if ca_file is not None:
        return f"tunnelCaFile {ca_file} lacks the CA that signed the backend's certificate: point it at one that has it"
    return (
        "if the backend (or a TLS-inspecting proxy) uses a private CA, put it in a PEM file and set "
        "`tunnelCaFile: /etc/p0-ssh-agent/ca.pem`; otherwise update the system CA store (ca-certificates)"
    )


def _name_of(cert: dict[str, Any], field: str) -> str:
    """The commonName in getpeercert()'s ((("commonName", "x"),), ...) form."""
    for rdn in cert.get(field, ()):
        for key, value in rdn:
            if key == "commonName":
                return str(value)
    return "?"


async def _tls(
    raw: trio.abc.Stream, target: Target, ca_file: Path | None, seconds: float
) -> tuple[Finding, trio.abc.Stream]:
    system_store = ca_bundle(None) or "OpenSSL's default paths"
    trust = f"tunnelCaFile {ca_file}" if ca_file else f"the system trust store ({system_store})"
    try:
        context = tls_context(str(ca_file) if ca_file else None)
    except (OSError, ssl.SSLError) as exc:
        fix = "point tunnelCaFile at a readable PEM file holding the backend's CA"
        return Finding("tls", "fail", f"cannot load tunnelCaFile {ca_file}: {exc}", fix), raw
    tls = trio.SSLStream(raw, context, server_hostname=target.host, https_compatible=True)
    try:
        with trio.fail_after(seconds):
            await tls.do_handshake()
    except trio.TooSlowError:
        fix = "something between here and the backend swallows TLS: check firewalls and proxies"
        return Finding("tls", "fail", f"no TLS handshake with {target.host_header} within {seconds:g}s", fix), tls
    except trio.BrokenResourceError as exc:
        cause = exc.__cause__
        if isinstance(cause, ssl.SSLCertVerificationError):
            detail = f"{target.host_header}'s certificate is not trusted by {trust}: {cause.verify_message}"
            return Finding("tls", "fail", detail, _cert_fix(cause, ca_file)), tls
        detail = f"TLS handshake with {target.host_header} failed: {getattr(cause, 'reason', None) or cause or exc}"
        fix = "is tunnelHost's port really TLS (wss://)? A middlebox may also be cutting the connection"
        return Finding("tls", "fail", detail, fix), tls
    cert = tls.getpeercert() or {}
    expires = datetime.fromtimestamp(ssl.cert_time_to_seconds(cert["notAfter"]), UTC) if "notAfter" in cert else None
    detail = (
        f"{tls.version()} with {target.host_header}, verified by {trust}: certificate for {_name_of(cert, 'subject')}"
        f" from {_name_of(cert, 'issuer')}" + (f", valid until {expires:%Y-%m-%d}" if expires else "")
    )
    if expires is not None and (expires - datetime.now(UTC)).days < CERT_WARN_DAYS:
        return Finding("tls", "warn", detail + ": expires soon", "the backend's certificate needs renewing"), tls
    return Finding("tls", "ok", detail), tls


def _pin(der_certificate: bytes | None, pins: Sequence[str]) -> Finding:
    """The agent's own check (runtime/tunnel_pins.py) on doctor's connection; without pins, the live pin to set."""
    if not pins:
        seen = peer_pin(der_certificate)
        return Finding(
            "pin",
            "skip",
            f"tunnelPins not set (the CA check alone); the live certificate key is {seen}",
            "to pin the tunnel (docs/connection.md), list this pin and the next key's under tunnelPins, after "
            "confirming this one with P0 by another channel",
        )
    try:
        seen = check_peer_pin(der_certificate, pins)
    except PinMismatch as exc:
        return Finding(
            "pin",
            "fail",
            str(exc),
            "the agent will not connect. If the tunnel server's key changed on purpose, confirm this pin with P0 by "
            "another channel before adding it to tunnelPins; otherwise something is intercepting the connection",
        )
    return Finding("pin", "ok", f"the live certificate key {seen} is pin {list(pins).index(seen) + 1} of {len(pins)}")


# --- the walk --------------------------------------------------------------------------------------------------


def _os_reason(exc: OSError) -> str:
    """trio.open_tcp_stream's "all attempts ... failed" hides the reasons ("Connection refused") in its cause."""
    causes = exc.__cause__.exceptions if isinstance(exc.__cause__, BaseExceptionGroup) else ()
    reasons = sorted({c.strerror for c in causes if isinstance(c, OSError) and c.strerror})
    return exc.strerror or ", ".join(reasons) or str(exc)


def _proxy_fix(message: str, target: Target) -> str:
    # ProxyError carries no code; its messages (runtime/http_connect.py) are stable enough to pick the advice by.
    if "(HTTP 407)" in message:
        return "put working credentials in the proxy URL: http://user:password@host:port (Basic only)"
    if "cannot reach" in message:
        return "check the proxy's host and port (`proxy` in the config, or HTTPS_PROXY) and that this host may reach it"
    if "refused CONNECT" in message:
        return f"ask the proxy's administrators to allow CONNECT to {authority(target.host, target.port)}"
    return (
        "check the proxy (`proxy` in the config, or HTTPS_PROXY), or set NO_PROXY if the backend is reachable directly"
    )


async def probe_backend(
    url: str,
    *,
    config_proxy: str | None,
    env: Mapping[str, str],
    ca_file: Path | None,
    pins: Sequence[str] = (),
    timeout: float = DEFAULT_TIMEOUT,  # noqa: ASYNC109 (one deadline per step, not one for the whole walk)
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
) -> list[Finding]:
    """The proxy, tls, pin and clock findings for the tunnel URL `url`, in that order."""
    target = target_of(url)
    try:
        proxy = proxy_for(url, config_proxy=config_proxy, env=env)
    except ConfigError as exc:
        return skip_rest([Finding("proxy", "fail", str(exc), "fix the proxy URL: http://[user:password@]host:port")])
    found: list[Finding] = []
    stream: trio.abc.Stream | None = None
    try:
        if proxy is None:
            found.append(Finding("proxy", "skip", f"no proxy applies to {target.host}: the agent connects directly"))
            first = "tls" if target.secure else "clock"
            try:
                with trio.fail_after(timeout):
                    stream = await trio.open_tcp_stream(target.host, target.port)
            except trio.TooSlowError:
                detail = f"no TCP connection to {target.host_header} within {timeout:g}s"
                return skip_rest([*found, Finding(first, "fail", detail, "check DNS, routes and outbound firewalls")])
            except OSError as exc:
                detail = f"cannot connect to {target.host_header}: {_os_reason(exc)}"
                return skip_rest([*found, Finding(first, "fail", detail, "check DNS, routes and outbound firewalls")])
        else:
            try:
                stream = await open_tunnel_stream(target.host, target.port, proxy, timeout=timeout)
            except ProxyError as exc:
                return skip_rest([Finding("proxy", "fail", str(exc), _proxy_fix(str(exc), target))])
            found.append(Finding("proxy", "ok", f"{proxy.url} opened CONNECT {authority(target.host, target.port)}"))
        if target.secure:
            tls_found, stream = await _tls(stream, target, ca_file, timeout)
            if tls_found.level == "fail":
                return skip_rest([*found, tls_found])
            found.append(tls_found)
            der = stream.getpeercert(binary_form=True) if isinstance(stream, trio.SSLStream) else None
            found.append(_pin(der, pins))
            if found[-1].level == "fail":
                return skip_rest(found)
        else:
            found.append(Finding("tls", "skip", "clear text to loopback (dev backend)"))
            found.append(Finding("pin", "skip", "clear text: no certificate to pin"))
        found.append(await _clock(stream, target, timeout, now))
        return found
    finally:
        if stream is not None:
            await trio.aclose_forcefully(stream)
