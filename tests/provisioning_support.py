"""Helpers shared by the provisioning end-to-end tests: the real CLI, the real daemon, and file-tree fingerprints.

    write_config(directory, keys, **extra) -> Path     a config YAML for `command`, `revoke-all` and `start`
    AgentCli(config).command(...) -> Answer            `p0-ssh-agent command ...` as a subprocess, result parsed
    AgentCli(config).revoke_all(...)                   `p0-ssh-agent revoke-all ...`
    AgentCli(config).adopt(...)                        `p0-ssh-agent adopt ...`
    running_daemon(directory, keys, **extra)           dev backend + `p0-ssh-agent start`; yields a Daemon to post()
    tree_digest(*roots) / changed(before, after)       what changed under /etc, /home, a state directory
    shadow_entry(name), visudo_ok()                    account and sudo state, read the way sshd and sudo see it

Everything runs the installed entry point next to the test interpreter, so the tests exercise the same argv, config
loading and exit codes an operator gets.
"""

from __future__ import annotations

import contextlib
import hashlib
import http.client
import json
import os
import socket
import stat
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from sandbox.fixtures import CHILD_ENV

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
VISUDO = "/usr/sbin/visudo"
ORG, HOST = "e2e-org", "host-1"
CLIENT_ID = f"{ORG}:{HOST}:ssh"
DROPIN = Path("/etc/sudoers.d/p0-ssh-agent")
# shadow-utils keeps a copy of the previous file next to each account database on every write: that copy tracks
# "the last write", not the state, so state comparisons leave it (and the lock file useradd touches) out.
ACCOUNT_BACKUPS = frozenset({"/etc/passwd-", "/etc/shadow-", "/etc/group-", "/etc/gshadow-", "/etc/subuid-",
                             "/etc/subgid-", "/etc/.pwd.lock"})  # fmt: skip


def make_keys(directory: Path) -> Path:
    """`p0-ssh-agent keygen --key-path`: the agent's JWK pair (a config needs one, the daemon signs with it)."""
    keys = directory / "keys"
    subprocess.run([str(AGENT), "keygen", "--key-path", str(keys)], check=True, capture_output=True, env=CHILD_ENV)
    return keys


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def write_config(
    directory: Path,
    keys: Path,
    *,
    tunnel_port: int = 9,
    adopt_users: tuple[str, ...] = (),
    user_revoke_mode: str | None = None,
    name: str = "config.yaml",
    extra: Mapping[str, object] | None = None,
) -> Path:
    """A config whose state directory (ledger and locks) is <directory>/state; `extra` adds keys (JSON is YAML)."""
    lines = [
        f"orgId: {ORG}",
        f"hostId: {HOST}",
        f"tunnelHost: ws://127.0.0.1:{tunnel_port}",
        f"keyPath: {keys}",
        f"stateDir: {directory / 'state'}",
        f"runtimeDir: {directory / 'run'}",
        "heartbeatIntervalSeconds: 30",
    ]
    if adopt_users:
        lines.append("adoptUsers: [" + ", ".join(adopt_users) + "]")
    if user_revoke_mode is not None:
        lines.append(f"userRevokeMode: {user_revoke_mode}")
    lines += [f"{key}: {json.dumps(value)}" for key, value in (extra or {}).items()]
    path = directory / name
    path.write_text("\n".join(lines) + "\n")
    return path


@dataclass(frozen=True)
class Answer:
    """One `command` run: its exit code and the result object it printed (success, message, error, output)."""

    returncode: int
    result: dict[str, object]
    stdout: str
    stderr: str

    @property
    def success(self) -> bool:
        return self.result.get("success") is True

    @property
    def message(self) -> str:
        return str(self.result.get("message", ""))

    @property
    def error(self) -> str:
        return str(self.result.get("error", ""))

    @property
    def output(self) -> str:
        return str(self.result.get("output", ""))

    def __str__(self) -> str:
        return f"exit {self.returncode}\n{self.stdout}\n{self.stderr}"


@dataclass(frozen=True)
class AgentCli:
    config: Path

    def command(
        self,
        command: str,
        user: str | None = None,
        *,
        action: str = "grant",
        request_id: str | None = None,
        public_key: str | None = None,
        ca_public_key: str | None = None,
        sudo: bool = False,
        run_as: str | None = None,
        dry_run: bool = False,
    ) -> Answer:
        argv = [str(AGENT), "command", "--config", str(self.config), "--command", command, "--action", action]
        optional = {
            "--username": user,
            "--request-id": request_id,
            "--public-key": public_key,
            "--ca-public-key": ca_public_key,
            "--run-as-user": run_as,
        }
        for flag, value in optional.items():
            if value is not None:
                argv += [flag, value]
        argv += ["--sudo"] if sudo else []
        argv += ["--dry-run"] if dry_run else []
        done = subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=120, check=False)
        _head, marker, tail = done.stdout.partition("Execution Result:\n")
        assert marker, f"`command` printed no result:\n{done.stdout}\n{done.stderr}"
        result = json.loads(tail)
        # The exit code follows the result: scripts rely on it.
        assert (done.returncode == 0) == (result.get("success") is True), (done.returncode, result)
        return Answer(done.returncode, result, done.stdout, done.stderr)

    def revoke_all(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [str(AGENT), "revoke-all", "--config", str(self.config), *extra]
        return subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=120, check=False)

    def adopt(self, *extra: str) -> subprocess.CompletedProcess[str]:
        argv = [str(AGENT), "adopt", "--config", str(self.config), *extra]
        return subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=120, check=False)


# --- the daemon ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Daemon:
    """A running `p0-ssh-agent start` behind a dev backend; post() is the backend's HTTP call API."""

    http_port: int
    log: Path
    config: Path | None = None  # the agent's configuration (a test edits it, then sends SIGHUP)
    agent_pid: int = 0

    def post(self, data: object, *, timeout: float = 90) -> tuple[int, dict[str, object]]:
        connection = http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=timeout)
        try:
            body = json.dumps(data)
            connection.request("POST", f"/client/{CLIENT_ID}", body, {"content-type": "application/json"})
            response = connection.getresponse()
            return response.status, json.loads(response.read() or b"{}")
        finally:
            connection.close()


@contextlib.contextmanager
def running_daemon(
    directory: Path,
    keys: Path,
    *,
    adopt_users: tuple[str, ...] = (),
    agent_env: Mapping[str, str] | None = None,
    extra: Mapping[str, object] | None = None,
) -> Iterator[Daemon]:
    """Start the dev backend and the agent (not in dry-run), wait until a call goes through, stop both after.
    `agent_env` adds to the agent's environment only (fault injection: LD_PRELOAD); `extra` adds config keys."""
    rpc_port, http_port = free_port(), free_port()
    config_path = write_config(
        directory, keys, tunnel_port=rpc_port, adopt_users=adopt_users, name="daemon.yaml", extra=extra
    )
    log_path = directory / "daemon.log"
    processes: list[subprocess.Popen[bytes]] = []
    with log_path.open("wb") as log:
        try:
            processes.append(
                subprocess.Popen(
                    [
                        str(AGENT),
                        "dev-backend",
                        "--rpc-listen",
                        f"127.0.0.1:{rpc_port}",
                        "--http-listen",
                        f"127.0.0.1:{http_port}",
                        "--public-key",
                        str(keys / "jwk.public.json"),
                        "--call-timeout-ms",
                        "120000",
                    ],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env=CHILD_ENV,
                )
            )
            processes.append(
                subprocess.Popen(
                    [str(AGENT), "start", "--config", str(config_path)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**CHILD_ENV, **(agent_env or {})},
                )
            )
            daemon = Daemon(http_port, log_path, config_path, processes[-1].pid)
            _wait_until_connected(daemon, processes)
            yield daemon
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def _wait_until_connected(daemon: Daemon, processes: list[subprocess.Popen[bytes]]) -> None:
    """A readiness wait (not a timing assertion): the first listUsers that the agent answers."""
    deadline = time.monotonic() + 60
    while True:
        dead = [process.args for process in processes if process.poll() is not None]
        assert not dead, f"exited early: {dead}\n{daemon.log.read_text()[-3000:]}"
        with contextlib.suppress(OSError, ValueError):
            status, _ = daemon.post({"command": "listUsers"}, timeout=10)
            if status == 200:
                return
        assert time.monotonic() < deadline, "agent never connected:\n" + daemon.log.read_text()[-3000:]
        time.sleep(0.1)


# --- host state ---------------------------------------------------------------------------------------------


def tree_digest(*roots: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """path -> sha256 of (type, mode, owner, content or link target) for every entry under roots (not following
    symlinks), except the paths in `skip`. Timestamps are left out: a rewrite with the same bytes, modes and owners
    is no change."""
    digest: dict[str, str] = {}
    for root in roots:
        for directory, dirs, files in os.walk(root, followlinks=False):
            for name in dirs + files:
                path = Path(directory, name)
                if str(path) in skip:
                    continue
                info = path.lstat()
                h = hashlib.sha256(f"{info.st_mode}:{info.st_uid}:{info.st_gid}".encode())
                if stat.S_ISREG(info.st_mode):
                    h.update(path.read_bytes())
                elif stat.S_ISLNK(info.st_mode):
                    h.update(str(path.readlink()).encode())
                digest[str(path)] = h.hexdigest()
    return digest


def changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))


def host_state(*extra: Path, skip: frozenset[str] = frozenset()) -> dict[str, str]:
    """The fingerprint of everything a provisioning request could touch: /etc, /home and `extra` (state dirs)."""
    return tree_digest(Path("/etc"), Path("/home"), *extra, skip=skip)


def shadow_entry(name: str) -> list[str]:
    for line in Path("/etc/shadow").read_text().splitlines():
        fields = line.split(":")
        if fields[0] == name:
            return fields
    raise AssertionError(f"{name} is not in /etc/shadow")


def visudo_ok() -> bool:
    """`visudo -c`: the whole sudo configuration (sudoers and every include) parses."""
    done = subprocess.run([VISUDO, "-c"], capture_output=True, text=True, env=CHILD_ENV, timeout=60, check=False)
    return done.returncode == 0


def authorized_keys(name: str) -> Path:
    return Path("/home", name, ".ssh", "authorized_keys")
