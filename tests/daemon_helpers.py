"""Real parts for the end-to-end daemon tests (tests/test_daemon.py): the agent as a subprocess with its output
captured, keys made by `p0-ssh-agent keygen`, a datagram NOTIFY_SOCKET, an HTTP CONNECT proxy, a small HTTP
client for the dev backend's proxy side, a throwaway TLS certificate, and one driver interface over the two
backends (the project's dev backend and tests/strict_backend.py) so the same test body runs against both.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import signal
import socket
import ssl
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Protocol

import trio
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from p0_ssh_agent.devbackend.server import CallFailed, DevBackend

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
ORG, HOST = "e2e-org", "host-7"
CLIENT_ID = f"{ORG}:{HOST}:ssh"
# Only PATH: no proxy variables, no NOTIFY_SOCKET or JOURNAL_STREAM from whatever runs the tests.
BASE_ENV = {"PATH": "/usr/bin:/bin", "P0_SSH_AGENT_JOURNAL_SOCKET": ""}  # no audit entries in the host journal
# Never in any daemon output: a JWT (base64url of '{"' starts every one), a bearer header.
ALWAYS_SECRET = ("eyJ", "Bearer ")


# --- the agent ---------------------------------------------------------------------------------------------


def start_agent(config: Path, log_path: Path, env: Mapping[str, str] = BASE_ENV) -> subprocess.Popen[bytes]:
    """`p0-ssh-agent start --config CONFIG` with stdout and stderr in log_path, in `env` (by default BASE_ENV: no
    audit entries in the host's journal, nothing inherited from whatever runs the tests)."""
    with log_path.open("w") as log:
        return subprocess.Popen([str(AGENT), "start", "--config", str(config)], stdout=log, stderr=log, env=env)


def keygen(key_dir: Path) -> dict[str, object]:
    """Keys the way an operator makes them; returns the public JWK."""
    subprocess.run(
        [str(AGENT), "keygen", "--key-path", str(key_dir)], env=BASE_ENV, check=True, capture_output=True, timeout=30
    )
    public: dict[str, object] = json.loads((key_dir / "jwk.public.json").read_text())
    return public


def private_scalar(key_dir: Path) -> str:
    scalar: str = json.loads((key_dir / "jwk.private.json").read_text())["d"]
    return scalar


def write_config(directory: Path, url: str, key_dir: Path, **extra: object) -> Path:
    """A dry-run configuration in `directory`; `extra` adds YAML keys (heartbeatIntervalSeconds=1, proxy=...)."""
    values: dict[str, object] = {
        "orgId": ORG,
        "hostId": HOST,
        "tunnelHost": url,
        "keyPath": str(key_dir),
        "stateDir": str(directory / "state"),
        # The live state and metrics go here, never to the machine's /run/p0-ssh-agent (other agents may run).
        "runtimeDir": str(directory / "run"),
        "dryRun": True,
        **extra,
    }
    config = directory / "config.yaml"
    # JSON is YAML: every value quoted exactly, whatever it holds.
    config.write_text("".join(f"{key}: {json.dumps(value)}\n" for key, value in values.items()))
    return config


@dataclass
class AgentProcess:
    """`p0-ssh-agent start` as systemd would run it; stdout and stderr both go to `log`."""

    popen: subprocess.Popen[bytes]
    log: Path

    @classmethod
    def start(
        cls, config: Path, log: Path, env: Mapping[str, str] | None = None, *, verbose: bool = False
    ) -> AgentProcess:
        argv = [str(AGENT), "start", "--config", str(config), *(["--verbose"] if verbose else [])]
        with log.open("wb") as out:
            popen = subprocess.Popen(
                argv, stdout=out, stderr=out, stdin=subprocess.DEVNULL, env={**BASE_ENV, **(env or {})}
            )
        return cls(popen, log)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    @property
    def running(self) -> bool:
        return self.popen.poll() is None

    def signal(self, signum: signal.Signals) -> None:
        self.popen.send_signal(signum)

    async def wait_exit(self, limit: float) -> int | None:
        """The exit code, or None if the process is still running after `limit` seconds."""
        with trio.move_on_after(limit):
            while (code := self.popen.poll()) is None:
                await trio.sleep(0.02)
            return code
        return None

    def kill(self) -> None:
        """Teardown: whatever state the test left it in, the process is gone afterwards."""
        if self.popen.poll() is None:
            self.popen.terminate()
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.popen.kill()
                self.popen.wait(timeout=15)

    def leaked(self, secrets: tuple[str, ...]) -> list[str]:
        """The secrets (shown by their first characters only) that appear in the captured output."""
        text = self.output()
        return [secret[:6] + "..." for secret in (*ALWAYS_SECRET, *secrets) if secret and secret in text]


# --- systemd's notify socket -------------------------------------------------------------------------------


class NotifyListener:
    """A datagram socket standing in for systemd's: a path, or "@name" in the abstract namespace."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind("\0" + address[1:] if address.startswith("@") else address)
        self.sock.setblocking(False)
        self.messages: list[str] = []

    def drain(self) -> list[str]:
        if self.sock.fileno() == -1:  # closed: what was read before is all there is
            return self.messages
        with contextlib.suppress(BlockingIOError):
            while True:
                self.messages.append(self.sock.recv(65536).decode())
        return self.messages

    async def keep_draining(self) -> None:
        """Like systemd: read every datagram as it comes (the kernel queue is short)."""
        while True:
            self.drain()
            await trio.sleep(0.02)

    def events(self) -> list[str]:
        """Each assignment, in order: "READY=1", "STATUS=connected to ...", "WATCHDOG=1", ..."""
        return [line for message in self.drain() for line in message.splitlines()]

    def close(self) -> None:
        self.drain()
        self.sock.close()


# --- the two backends behind one interface -----------------------------------------------------------------


class Backend(Protocol):
    """What the tests need from a tunnel server; StrictBackend has it natively, DevDriver adapts DevBackend."""

    @property
    def url(self) -> str: ...
    @property
    def connection_number(self) -> int: ...
    @property
    def set_client_id_times(self) -> list[float]: ...
    @property
    def close_codes(self) -> list[int | None]: ...
    @property
    def tokens(self) -> list[str]: ...
    @property
    def violations(self) -> list[str]: ...
    async def wait_connected(self, *, after: int = 0) -> None: ...
    async def call(self, forwarded: Mapping[str, object], *, timeout: float = 10.0) -> dict[str, object]: ...  # noqa: ASYNC109
    async def drop(self, code: int = 1011) -> None: ...


@dataclass
class DevDriver:
    """The project's dev backend seen through the Backend interface, with the raw frames it recorded."""

    dev: DevBackend
    client_id: str = CLIENT_ID
    violations: list[str] = field(default_factory=list)  # the dev backend enforces its rules by failing calls

    @property
    def url(self) -> str:
        return self.dev.rpc_url

    @property
    def connection_number(self) -> int:
        return sum(1 for status in self.dev.handshakes if status == 101)

    @property
    def set_client_id_times(self) -> list[float]:
        return [when for when, _ in self.dev.set_client_id_log]

    @property
    def close_codes(self) -> list[int | None]:
        return self.dev.close_codes

    @property
    def tokens(self) -> list[str]:
        return []  # the dev backend keeps none; the strict backend's tokens cover the exact-token check

    async def wait_connected(self, *, after: int = 0) -> None:
        while self.connection_number <= after or self.client_id not in self.dev.by_client:
            await trio.sleep(0.02)

    async def call(self, forwarded: Mapping[str, object], *, timeout: float = 10.0) -> dict[str, object]:  # noqa: ASYNC109
        try:
            result = await self.dev.call(self.client_id, forwarded, timeout_ms=int(timeout * 1000))
        except CallFailed as exc:
            raise AssertionError(f"dev backend call failed: HTTP {exc.status} {exc.body}") from None
        assert isinstance(result, dict), result
        return result

    async def drop(self, code: int = 1011) -> None:
        await self.dev.drop(self.client_id, code)

    def agent_frames(self) -> list[dict[str, object]]:
        """The JSON frames the agent sent on its live connections, in order (non-JSON ones skipped)."""
        frames: list[dict[str, object]] = []
        for _, raw in self.dev.frames_from(self.client_id):
            with contextlib.suppress(ValueError):
                value = json.loads(raw)
                if isinstance(value, dict):
                    frames.append(value)
        return frames


# --- HTTP: a client for the dev backend, a CONNECT proxy ---------------------------------------------------


async def http_post_json(host: str, port: int, path: str, body: object) -> tuple[int, object]:
    """One POST on a fresh connection (the dev backend closes each); returns the status and the JSON body."""
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
        f"Authorization: Bearer caller-secret-token\r\nContent-Length: {len(payload)}\r\nConnection: close\r\n\r\n"
    )
    stream = await trio.open_tcp_stream(host, port)
    async with stream:
        await stream.send_all(head.encode() + payload)
        received = bytearray()
        while chunk := await stream.receive_some(65536):
            received += chunk
    status_head, _, content = bytes(received).partition(b"\r\n\r\n")
    status = int(status_head.split(b" ", 2)[1])
    return status, json.loads(content) if content else None


@dataclass
class ConnectProxy:
    """An HTTP CONNECT proxy on 127.0.0.1 that requires `auth` (a full Proxy-Authorization value) when set and
    records each request head and every byte the client sent into the tunnel."""

    auth: str | None = None
    heads: list[str] = field(default_factory=list)
    tunnelled: bytearray = field(default_factory=bytearray)
    port: int = 0

    async def serve(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        async with trio.open_nursery() as nursery:
            listeners = await nursery.start(partial(trio.serve_tcp, self._handle, 0, host="127.0.0.1"))
            self.port = int(listeners[0].socket.getsockname()[1])
            task_status.started()

    async def _handle(self, client: trio.SocketStream) -> None:
        async with client:
            with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError, OSError):
                buffer = b""
                while b"\r\n\r\n" not in buffer:
                    if not (chunk := await client.receive_some(4096)):
                        return
                    buffer += chunk
                head, _, early = buffer.partition(b"\r\n\r\n")
                text = head.decode("latin-1")
                self.heads.append(text)
                request_line, *lines = text.split("\r\n")
                method, target, _ = request_line.split(" ")
                headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
                if method != "CONNECT" or early:
                    await client.send_all(b"HTTP/1.1 400 Bad Request\r\n\r\n")
                    return
                if self.auth is not None and headers.get("proxy-authorization") != self.auth:
                    await client.send_all(
                        b'HTTP/1.1 407 Proxy Authentication Required\r\nProxy-Authenticate: Basic realm="t"\r\n\r\n'
                    )
                    return
                host, _, port = target.rpartition(":")
                upstream = await trio.open_tcp_stream(host.strip("[]"), int(port))
                async with upstream:
                    await client.send_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                    async with trio.open_nursery() as nursery:
                        nursery.start_soon(_pump, client, upstream, self.tunnelled, nursery.cancel_scope)
                        nursery.start_soon(_pump, upstream, client, None, nursery.cancel_scope)


async def _pump(
    source: trio.SocketStream, sink: trio.SocketStream, record: bytearray | None, done: trio.CancelScope
) -> None:
    with contextlib.suppress(trio.BrokenResourceError, trio.ClosedResourceError):
        while data := await source.receive_some(65536):
            if record is not None:
                record += data
            await sink.send_all(data)
    done.cancel()  # either side closing ends the tunnel


# --- TLS -----------------------------------------------------------------------------------------------------


def self_signed_tls(directory: Path) -> tuple[ssl.SSLContext, Path]:
    """A server context for 127.0.0.1 and the PEM file that trusts it (for tunnelCaFile)."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p0 test backend")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = directory / "backend.pem", directory / "backend.key"
    cert_file.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    )
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert_file, key_file)
    return context, cert_file
