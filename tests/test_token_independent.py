"""The agent's JWT, checked by a verifier that shares no code with it (no python-jose): braekhus's rules.

The verifier splits the token, base64url-decodes header and claims, and checks the ES384 signature with
`cryptography` directly: the JWS signature is raw R||S (48 + 48 bytes), which is converted to DER for
`ECDSA(SHA384)`. A golden test pins the exact header and claims for a fixed key and a fixed time.
"""

from __future__ import annotations

import base64
import json
import shutil
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from p0_ssh_agent.identity.signing_key import generate_keys, load_private_key
from p0_ssh_agent.identity.token import make_token

FIXTURES = Path(__file__).parent / "fixtures"
CLIENT_ID = "acme:host-1:ssh"
NOW = 1_790_000_000  # a fixed moment for the golden test


def _b64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _public_key(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey:
    assert (jwk["kty"], jwk["crv"]) == ("EC", "P-384")
    numbers = ec.EllipticCurvePublicNumbers(
        int.from_bytes(_b64(jwk["x"]), "big"), int.from_bytes(_b64(jwk["y"]), "big"), ec.SECP384R1()
    )
    return numbers.public_key()


def verify_like_braekhus(token: str, jwk: dict[str, str], *, now: float) -> dict[str, object]:
    """ES384 signature, sub, aud "p0.dev", not expired (upstream-protocol.md §2.4). Raises on any violation."""
    header_b64, claims_b64, signature_b64 = token.split(".")
    header = json.loads(_b64(header_b64))
    claims = json.loads(_b64(claims_b64))
    if header.get("alg") != "ES384":
        raise ValueError(f"alg {header.get('alg')!r}")
    raw = _b64(signature_b64)
    if len(raw) != 96:
        raise ValueError(f"signature is {len(raw)} bytes, not raw R||S (96)")
    der = encode_dss_signature(int.from_bytes(raw[:48], "big"), int.from_bytes(raw[48:], "big"))
    _public_key(jwk).verify(der, f"{header_b64}.{claims_b64}".encode(), ec.ECDSA(hashes.SHA384()))
    if claims.get("aud") != "p0.dev":
        raise ValueError(f"aud {claims.get('aud')!r}")
    if claims.get("sub") != CLIENT_ID:
        raise ValueError(f"sub {claims.get('sub')!r}")
    if not isinstance(claims.get("exp"), int) or claims["exp"] <= now:
        raise ValueError("expired")
    return claims  # type: ignore[no-any-return]


def test_a_fresh_token_verifies_with_an_independent_verifier(tmp_path: Path) -> None:
    key = generate_keys(tmp_path / "keys")
    token = make_token(key, CLIENT_ID, now=NOW)
    public = json.loads((tmp_path / "keys" / "jwk.public.json").read_text())
    claims = verify_like_braekhus(token, public, now=NOW + 60)
    assert claims["iss"] == "kd-client" and claims["tunnel-id"]
    # Short-lived (minutes, not the Go agent's week), and not issued in the future.
    assert 60 <= int(claims["exp"]) - NOW <= 600  # type: ignore[call-overload]
    assert int(claims["iat"]) <= NOW  # type: ignore[call-overload]


def test_golden_header_and_claims(tmp_path: Path) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    for name in ("jwk.private.json", "jwk.public.json"):
        shutil.copy(FIXTURES / f"golden.{name}", key_dir / name)
    (key_dir / "jwk.private.json").chmod(0o600)
    token = make_token(load_private_key(key_dir), CLIENT_ID, now=NOW)
    header_b64, claims_b64, _ = token.split(".")
    assert json.loads(_b64(header_b64)) == {"alg": "ES384", "typ": "JWT"}
    assert json.loads(_b64(claims_b64)) == {
        "iss": "kd-client",
        "sub": CLIENT_ID,
        "aud": "p0.dev",
        "iat": NOW - 30,
        "exp": NOW + 300,
        "tunnel-id": "my-tunnel-id",
    }
    verify_like_braekhus(token, json.loads((FIXTURES / "golden.jwk.public.json").read_text()), now=NOW)


def test_the_independent_verifier_rejects_what_braekhus_rejects(tmp_path: Path) -> None:
    key = generate_keys(tmp_path / "a")
    other = generate_keys(tmp_path / "b")
    public = json.loads((tmp_path / "a" / "jwk.public.json").read_text())
    token = make_token(key, CLIENT_ID, now=NOW)
    with pytest.raises(ValueError, match="expired"):
        verify_like_braekhus(token, public, now=NOW + 301)
    with pytest.raises(InvalidSignature):
        verify_like_braekhus(make_token(other, CLIENT_ID, now=NOW), public, now=NOW)
    header, claims, signature = token.split(".")
    forged = base64.urlsafe_b64encode(json.dumps({**json.loads(_b64(claims)), "sub": "x:y:ssh"}).encode())
    with pytest.raises(InvalidSignature):
        verify_like_braekhus(f"{header}.{forged.decode().rstrip('=')}.{signature}", public, now=NOW)
    with pytest.raises(ValueError, match="sub"):
        verify_like_braekhus(make_token(key, "other:host:ssh", now=NOW), public, now=NOW)
