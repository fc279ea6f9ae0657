"""Keys and tokens for the agent-access unit tests: real keys, real signatures (agent_access/minting.py), and a raw
signer for tokens whose JSON is deliberately broken (so a refusal is about the text, not the signature)."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from functools import cache

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p0_ssh_agent.agent_access.access_model import AccessCommand, Grant, Operation, TrustKeys
from p0_ssh_agent.agent_access.jws_compact import PrivateKey, b64url_encode
from p0_ssh_agent.agent_access.minting import did_key_ed25519, generate_key, mint_ucan, trust_file_json
from p0_ssh_agent.agent_access.trust_keys import trust_keys_of

HOST = "ops-01.example.com"
AUDIENCE = f"did:web:{HOST}"
NOW = 1_700_000_000
ALGORITHMS = ("EdDSA", "ES256", "ES384")
READ_APP = Grant("ssh/file/read", HOST, "deploy", "/var/www/app")


@cache
def key(name: str, algorithm: str) -> PrivateKey:
    """One key per (name, algorithm), made once per test session (ECDSA key generation is not free)."""
    return generate_key(algorithm)


def issuer_id(algorithm: str, name: str = "issuer") -> str:
    private = key(name, algorithm)
    if isinstance(private, Ed25519PrivateKey):
        return did_key_ed25519(private)
    return f"did:web:{name}.{algorithm.lower()}.example.com"


def trust(
    issuers: Sequence[tuple[str, str]] = (("issuer", "EdDSA"),),
    approvers: Sequence[tuple[str, str]] = (("alice", "ES256"),),
) -> TrustKeys:
    """TrustKeys through the real loader's validation: issuers as (key name, alg), approvers as (id, alg)."""
    text = trust_file_json(
        [(issuer_id(algorithm, name), algorithm, key(name, algorithm)) for name, algorithm in issuers],
        [(name, algorithm, key(name, algorithm)) for name, algorithm in approvers],
    )
    return trust_keys_of(json.loads(text), "test")


def ucan(
    *,
    algorithm: str = "EdDSA",
    name: str = "issuer",
    grants: Sequence[Grant] = (READ_APP,),
    now: int = NOW,
    **options: object,
) -> str:
    return mint_ucan(
        key(name, algorithm),
        algorithm=algorithm,
        issuer=issuer_id(algorithm, name),
        audience=AUDIENCE,
        grants=grants,
        now=now,
        **options,  # type: ignore[arg-type]
    )


def raw_token(header: bytes, payload: bytes, private: PrivateKey | None = None) -> str:
    """A compact JWS of exactly these header and payload bytes, validly signed by the EdDSA issuer's key."""
    signing_input = f"{b64url_encode(header)}.{b64url_encode(payload)}"
    signer = private or key("issuer", "EdDSA")
    assert isinstance(signer, Ed25519PrivateKey)
    return f"{signing_input}.{b64url_encode(signer.sign(signing_input.encode()))}"


def raw_payload(payload: Mapping[str, object]) -> bytes:
    return json.dumps(payload).encode()


def exec_op(token: str, **fields: object) -> Operation:
    base: dict[str, object] = {
        "command": AccessCommand.EXEC,
        "request_id": "req-0001",
        "username": "deploy",
        "host": HOST,
        "paths": ("/var/www/app",),
        "ucan": token,
        "argv": ("/usr/bin/true",),
        "cwd": "",
    }
    base.update(fields)
    return Operation(**base)  # type: ignore[arg-type]
