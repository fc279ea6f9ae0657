"""Helpers shared by the agent-access tests that drive the real daemon (test_access_e2e_sandbox.py,
test_access_battery_sandbox.py): the keys, UCANs and cosignatures (agent_access/minting.py, from local keys), the
starter policies with their accounts and paths replaced, the agent's configuration keys, and the HTTP calls.

    starter_text(names, replacements) -> str   the named starters of docs/policies/agent-access/, rewritten
    access_files(directory, policy_text)        the agent-access policy and trust files, as the daemon reads them
    access_config(...) -> dict                  the configuration keys that turn agent access on for those files
    ucan_for(user, prefix, abilities)           a UCAN of the test issuer for this host
    body(command, user, token, **members)       one request body, with a fresh requestId
    cosigned(request)                           the request with the approver's cosignature of it
    call / refused / result_of / entries        post it and check the answer
"""

from __future__ import annotations

import base64
import itertools
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p0_ssh_agent.agent_access.access_model import Grant
from p0_ssh_agent.agent_access.minting import (
    did_key_ed25519,
    generate_key,
    mint_cosignature,
    mint_ucan,
    trust_file_json,
)
from p0_ssh_agent.agent_access.operations import parse_operation
from provisioning_support import Daemon

HOST = "ops-01.example.com"  # the starter policies' host; the agent's `hostname`
AUDIENCE = f"did:web:{HOST}"
STARTERS = Path(__file__).resolve().parents[1] / "docs" / "policies" / "agent-access"
STARTER_NAMES = (
    "ssh-host-pinned-read",
    "ssh-sftp-upload",
    "ssh-host-subdir-full",
    "ssh-exec-step-up",
    "ssh-delete-step-up",
)
ISSUER_KEY = Ed25519PrivateKey.generate()
ISSUER = did_key_ed25519(ISSUER_KEY)
APPROVER_KEY = generate_key("ES256")
APPROVER = "oncall-approver"
REQUEST_IDS = itertools.count(1)


def starter_text(names: Iterable[str], replacements: Sequence[tuple[str, str]]) -> str:
    """The named starter policies (file stems), one after the other, each `old` replaced by `new` in order."""
    text = "\n".join((STARTERS / f"{name}.cedar").read_text() for name in names)
    for old, new in replacements:
        text = text.replace(old, new)
    return text


def access_files(directory: Path, policy_text: str) -> tuple[Path, Path]:
    """(policy, trust file) in `directory`: the policy text, and the test issuer and approver as the trust."""
    policy, trust = directory / "agent-access.cedar", directory / "agent-access-keys.json"
    policy.write_text(policy_text)
    trust.write_text(trust_file_json([(ISSUER, "EdDSA", ISSUER_KEY)], [(APPROVER, "ES256", APPROVER_KEY)]))
    for path in (policy, trust):
        path.chmod(0o644)
    return policy, trust


def access_config(users: Sequence[str], policy: Path, trust: Path, audit: Path) -> dict[str, object]:
    """The daemon's configuration keys for agent access to `users`, in namespace mode (no systemd here)."""
    return {
        "hostname": HOST,
        "agentAccess": True,
        "agentAccessUsers": list(users),
        "agentAccessPolicyFile": str(policy),
        "agentAccessKeysFile": str(trust),
        "agentAccessConfinement": "namespace",
        "auditFile": str(audit),
    }


def ucan_for(
    user: str,
    prefix: Path | str,
    abilities: tuple[str, ...] = ("ssh/*",),
    *,
    key: Ed25519PrivateKey = ISSUER_KEY,
    audience: str = AUDIENCE,
    host: str = HOST,
    now: int | None = None,
) -> str:
    grants = [Grant(ability, host, user, str(prefix)) for ability in abilities]
    return mint_ucan(
        key,
        algorithm="EdDSA",
        issuer=ISSUER,
        audience=audience,
        grants=grants,
        now=now if now is not None else int(time.time()),
    )


def body(command: str, user: str, token: str, **members: object) -> dict[str, object]:
    return {"command": command, "requestId": f"req-{next(REQUEST_IDS):05d}", "username": user, "ucan": token, **members}


def cosigned(request: dict[str, object]) -> dict[str, object]:
    """The request with an approver's cosignature of it (of the Operation the agent will parse from it)."""
    operation = parse_operation(str(request["command"]), request)
    signature = mint_cosignature(
        APPROVER_KEY,
        algorithm="ES256",
        key_id=APPROVER,
        op=operation,
        audience=AUDIENCE,
        ucan_token=str(request["ucan"]),
        now=int(time.time()),
    )
    return {**request, "cosignature": signature}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def call(daemon: Daemon, request: dict[str, object], status: int = 200) -> dict[str, object]:
    """Post one request; its answer's data, after checking the HTTP status it came with."""
    got, answer = daemon.post(request)
    assert got == status, (got, answer)
    return answer


def result_of(answer: dict[str, object]) -> dict[str, object]:
    result = answer.get("result")
    assert isinstance(result, dict), answer
    return result


def entries(result: dict[str, object]) -> list[dict[str, object]]:
    found = result.get("entries")
    assert isinstance(found, list) and all(isinstance(entry, dict) for entry in found), result
    return found


def refused(daemon: Daemon, request: dict[str, object], status: int, kind: str, words: str) -> str:
    answer = call(daemon, request, status)
    assert answer["success"] is False and result_of(answer)["kind"] == kind, answer
    error = str(answer["error"])
    assert words in error, error
    return error
