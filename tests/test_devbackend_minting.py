"""The dev backend's agent-access minting (issue 17 item 9): the keys directory (made once with private modes,
reused, unsafe files refused), POST /mint/ucan and /mint/cosign over its real HTTP side, whose tokens the agent's
own checks accept (capability.verify_ucan, cosign.check_cosignature, against the trust file written next to the
keys), their refusals, and `dev-backend call`'s client delivering a minted request to a hand-played agent.
"""

from __future__ import annotations

import json
import stat
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from p0_ssh_agent.agent_access.access_model import AccessCommand
from p0_ssh_agent.agent_access.capability import CapabilityRejected, covering_grant, verify_ucan
from p0_ssh_agent.agent_access.cosign import CosignRejected, check_cosignature
from p0_ssh_agent.agent_access.operations import parse_operation
from p0_ssh_agent.agent_access.trust_keys import load_trust_keys
from p0_ssh_agent.devbackend.access_client import http_post, send_access_request
from p0_ssh_agent.devbackend.access_keys import (
    APPROVER_FILE,
    APPROVER_ID,
    ISSUER_FILE,
    TRUST_FILE,
    AccessKeysError,
    open_access_keys,
)
from p0_ssh_agent.devbackend.http import HttpRequest
from p0_ssh_agent.devbackend.mint_routes import MintRoutes
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.identity.signing_key import generate_keys
from p0_ssh_agent.identity.token import make_token
from test_devbackend import FakeAgent, agent_socket, bearer, set_client_id

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
CLIENT_ID = "acme:ops-01:ssh"
HOST = "ops-01.example.com"
AUDIENCE = f"did:web:{HOST}"
GUARD_SECONDS = 20.0  # only keeps a broken build from hanging; never asserted on
READ = {"command": "ssh_file_read", "requestId": "req-1", "username": "deploy", "path": "/var/www/app/index.html"}


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


# --- the keys directory ----------------------------------------------------------------------------------------


def test_the_keys_are_made_once_private_and_reused(tmp_path: Path) -> None:
    directory = tmp_path / "access-keys"
    first = open_access_keys(directory)
    assert mode(directory) == 0o700
    assert mode(directory / ISSUER_FILE) == 0o600 and mode(directory / APPROVER_FILE) == 0o600
    assert mode(directory / TRUST_FILE) == 0o644
    # no temporary file left behind
    assert sorted(p.name for p in directory.iterdir()) == sorted([TRUST_FILE, APPROVER_FILE, ISSUER_FILE])
    pem = (directory / ISSUER_FILE).read_bytes()
    second = open_access_keys(directory)
    assert second.issuer == first.issuer and second.issuer.startswith("did:key:z6Mk")
    assert (directory / ISSUER_FILE).read_bytes() == pem  # reused, not replaced
    trust = load_trust_keys(directory / TRUST_FILE)  # the agent's own loader accepts the trust file
    assert list(trust.issuers) == [first.issuer] and list(trust.approvers) == [APPROVER_ID]
    text = (directory / TRUST_FILE).read_text()
    assert '"d"' not in text and "PRIVATE" not in text  # public keys only
    assert first.issuer in repr(first) and "PRIVATE" not in repr(first)


def test_a_key_others_may_read_is_refused(tmp_path: Path) -> None:
    open_access_keys(tmp_path / "k")
    (tmp_path / "k" / APPROVER_FILE).chmod(0o640)
    with pytest.raises(AccessKeysError, match=f"chmod 600 {tmp_path / 'k' / APPROVER_FILE}"):
        open_access_keys(tmp_path / "k")


def test_a_symlinked_key_a_foreign_key_and_an_open_directory_are_refused(tmp_path: Path) -> None:
    keys = open_access_keys(tmp_path / "k")
    issuer = tmp_path / "k" / ISSUER_FILE
    issuer.rename(tmp_path / "elsewhere.pem")
    issuer.symlink_to(tmp_path / "elsewhere.pem")
    with pytest.raises(AccessKeysError, match="symlink is refused"):
        open_access_keys(tmp_path / "k")
    issuer.unlink()
    (tmp_path / "k" / APPROVER_FILE).replace(issuer)  # an ES256 key where the EdDSA one belongs
    with pytest.raises(AccessKeysError, match="not an EdDSA key"):
        open_access_keys(tmp_path / "k")
    issuer.write_text("not a key\n")
    issuer.chmod(0o600)
    with pytest.raises(AccessKeysError, match="not an unencrypted PEM private key"):
        open_access_keys(tmp_path / "k")
    (tmp_path / "k").chmod(0o777)
    with pytest.raises(AccessKeysError, match="writable by group or others"):
        open_access_keys(tmp_path / "k")
    assert keys.issuer.startswith("did:key:")


# --- the endpoints ---------------------------------------------------------------------------------------------


@asynccontextmanager
async def minting_backend(tmp_path: Path) -> AsyncIterator[DevBackend]:
    backend = DevBackend(mint=MintRoutes(open_access_keys(tmp_path / "access-keys")))
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            yield backend
            nursery.cancel_scope.cancel()


async def mint_ucan(backend: DevBackend, **members: object) -> tuple[int, dict[str, object]]:
    body = {"username": "deploy", "host": HOST, "path_prefix": "/var/www/app", "abilities": ["ssh/file/read"]}
    answer = await http_post(backend.http_url, "/mint/ucan", {**body, **members})
    assert isinstance(answer.body, dict)
    return answer.status, answer.body


async def test_a_minted_ucan_verifies_with_the_agents_own_check(tmp_path: Path) -> None:
    async with minting_backend(tmp_path) as backend:
        status, body = await mint_ucan(backend, abilities=["ssh/file/read", "ssh/dir/list"], lifetime=300)
    assert status == 200 and set(body) == {"ucan", "issuer", "audience", "expires"}
    trust = load_trust_keys(tmp_path / "access-keys" / TRUST_FILE)
    now = int(time.time())
    capability = verify_ucan(str(body["ucan"]), trust, audience=AUDIENCE, now=now)
    assert capability.issuer == body["issuer"] and capability.expires == body["expires"]
    assert abs(capability.expires - now - 300) <= 2
    assert {(g.ability, g.host, g.username, g.path_prefix) for g in capability.grants} == {
        ("ssh/file/read", HOST, "deploy", "/var/www/app"),
        ("ssh/dir/list", HOST, "deploy", "/var/www/app"),
    }
    paths = ("/var/www/app/index.html",)
    assert covering_grant(capability, AccessCommand.FILE_READ, host=HOST, username="deploy", paths=paths)
    assert not covering_grant(capability, AccessCommand.FILE_WRITE, host=HOST, username="deploy", paths=paths)
    with pytest.raises(CapabilityRejected):  # another host's agent refuses it: the audience is this one's
        verify_ucan(str(body["ucan"]), trust, audience="did:web:other.example.com", now=now)
    with pytest.raises(CapabilityRejected):  # and it expires
        verify_ucan(str(body["ucan"]), trust, audience=AUDIENCE, now=now + 300 + 120)


async def test_a_minted_cosignature_steps_up_that_request_and_no_other(tmp_path: Path) -> None:
    exec_body = {"command": "ssh_exec", "requestId": "req-9", "username": "deploy", "argv": ["/usr/bin/true"]}
    async with minting_backend(tmp_path) as backend:
        _, minted = await mint_ucan(backend, abilities=["ssh/exec"])
        ucan = str(minted["ucan"])
        answer = await http_post(
            backend.http_url, "/mint/cosign", {"request": exec_body, "ucan": ucan, "audience": AUDIENCE}
        )
    assert answer.status == 200 and isinstance(answer.body, dict), answer
    assert answer.body["approver"] == APPROVER_ID
    trust = load_trust_keys(tmp_path / "access-keys" / TRUST_FILE)
    now = int(time.time())
    capability = verify_ucan(ucan, trust, audience=AUDIENCE, now=now)
    signed = {**exec_body, "ucan": ucan, "cosignature": answer.body["cosignature"]}
    operation = parse_operation("ssh_exec", signed)
    check = check_cosignature(operation, keys=trust, audience=AUDIENCE, capability=capability, now=now)
    assert check.approver == APPROVER_ID
    other_line = replace(operation, argv=("/usr/bin/rm", "-rf", "/var/www/app"))
    with pytest.raises(CosignRejected, match="digest"):
        check_cosignature(other_line, keys=trust, audience=AUDIENCE, capability=capability, now=now)
    other_request = replace(operation, request_id="req-10")
    with pytest.raises(CosignRejected, match="requestId"):
        check_cosignature(other_request, keys=trust, audience=AUDIENCE, capability=capability, now=now)


@pytest.mark.parametrize(
    ("path", "body", "status", "fragment"),
    [
        ("/mint/ucan", {"abilities": ["ssh/file/raed"]}, 400, "unknown ssh/file/raed"),
        ("/mint/ucan", {"abilities": []}, 400, "non-empty list"),
        ("/mint/ucan", {"lifetime": 86401}, 400, "1..86400"),
        ("/mint/ucan", {"lifetime": True}, 400, "whole number"),
        ("/mint/ucan", {"path_prefix": 7}, 400, "path_prefix"),
        ("/mint/ucan", {"cosigner": True}, 400, "unknown member(s) cosigner"),
        ("/mint/cosign", {"request": {"command": "ssh_exec", "requestId": "r"}}, 400, "missing"),
        ("/mint/cosign", {"request": "ssh_exec"}, 400, "JSON object"),
        ("/mint/cosign", {"request": dict(READ, ucan="a.b.c")}, 400, "audience"),
        ("/mint/nothing", {}, 404, "/mint/ucan or /mint/cosign"),
    ],
)
async def test_mint_requests_that_cannot_be_served(
    tmp_path: Path, path: str, body: dict[str, object], status: int, fragment: str
) -> None:
    base = {"username": "deploy", "host": HOST, "path_prefix": "/p", "abilities": ["ssh/file/read"]}
    async with minting_backend(tmp_path) as backend:
        answer = await http_post(backend.http_url, path, {**base, **body} if path == "/mint/ucan" else body)
    assert answer.status == status and isinstance(answer.body, dict) and fragment in str(answer.body["error"]), answer


async def test_minting_is_off_without_keys_and_answers_loopback_only(tmp_path: Path) -> None:
    backend = DevBackend()
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await nursery.start(backend.serve)
            answer = await http_post(backend.http_url, "/mint/ucan", {})
            nursery.cancel_scope.cancel()
    assert answer.status == 404 and "--agent-access-keys" in str(answer.body)
    routes = MintRoutes(open_access_keys(tmp_path / "k"))
    body = json.dumps({"username": "deploy", "host": HOST, "path_prefix": "/p", "abilities": ["ssh/*"]}).encode()
    headers = {"content-type": "application/json"}
    remote = await routes.handle(HttpRequest("POST", "/mint/ucan", {}, headers, body, peer="192.0.2.7"))
    local = await routes.handle(HttpRequest("POST", "/mint/ucan", {}, headers, body, peer="127.0.0.1"))
    assert remote.status == 403 and b"loopback only" in remote.body and b"ucan" not in remote.body
    assert local.status == 200 and json.loads(local.body)["ucan"].count(".") == 2


async def test_the_call_client_delivers_a_minted_and_cosigned_request(tmp_path: Path) -> None:
    agent_key = generate_keys(tmp_path / "agent")
    async with minting_backend(tmp_path) as backend:
        backend.register_client(CLIENT_ID, agent_key.public_jwk)
        async with (
            agent_socket(backend, bearer(make_token(agent_key, CLIENT_ID))) as ws,
            trio.open_nursery() as nursery,
        ):
            assert await set_client_id(ws, CLIENT_ID) == {"ok": True}
            agent = FakeAgent(ws, "ops-01")
            nursery.start_soon(agent.serve)
            answer = await send_access_request(
                backend.http_url, CLIENT_ID, READ, host=HOST, path_prefix="/var/www/app",
                abilities=["ssh/file/read"], cosign=True,
            )  # fmt: skip
            nursery.cancel_scope.cancel()
    assert answer.status == 200 and isinstance(answer.body, dict) and answer.body["who"] == "ops-01"
    (frame,) = agent.calls
    data = frame["params"]["data"]  # type: ignore[index]
    assert {k: v for k, v in data.items() if k not in ("ucan", "cosignature")} == READ
    trust = load_trust_keys(tmp_path / "access-keys" / TRUST_FILE)
    now = int(time.time())
    capability = verify_ucan(data["ucan"], trust, audience=AUDIENCE, now=now)
    check = check_cosignature(
        parse_operation("ssh_file_read", data), keys=trust, audience=AUDIENCE, capability=capability, now=now
    )
    assert check.approver == APPROVER_ID


def test_the_cli_refuses_minting_on_a_remote_listener(tmp_path: Path) -> None:
    done = subprocess.run(
        [str(AGENT), "dev-backend", "--allow-remote", "--http-listen", "0.0.0.0:0", "--rpc-listen", "127.0.0.1:0",
         "--agent-access-keys", str(tmp_path / "k")],
        capture_output=True, text=True, timeout=60, check=False, env={"PATH": "/usr/bin:/bin"},
    )  # fmt: skip
    assert done.returncode == 64 and "keep --http-listen on loopback" in done.stderr, done
    assert not (tmp_path / "k").exists()  # refused before any key was made


def test_the_plain_dev_backend_does_not_import_agent_access() -> None:
    """Only --agent-access-keys (and the demo) load agent_access: the backend and its command line stay without it."""
    code = (
        "import sys\n"
        "import p0_ssh_agent.cli.dev_backend, p0_ssh_agent.devbackend.server\n"
        "from p0_ssh_agent.cli import build_parser\n"
        "build_parser('dev_backend').parse_args(['dev-backend', '--demo'])\n"
        "print(sorted(m for m in sys.modules if 'agent_access' in m or 'mint_routes' in m))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert done.stdout.strip() == "[]", done.stdout
    probe = "import sys, p0_ssh_agent.devbackend.demo; print('p0_ssh_agent.agent_access.minting' in sys.modules)"
    loaded = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    assert loaded.stdout.strip() == "True"  # the demo does load it: the probe above would see it
