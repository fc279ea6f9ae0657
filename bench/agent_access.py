"""Agent access (issue 17) next to the peers' path: a 1 MiB read and `ssh_exec true` through the real daemon, and
the same two things done with a bare `ssh` to the sandbox's sshd on loopback.

Inside the namespace sandbox only (it creates an account). The daemon runs with agentAccess on, its confinement in
namespace mode (the sandbox has no systemd, so no transient units: docs/ai-agents.md says what systemd mode adds),
a trust file and UCANs minted from local keys (agent_access/minting.py), and a policy that permits the account's
reads and exec under its prefix. Each operation is timed from the dev backend's call to its answer; minting the UCAN
and the exec's cosignature is the caller's work and happens before the clock starts.

    agent 1 MiB read   two ssh_file_read calls of 512 KiB (the per-call cap), one after the other
    agent exec true    one ssh_exec ["/bin/true"] with a fresh cosignature
    ssh 1 MiB read     `ssh -i KEY user@127.0.0.1 cat FILE` (a new connection each time, as the peers' tools do)
    ssh true           `ssh ... true`
"""

from __future__ import annotations

import base64
import hashlib
import os
import secrets
import shutil
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import trio
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from bench.daemon import CLIENT_ID, agent_and_backend, forwarded
from bench.stats import Measurement
from p0_ssh_agent.agent_access.access_model import MAX_READ_BYTES, Grant
from p0_ssh_agent.agent_access.jws_compact import PrivateKey
from p0_ssh_agent.agent_access.minting import (
    did_key_ed25519,
    generate_key,
    mint_cosignature,
    mint_ucan,
    trust_file_json,
)
from p0_ssh_agent.agent_access.operations import parse_operation
from p0_ssh_agent.devbackend.server import DevBackend

# The sandbox's sshd and key helpers are the test suite's (tests/sandbox/fixtures.py): one sshd configuration.
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from sandbox.fixtures import make_keypair, start_sshd

HOST = "bench-access.example.com"
AUDIENCE = f"did:web:{HOST}"
FILE_BYTES = 1024 * 1024
SSH = "/usr/bin/ssh"
USERADD, USERDEL = "/usr/sbin/useradd", "/usr/sbin/userdel"


@dataclass(frozen=True)
class AccessSizes:
    rounds: int


QUICK = AccessSizes(rounds=5)
FULL = AccessSizes(rounds=40)


@dataclass
class AccessHost:
    user: str
    prefix: Path
    file: Path
    digest: str
    issuer_key: Ed25519PrivateKey
    issuer: str
    approver_key: PrivateKey
    ssh_key: Path


def policy_text(user: str, prefix: Path) -> str:
    return (
        '@id("bench-read-and-exec")\n'
        'permit (principal, action in [Action::"/ssh/file/read", Action::"/ssh/exec"], resource)\n'
        f'when {{ resource.username == "{user}" && resource.ancestors.contains("{prefix}") }};\n'
    )


def set_up(workdir: Path) -> tuple[AccessHost, dict[str, object]]:
    tag = uuid.uuid4().hex[:8]
    user = f"bench-ai-{tag}"
    # '*', not useradd's locked '!': the test sshd runs without PAM, where a locked account cannot log in.
    subprocess.run(
        [USERADD, "--create-home", "--shell", "/bin/sh", "--password", "*", user], check=True, capture_output=True
    )
    root = Path("/var/lib") / f"p0-bench-access-{tag}"  # the sandbox's overlay: gone with the sandbox
    prefix = root / "app"
    prefix.mkdir(parents=True)
    root.chmod(0o755)
    shutil.chown(prefix, user, user)
    content = secrets.token_bytes(FILE_BYTES)
    file = prefix / "blob.bin"
    file.write_bytes(content)
    shutil.chown(file, user, user)
    issuer_key, approver_key = Ed25519PrivateKey.generate(), generate_key("ES256")
    issuer = did_key_ed25519(issuer_key.public_key())
    policy, trust = workdir / "agent-access.cedar", workdir / "agent-access-keys.json"
    policy.write_text(policy_text(user, prefix))
    trust.write_text(trust_file_json([(issuer, "EdDSA", issuer_key)], [("bench-approver", "ES256", approver_key)]))
    # The user's own key for the bare ssh: an authorized_keys file the way an operator would write one.
    ssh_key, public_line = make_keypair(workdir, "user_ed25519")
    home = Path(f"/home/{user}")
    (home / ".ssh").mkdir(mode=0o700)
    (home / ".ssh" / "authorized_keys").write_text(public_line + "\n")
    for path in (home / ".ssh", home / ".ssh" / "authorized_keys"):
        shutil.chown(path, user, user)
    extra: dict[str, object] = {
        "hostname": HOST,
        "dryRun": False,
        "agentAccess": True,
        "agentAccessUsers": [user],
        "agentAccessPolicyFile": str(policy),
        "agentAccessKeysFile": str(trust),
        "agentAccessConfinement": "namespace",
    }
    digest = hashlib.sha256(content).hexdigest()
    host = AccessHost(user, prefix, file, digest, issuer_key, issuer, approver_key, ssh_key)
    return host, extra


def tear_down(host: AccessHost) -> None:
    subprocess.run([USERDEL, "--remove", host.user], check=False, capture_output=True)
    shutil.rmtree(host.prefix.parent, ignore_errors=True)


def ucan(host: AccessHost) -> str:
    grants = [Grant(ability, HOST, host.user, str(host.prefix)) for ability in ("ssh/file/read", "ssh/exec")]
    return mint_ucan(
        host.issuer_key, algorithm="EdDSA", issuer=host.issuer, audience=AUDIENCE, grants=grants, now=int(time.time())
    )


def exec_body(host: AccessHost, token: str) -> dict[str, object]:
    body: dict[str, object] = {
        "command": "ssh_exec",
        "requestId": f"bench-exec-{uuid.uuid4().hex}",
        "username": host.user,
        "argv": ["/bin/true"],
        "cwd": str(host.prefix),
        "ucan": token,
    }
    operation = parse_operation("ssh_exec", body)
    body["cosignature"] = mint_cosignature(
        host.approver_key,
        algorithm="ES256",
        key_id="bench-approver",
        op=operation,
        audience=AUDIENCE,
        ucan_token=token,
        now=int(time.time()),
    )
    return body


def _result(answer: object) -> dict[str, object]:
    if not isinstance(answer, dict) or not isinstance(answer.get("data"), dict):
        raise TypeError(f"not a ForwardedResponse: {answer!r:.300}")
    data = answer["data"]
    result = data.get("result")
    if not data.get("success") or not isinstance(result, dict):
        raise RuntimeError(f"agent access failed: {data.get('error')!r:.300}")
    return result


def _ssh(host: AccessHost, port: int, *remote: str) -> bytes:
    argv = [
        SSH, "-p", str(port), "-i", str(host.ssh_key), "-F", "/dev/null",
        "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null", "-o", "BatchMode=yes",
        "-o", "IdentitiesOnly=yes", "-o", "LogLevel=ERROR", f"{host.user}@127.0.0.1", *remote,
    ]  # fmt: skip
    return subprocess.run(argv, check=True, capture_output=True, timeout=60).stdout


async def agent_rounds(backend: DevBackend, host: AccessHost, rounds: int) -> tuple[list[float], list[float]]:
    """(1 MiB read seconds, exec seconds), one of each per round, after a first round that warms caches."""
    token = ucan(host)
    reads, execs = [], []
    for round_number in range(rounds + 1):
        started = time.perf_counter()
        chunks = []
        for offset in (0, MAX_READ_BYTES):
            body = {
                "command": "ssh_file_read",
                "requestId": f"bench-read-{uuid.uuid4().hex}",
                "username": host.user,
                "path": str(host.file),
                "offset": offset,
                "length": MAX_READ_BYTES,
                "ucan": token,
            }
            chunks.append(_result(await backend.call(CLIENT_ID, forwarded(body)))["data"])
        read_seconds = time.perf_counter() - started
        if hashlib.sha256(b"".join(base64.b64decode(str(c)) for c in chunks)).hexdigest() != host.digest:
            raise RuntimeError("the agent's 1 MiB read came back different")
        body = exec_body(host, token)  # minted before the clock starts: the caller's work
        started = time.perf_counter()
        answer = _result(await backend.call(CLIENT_ID, forwarded(body)))
        exec_seconds = time.perf_counter() - started
        if answer.get("exitCode") != 0:
            raise RuntimeError(f"ssh_exec true answered {answer!r:.300}")
        if round_number:
            reads.append(read_seconds)
            execs.append(exec_seconds)
    return reads, execs


def ssh_rounds(host: AccessHost, port: int, rounds: int) -> tuple[list[float], list[float]]:
    """(cat of the 1 MiB file seconds, `true` seconds), one of each per round, after a warming round."""
    reads, trues = [], []
    for round_number in range(rounds + 1):
        started = time.perf_counter()
        data = _ssh(host, port, "cat", str(host.file))
        read_seconds = time.perf_counter() - started
        if hashlib.sha256(data).hexdigest() != host.digest:
            raise RuntimeError("ssh cat came back different")
        started = time.perf_counter()
        _ssh(host, port, "true")
        if round_number:
            reads.append(read_seconds)
            trues.append(time.perf_counter() - started)
    return reads, trues


async def measure_access(workdir: Path, sizes: AccessSizes = QUICK) -> Measurement:
    result = Measurement("access")
    host, extra = await trio.to_thread.run_sync(set_up, workdir)
    (workdir / "agent").mkdir()
    sshd = await trio.to_thread.run_sync(start_sshd, workdir / "sshd")
    try:
        async with agent_and_backend(workdir / "agent", extra_config=extra) as (backend, _agent):
            reads, execs = await agent_rounds(backend, host, sizes.rounds)
        result.new_series("agent/read", "agent: 1 MiB read (2 x ssh_file_read)").add_sequential(reads)
        result.new_series("agent/exec", "agent: ssh_exec true").add_sequential(execs)
        reads, trues = await trio.to_thread.run_sync(ssh_rounds, host, sshd.port, sizes.rounds)
        result.new_series("ssh/read", "bare ssh: cat of the 1 MiB file").add_sequential(reads)
        result.new_series("ssh/true", "bare ssh: true").add_sequential(trues)
    finally:
        sshd.process.terminate()
        await trio.to_thread.run_sync(sshd.process.wait)
        await trio.to_thread.run_sync(tear_down, host)
    for key, other in (("agent/read", "ssh/read"), ("agent/exec", "ssh/true")):
        result.figures[f"{key} ratio"] = result.series[key].p50.median / result.series[other].p50.median
    result.notes.append(
        f"{os.cpu_count()} CPUs; the agent's worker runs in namespace mode (no systemd in the sandbox); each agent "
        "operation starts one confined worker process, each ssh one connection (key exchange and login)"
    )
    return result
