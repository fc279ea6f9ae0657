"""Making what capability.py and cosign.py verify, from local keys: for the dev backend, the tests and the docs.
The agent itself never mints; on a real deployment the issuer and the approvers hold their private keys elsewhere.

- generate_key / public_jwk: an EdDSA (Ed25519), ES256 (P-256) or ES384 (P-384) key and its public JWK;
- mint_ucan: a UCAN 0.10.0 JWT granting `grants` (one caveat per Grant, under "ssh://<host>" and its ability);
- mint_cosignature: an approver's cosignature of one operation (claims from cosign.expected_claims, so minting and
  checking agree);
- did_key_ed25519: the did:key of an Ed25519 key (multibase base58btc of multicodec 0xed01 and the raw key);
- trust_file_json: a trust file (trust_keys.py's format) listing issuers' and approvers' public keys.

header_overrides, extra_payload and claim_overrides let a test forge a token: a value replaces the member, OMIT
removes it; the signature is made with `algorithm` whatever the header then says.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping, Sequence

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from p0_ssh_agent.agent_access.access_model import Grant, Operation
from p0_ssh_agent.agent_access.capability import UCAN_VERSION, ucan_digest
from p0_ssh_agent.agent_access.cosign import COSIGN_TYPE, expected_claims
from p0_ssh_agent.agent_access.jws_compact import PrivateKey, PublicKey, b64url_encode, sign_compact

OMIT = object()  # an override's value that removes the member
_CURVE_OF = {"ES256": (ec.SECP256R1, "P-256", 32), "ES384": (ec.SECP384R1, "P-384", 48)}
_BASE58_ALPHABET = "123456789ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnopqrstuvwxyz"
_ED25519_MULTICODEC = b"\xed\x01"


def generate_key(algorithm: str) -> PrivateKey:
    if algorithm == "EdDSA":
        return Ed25519PrivateKey.generate()
    if algorithm in _CURVE_OF:
        return ec.generate_private_key(_CURVE_OF[algorithm][0]())
    raise ValueError(f"unsupported algorithm {algorithm!r} (EdDSA, ES256 or ES384)")


def _public(key: PrivateKey | PublicKey) -> PublicKey:
    return key.public_key() if isinstance(key, Ed25519PrivateKey | ec.EllipticCurvePrivateKey) else key


def public_jwk(private_key: PrivateKey | PublicKey) -> dict[str, str]:
    """The public JWK of a key (private or public): OKP/Ed25519 or EC P-256/P-384, no private member."""
    public = _public(private_key)
    if isinstance(public, Ed25519PublicKey):
        raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        return {"kty": "OKP", "crv": "Ed25519", "x": b64url_encode(raw)}
    size = (public.curve.key_size + 7) // 8
    crv = {256: "P-256", 384: "P-384"}.get(public.curve.key_size)
    if crv is None:
        raise ValueError(f"unsupported curve {public.curve.name}")
    numbers = public.public_numbers()
    return {
        "kty": "EC",
        "crv": crv,
        "x": b64url_encode(numbers.x.to_bytes(size, "big")),
        "y": b64url_encode(numbers.y.to_bytes(size, "big")),
    }


def _overridden(base: dict[str, object], overrides: Mapping[str, object] | None) -> dict[str, object]:
    result = dict(base)
    for name, value in (overrides or {}).items():
        if value is OMIT:
            result.pop(name, None)
        else:
            result[name] = value
    return result


def capabilities_of(grants: Sequence[Grant]) -> dict[str, dict[str, list[dict[str, str]]]]:
    """UCAN 0.10.0's cap: {"ssh://<host>": {"<ability>": [caveat, ...]}}, one caveat per grant."""
    capabilities: dict[str, dict[str, list[dict[str, str]]]] = {}
    for grant in grants:
        caveat = {"provider": "ssh", "host": grant.host, "username": grant.username, "path_prefix": grant.path_prefix}
        capabilities.setdefault(f"ssh://{grant.host}", {}).setdefault(grant.ability, []).append(caveat)
    return capabilities


def mint_ucan(
    private_key: PrivateKey,
    *,
    algorithm: str,
    issuer: str,
    audience: str,
    grants: Sequence[Grant],
    now: int,
    lifetime_seconds: int = 600,
    not_before: int | None = None,
    proofs: Sequence[str] = (),
    extra_payload: Mapping[str, object] | None = None,
    header_overrides: Mapping[str, object] | None = None,
) -> str:
    """A UCAN 0.10.0 JWT from `issuer` to `audience`, valid from `not_before` (or now) for lifetime_seconds."""
    payload: dict[str, object] = {
        "ucv": UCAN_VERSION,
        "iss": issuer,
        "aud": audience,
        "exp": (not_before if not_before is not None else now) + lifetime_seconds,
        "nnc": secrets.token_urlsafe(12),
        "prf": list(proofs),
        "cap": capabilities_of(grants),
    }
    if not_before is not None:
        payload["nbf"] = not_before
    header = _overridden({"alg": algorithm, "typ": "JWT"}, header_overrides)
    return sign_compact(header, _overridden(payload, extra_payload), private_key, algorithm)


def mint_cosignature(
    private_key: PrivateKey,
    *,
    algorithm: str,
    key_id: str,
    op: Operation,
    audience: str,
    ucan_token: str,
    now: int,
    lifetime_seconds: int = 120,
    jti: str | None = None,
    claim_overrides: Mapping[str, object] | None = None,
) -> str:
    """Approver `key_id`'s cosignature of `op` (which carries `ucan_token`, the UCAN it steps up)."""
    claims: dict[str, object] = {
        **expected_claims(op, audience=audience, ucan_digest=ucan_digest(ucan_token)),
        "iat": now,
        "exp": now + lifetime_seconds,
        "jti": jti if jti is not None else secrets.token_urlsafe(24),
    }
    header = {"alg": algorithm, "kid": key_id, "typ": COSIGN_TYPE}
    return sign_compact(header, _overridden(claims, claim_overrides), private_key, algorithm)


def base58btc(data: bytes) -> str:
    """Bitcoin's base58 (the multibase 'z' alphabet): each leading zero byte is a '1'."""
    number = int.from_bytes(data, "big")
    digits: list[str] = []
    while number:
        number, remainder = divmod(number, 58)
        digits.append(_BASE58_ALPHABET[remainder])
    zeros = len(data) - len(data.lstrip(b"\x00"))
    return "1" * zeros + "".join(reversed(digits))


def did_key_ed25519(public_key: Ed25519PublicKey | Ed25519PrivateKey) -> str:
    """did:key:z6Mk... of an Ed25519 key (a private key stands for its public half)."""
    public = public_key.public_key() if isinstance(public_key, Ed25519PrivateKey) else public_key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return "did:key:z" + base58btc(_ED25519_MULTICODEC + raw)


def trust_file_json(
    issuers: Sequence[tuple[str, str, PrivateKey | PublicKey]],
    approvers: Sequence[tuple[str, str, PrivateKey | PublicKey]] = (),
) -> str:
    """A trust file (trust_keys.py) listing each (id, alg, key)'s public JWK; private keys stay out of it."""

    def entries(keys: Sequence[tuple[str, str, PrivateKey | PublicKey]]) -> list[dict[str, object]]:
        return [{"id": key_id, "alg": algorithm, "jwk": public_jwk(key)} for key_id, algorithm, key in keys]

    return json.dumps({"issuers": entries(issuers), "approvers": entries(approvers)}, indent=2) + "\n"
