"""sd_notify: real AF_UNIX datagram sockets (a path in tmp_path and an abstract "@name"), exact datagrams,
the watchdog interval, and a socket that disappears under a running agent."""

from __future__ import annotations

import logging
import os
import re
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from p0_ssh_agent.adapters.logging import configure_logging
from p0_ssh_agent.adapters.sdnotify import MAX_STATUS_CHARS, Notifier

# recv() must never hang the suite if a datagram is missing; this is a guard, not a timing assertion.
RECV_GUARD_SECONDS = 10.0


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def bind_path(path: Path) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(RECV_GUARD_SECONDS)
    return sock


def bind_abstract() -> tuple[socket.socket, str]:
    name = f"p0-ssh-agent-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(b"\x00" + name.encode())
    sock.settimeout(RECV_GUARD_SECONDS)
    return sock, f"@{name}"


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[socket.socket, str]]:
    path = tmp_path / "notify"
    sock = bind_path(path)
    yield sock, str(path)
    sock.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[socket.socket, str]]:
    sock, name = bind_abstract()
    yield sock, name
    sock.close()


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_every_message_arrives_exactly(
    kind: str, path_socket: tuple[socket.socket, str], abstract_socket: tuple[socket.socket, str]
) -> None:
    sock, address = path_socket if kind == "path" else abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled

    notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    notifier.ready("serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=serving"
    notifier.status("connected to wss://api.p0.app since 2026-01-01 00:00:00Z")
    assert sock.recv(4096) == b"STATUS=connected to wss://api.p0.app since 2026-01-01 00:00:00Z"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    notifier.stopping("stopping")
    assert sock.recv(4096) == b"STOPPING=1\nSTATUS=stopping"

    before = time.monotonic_ns() // 1000
    notifier.reloading()
    after = time.monotonic_ns() // 1000
    match = re.fullmatch(rb"RELOADING=1\nMONOTONIC_USEC=(\d+)", sock.recv(4096))
    assert match is not None
    assert before <= int(match.group(1)) <= after


def test_status_text_cannot_smuggle_other_assignments(path_socket: tuple[socket.socket, str]) -> None:
    sock, address = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    notifier.status("retrying in 3s: bad\nREADY=1\r\nWATCHDOG=1\x00")
    assert sock.recv(4096) == b"STATUS=retrying in 3s: bad READY=1 WATCHDOG=1"
    notifier.status("café ✓ " + "x" * 1000)
    sent = sock.recv(4096).decode("utf-8")
    assert sent.startswith("STATUS=café ✓ xxx")
    assert len(sent) == len("STATUS=") + MAX_STATUS_CHARS
    assert sent.endswith("…")


@pytest.mark.parametrize(
    ("env", "interval"),
    [
        ({"WATCHDOG_USEC": "30000000"}, 15.0),
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "not-a-pid"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "soon"}, None),
        ({}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], interval: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", **env})
    assert notifier.watchdog_interval == interval


def test_without_notify_socket_everything_is_a_silent_no_op(
    path_socket: tuple[socket.socket, str], tmp_path: Path
) -> None:
    sock, _address = path_socket
    log_path = tmp_path / "log"
    with log_path.open("w") as out:
        configure_logging(stream=out, env={})
        for env in ({}, {"NOTIFY_SOCKET": ""}, {"NOTIFY_SOCKET": "relative/path"}, {"NOTIFY_SOCKET": "@"}):
            notifier = Notifier({**env, "WATCHDOG_USEC": "30000000"})
            assert not notifier.enabled
            assert notifier.watchdog_interval is None
            notifier.ready("x")
            notifier.status("x")
            notifier.watchdog()
            notifier.stopping()
            notifier.reloading()
    sock.setblocking(False)
    with pytest.raises(BlockingIOError):
        sock.recv(4096)
    assert log_path.read_text() == ""


def test_default_environment_is_the_process_environment(
    path_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, address = path_socket
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    Notifier().watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"


def test_socket_gone_is_logged_once_and_recovery_is_noticed(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    sock = bind_path(path)
    log_path = tmp_path / "log"
    with log_path.open("w") as out:
        configure_logging(stream=out, env={})
        notifier = Notifier({"NOTIFY_SOCKET": str(path)})
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"

        sock.close()
        path.unlink()
        for _ in range(3):
            notifier.watchdog()  # must not raise
        notifier.status("still running")

        sock = bind_path(path)  # systemd is back
        notifier.watchdog()
        assert sock.recv(4096) == b"WATCHDOG=1"

        sock.close()  # closed but still on disk: ECONNREFUSED this time
        notifier.watchdog()
        notifier.watchdog()
    events = [line.split(" ")[2] for line in log_path.read_text().splitlines()]
    assert events == ["sd_notify_failed", "sd_notify_recovered", "sd_notify_failed"]
    first = log_path.read_text().splitlines()[0]
    assert " warning sd_notify_failed " in first
    assert f"socket={path}" in first
    assert "error=" in first


def test_abstract_socket_gone_does_not_raise(tmp_path: Path) -> None:
    sock, name = bind_abstract()
    sock.close()
    log_path = tmp_path / "log"
    with log_path.open("w") as out:
        configure_logging(stream=out, env={})
        notifier = Notifier({"NOTIFY_SOCKET": name})
        notifier.ready("serving")
        notifier.watchdog()
    [line] = log_path.read_text().splitlines()
    assert f"socket={name}" in line
