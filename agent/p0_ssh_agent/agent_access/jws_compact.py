"""Compact JWS (RFC 7515) as the agent-access line reads it: the one parser and verifier behind the UCAN
(capability.py) and the step-up cosignature (cosign.py), and the signer behind minting.py.

Strict, because every byte comes from the network: exactly three base64url parts without padding, decoded
canonically (no padding, no character outside the URL-safe alphabet, no stray trailing bits, so one token has one
spelling and its digest means one thing); the header and the payload each one JSON object with no duplicate key
(json.loads would keep the last one silently: `{"aud": "x", "aud": "y"}`), no NaN or Infinity, and nesting
bounded before the parser recurses. Signatures through `cryptography` only (python-jose has no EdDSA):

- EdDSA: Ed25519, the raw 64-byte signature;
- ES256 / ES384: ECDSA on P-256 / P-384 with SHA-256 / SHA-384, the JOSE form r||s (RFC 7518 §3.4), turned into DER
  for `cryptography` here.

The signed input is the ASCII of "<header_b64>.<payload_b64>". Messages never quote the token or its signature.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from p0_ssh_agent.protocol.jsonrpc import DuplicateKeyError, nesting_depth, no_duplicate_keys

# The algorithm of each key is configured (trust_keys.py); a token's `alg` must equal it (no algorithm confusion).
SUPPORTED_ALGORITHMS = ("EdDSA", "ES256", "ES384")
# ECDSA: the curve, the hash and the byte length of r and of s.
_ECDSA: dict[str, tuple[type[ec.EllipticCurve], type[hashes.HashAlgorithm], int]] = {
    "ES256": (ec.SECP256R1, hashes.SHA256, 32),
    "ES384": (ec.SECP384R1, hashes.SHA384, 48),
}
ED25519_SIGNATURE_BYTES = 64
# Deep enough for any UCAN or cosignature we accept ({"cap": {res: {ability: [{caveat}]}}} is 4); shallow enough
# that json's recursive parser never gets near Python's recursion limit on a hostile `[[[[...`.
MAX_JSON_DEPTH = 16
_BASE64URL = re.compile(r"[A-Za-z0-9_-]*")

PrivateKey = Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey


class JwsMalformed(ValueError):
    """The text is not a compact JWS this line accepts; the message says what is wrong, never quotes it."""


@dataclass(frozen=True)
class CompactJws:
    header: dict[str, object]
    payload: dict[str, object]
    signing_input: bytes  # ASCII "<header_b64>.<payload_b64>"
    signature: bytes

    def __repr__(self) -> str:  # a token is a credential: never show it, even in a traceback
        return f"CompactJws(header={self.header!r}, payload=<{len(self.payload)} members>)"


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode_strict(text: str, what: str) -> bytes:
    """Unpadded base64url in its one canonical spelling, or JwsMalformed."""
    if not isinstance(text, str) or not _BASE64URL.fullmatch(text) or len(text) % 4 == 1:
        raise JwsMalformed(f"{what} is not unpadded base64url")
    try:
        data = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise JwsMalformed(f"{what} is not unpadded base64url") from None
    if b64url_encode(data) != text:  # non-zero trailing bits: a second spelling of the same bytes
        raise JwsMalformed(f"{what} is not canonical base64url")
    return data


def _refuse_constant(name: str) -> object:
    raise JwsMalformed(f"JSON constant {name} is not allowed")


def parse_json_object(text: str, what: str) -> dict[str, object]:
    """One JSON object: no duplicate member, no NaN/Infinity, nesting at most MAX_JSON_DEPTH; else JwsMalformed."""
    if nesting_depth(text) > MAX_JSON_DEPTH:
        raise JwsMalformed(f"{what} nests deeper than {MAX_JSON_DEPTH} levels")
    try:
        value = json.loads(text, object_pairs_hook=no_duplicate_keys, parse_constant=_refuse_constant)
    except DuplicateKeyError as exc:
        raise JwsMalformed(f"{what}: duplicate JSON member {exc.key[:64]!r}") from None
    except JwsMalformed as exc:
        raise JwsMalformed(f"{what}: {exc}") from None
    except (ValueError, RecursionError):  # JSONDecodeError, an integer of too many digits
        raise JwsMalformed(f"{what} is not valid JSON") from None
    if not isinstance(value, dict):
        raise JwsMalformed(f"{what} is not a JSON object")
    return value


def _json_part(part: str, what: str) -> dict[str, object]:
    raw = b64url_decode_strict(part, what)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise JwsMalformed(f"{what} is not UTF-8") from None
    return parse_json_object(text, what)


def parse_compact(token: object, *, max_bytes: int) -> CompactJws:
    """The three parts of a compact JWS, decoded and parsed, not yet verified; JwsMalformed otherwise."""
    if not isinstance(token, str) or not token:
        raise JwsMalformed("the token must be a non-empty string")
    if len(token) > max_bytes:  # checked before encoding: a str is at least as many bytes as characters
        raise JwsMalformed(f"the token is longer than {max_bytes} bytes")
    if not token.isascii():
        raise JwsMalformed("the token is not ASCII")
    parts = token.split(".")
    if len(parts) != 3:
        raise JwsMalformed(f"the token has {len(parts)} dot-separated parts, not 3 (compact JWS)")
    header_b64, payload_b64, signature_b64 = parts
    header = _json_part(header_b64, "the header")
    payload = _json_part(payload_b64, "the payload")
    signature = b64url_decode_strict(signature_b64, "the signature")
    return CompactJws(header, payload, f"{header_b64}.{payload_b64}".encode("ascii"), signature)


def signature_valid(jws: CompactJws, algorithm: str, public_key: object) -> bool:
    """Whether `jws` is signed by `public_key` with `algorithm` (the one configured for the key, not the header's)."""
    if algorithm == "EdDSA":
        if not isinstance(public_key, Ed25519PublicKey) or len(jws.signature) != ED25519_SIGNATURE_BYTES:
            return False
        try:
            public_key.verify(jws.signature, jws.signing_input)
        except InvalidSignature:
            return False
        return True
    if algorithm not in _ECDSA or not isinstance(public_key, ec.EllipticCurvePublicKey):
        return False
    curve, hash_type, size = _ECDSA[algorithm]
    if not isinstance(public_key.curve, curve) or len(jws.signature) != 2 * size:
        return False
    r = int.from_bytes(jws.signature[:size], "big")
    s = int.from_bytes(jws.signature[size:], "big")
    try:
        public_key.verify(encode_dss_signature(r, s), jws.signing_input, ec.ECDSA(hash_type()))
    except InvalidSignature:
        return False
    return True


def _json_b64(value: Mapping[str, object]) -> str:
    return b64url_encode(json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8"))


def sign_compact(
    header: Mapping[str, object], payload: Mapping[str, object], private_key: PrivateKey, algorithm: str
) -> str:
    """A compact JWS of `header` and `payload` signed with `algorithm` (whatever the header's `alg` says: tests
    forge a mismatch this way). ValueError when the key does not fit the algorithm."""
    signing_input = f"{_json_b64(header)}.{_json_b64(payload)}"
    data = signing_input.encode("ascii")
    if algorithm == "EdDSA":
        if not isinstance(private_key, Ed25519PrivateKey):
            raise ValueError("EdDSA needs an Ed25519 private key")
        signature = private_key.sign(data)
    elif algorithm in _ECDSA and isinstance(private_key, ec.EllipticCurvePrivateKey):
        curve, hash_type, size = _ECDSA[algorithm]
        if not isinstance(private_key.curve, curve):
            raise ValueError(f"{algorithm} needs a key on {curve.name}")
        r, s = decode_dss_signature(private_key.sign(data, ec.ECDSA(hash_type())))
        signature = r.to_bytes(size, "big") + s.to_bytes(size, "big")
    else:
        raise ValueError(f"cannot sign {algorithm} with this key")
    return f"{signing_input}.{b64url_encode(signature)}"
