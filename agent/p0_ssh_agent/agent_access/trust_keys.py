"""The keys agent access trusts, read from a root-owned file on this host (DEFAULT_TRUST_KEYS_PATH):

    {"issuers":   [{"id": "did:key:z6Mk...", "alg": "EdDSA", "jwk": {"kty": "OKP", "crv": "Ed25519", "x": "..."}}],
     "approvers": [{"id": "alice", "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": "...", "y": "..."}}]}

An issuer signs UCANs (its id is the `iss` DID); an approver signs step-up cosignatures (its id is the `kid`).
Each key is accepted with the one algorithm its entry names, which must fit the key: EdDSA with an Ed25519 OKP key,
ES256 with P-256, ES384 with P-384. Refused, with the file and the entry named:

- a JWK with a private member ("d", ...): a private key has no business on the host that only verifies;
- an id listed twice, or as both an issuer and an approver, and an approver holding an issuer's public key: step-up
  must come from another key than the one that issued the capability;
- a member this format does not have (a typo such as "approver" would otherwise silently turn step-up off).

The file is read as host/policy_file.py reads the policy (read_operator_file): root's, not writable by group or
others, a regular file opened without following a symlink, at most MAX_TRUST_FILE_BYTES. No file means no keys:
nothing verifies, so every request is refused.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

from p0_ssh_agent.agent_access.access_model import TrustedKey, TrustKeys
from p0_ssh_agent.agent_access.jws_compact import JwsMalformed, PublicKey, b64url_decode_strict, parse_json_object
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.host.policy_file import read_operator_file

DEFAULT_TRUST_KEYS_PATH = Path("/etc/p0-ssh-agent/agent-access-keys.json")
MAX_TRUST_FILE_BYTES = 1 << 20
MAX_KEY_ID_CHARS = 512
ENTRY_MEMBERS = frozenset({"id", "alg", "jwk"})
# RFC 7518 §6: the private parameters of EC, OKP (d) and RSA keys, and a symmetric key's k.
PRIVATE_JWK_MEMBERS = ("d", "p", "q", "dp", "dq", "qi", "oth", "k")
# alg -> (kty, crv, coordinate bytes) of the only key it is accepted with.
_KEY_TYPE_OF = {"EdDSA": ("OKP", "Ed25519", 32), "ES256": ("EC", "P-256", 32), "ES384": ("EC", "P-384", 48)}
_CURVES: dict[str, ec.EllipticCurve] = {"P-256": ec.SECP256R1(), "P-384": ec.SECP384R1()}


class TrustKeysError(ConfigError):
    """The trust file cannot be used (unsafe, malformed, or a key is unusable): exit 78."""


def load_trust_keys(path: Path = DEFAULT_TRUST_KEYS_PATH) -> TrustKeys:
    """The issuers and approvers in `path` (module docstring); empty TrustKeys when there is no file."""
    data = read_operator_file(
        path,
        max_bytes=MAX_TRUST_FILE_BYTES,
        error=TrustKeysError,
        what="the agent-access trust file",
        why="anyone who can write it can issue capabilities and approve exec",
    )
    if data is None:
        return TrustKeys()
    try:
        text = data.decode("utf-8")
        document = parse_json_object(text, "the trust file")
    except UnicodeDecodeError as exc:
        raise TrustKeysError(f"{path}: not UTF-8 text (byte {exc.start})") from None
    except JwsMalformed as exc:
        position, reason = _syntax_error(text)
        raise TrustKeysError(f"{path}{position}: {exc}{reason}") from None
    return trust_keys_of(document, str(path), lines=entry_lines(text))


def trust_keys_of(document: dict[str, object], shown: str, *, lines: Mapping[str, int] | None = None) -> TrustKeys:
    """The keys of a parsed trust file (`shown` names it in messages, with the line of the entry at fault when
    `lines` has it: entry_lines); TrustKeysError."""
    lines = lines or {}
    if unknown := sorted(set(document) - {"issuers", "approvers"}):
        raise TrustKeysError(f"{shown}: unknown member(s) {', '.join(unknown)}: only issuers and approvers")
    issuers = _entries(document.get("issuers", []), "issuers", shown, lines)
    approvers = _entries(document.get("approvers", []), "approvers", shown, lines)
    for index, approver in enumerate(approvers.values()):
        where = _where(shown, f"approvers[{index}]", lines)
        if approver.key_id in issuers:
            raise TrustKeysError(f"{where}: id {approver.key_id!r} is also an issuer; an approver must be another key")
        for issuer in issuers.values():
            if _public_bytes(approver.public_key) == _public_bytes(issuer.public_key):
                raise TrustKeysError(
                    f"{where}: holds the public key of issuer {issuer.key_id!r}; step-up must come from another key"
                )
    return TrustKeys(issuers=issuers, approvers=approvers)


def _entries(value: object, kind: str, shown: str, lines: Mapping[str, int]) -> dict[str, TrustedKey]:
    if not isinstance(value, list):
        raise TrustKeysError(f"{shown}: {kind} must be a list")
    keys: dict[str, TrustedKey] = {}
    for index, entry in enumerate(value):
        where = _where(shown, f"{kind}[{index}]", lines)
        key = _entry(entry, kind, where)
        if key.key_id in keys:
            raise TrustKeysError(f"{where}: id {key.key_id!r} is listed twice")
        keys[key.key_id] = key
    return keys


def _where(shown: str, entry: str, lines: Mapping[str, int]) -> str:
    """ "<file>:<line>: issuers[2]", or without the line when it is not known."""
    line = lines.get(entry)
    return f"{shown}:{line}: {entry}" if line else f"{shown}: {entry}"


def entry_lines(text: str) -> dict[str, int]:
    """The line each entry of the top-level issuers and approvers lists starts on ({"issuers[0]": 3, ...}), so
    an error names it as policy.cedar's errors name theirs. Best effort on text that parse_json_object accepted:
    anything unexpected gives what was found so far."""
    decoder = json.JSONDecoder()
    lines: dict[str, int] = {}

    def skip(at: int) -> int:
        while at < len(text) and text[at] in " \t\r\n":
            at += 1
        return at

    try:
        at = skip(0) + 1  # past the top-level "{"
        while (at := skip(at)) < len(text) and text[at] == '"':
            name, at = decoder.raw_decode(text, at)
            at = skip(skip(at) + 1)  # past the ":"
            if name in ("issuers", "approvers") and text.startswith("[", at):
                index, at = 0, skip(at + 1)
                while at < len(text) and text[at] != "]":
                    lines[f"{name}[{index}]"] = text.count("\n", 0, at) + 1
                    _, at = decoder.raw_decode(text, at)
                    at, index = skip(at), index + 1
                    at = skip(at + 1) if text.startswith(",", at) else at
                at += 1
            else:
                _, at = decoder.raw_decode(text, at)
            at = skip(at)
            at = at + 1 if text.startswith(",", at) else at
    except (ValueError, RecursionError):
        pass
    return lines


def _syntax_error(text: str) -> tuple[str, str]:
    """(":<line>:<col>", " (<what json says>)") of a JSON syntax error in `text`, or ("", "") for another error."""
    try:
        json.loads(text)
    except json.JSONDecodeError as exc:
        return f":{exc.lineno}:{exc.colno}", f" ({exc.msg})"
    except (ValueError, RecursionError):
        return "", ""
    return "", ""


def _entry(entry: object, kind: str, where: str) -> TrustedKey:
    if not isinstance(entry, dict):
        raise TrustKeysError(f"{where}: must be an object with id, alg and jwk")
    if members := sorted(set(entry) ^ ENTRY_MEMBERS):
        raise TrustKeysError(f"{where}: must have exactly id, alg and jwk (not: {', '.join(members)})")
    key_id, algorithm, jwk = entry["id"], entry["alg"], entry["jwk"]
    if not isinstance(key_id, str) or not key_id or len(key_id) > MAX_KEY_ID_CHARS or not key_id.isprintable():
        raise TrustKeysError(
            f"{where}: id must be a non-empty printable string of at most {MAX_KEY_ID_CHARS} characters"
        )
    if kind == "issuers" and not key_id.startswith("did:"):
        raise TrustKeysError(f"{where}: an issuer's id is the DID its UCANs name as iss (did:key:..., did:web:...)")
    if algorithm not in _KEY_TYPE_OF:
        raise TrustKeysError(f"{where}: alg must be one of {', '.join(_KEY_TYPE_OF)}")
    return TrustedKey(key_id=key_id, algorithm=algorithm, public_key=_public_key(jwk, algorithm, where))


def _public_key(jwk: object, algorithm: str, where: str) -> PublicKey:
    if not isinstance(jwk, dict):
        raise TrustKeysError(f"{where}: jwk must be a JWK object")
    if private := [name for name in PRIVATE_JWK_MEMBERS if name in jwk]:
        raise TrustKeysError(
            f"{where}: the jwk holds a private member ({', '.join(private)}); put only the public key on this host"
        )
    kty, crv, size = _KEY_TYPE_OF[algorithm]
    if jwk.get("kty") != kty or jwk.get("crv") != crv:
        raise TrustKeysError(f'{where}: alg {algorithm} needs a {kty} {crv} key ("kty": "{kty}", "crv": "{crv}")')
    if "alg" in jwk and jwk["alg"] != algorithm:
        raise TrustKeysError(f"{where}: the jwk's own alg is not the entry's alg {algorithm}")
    if "use" in jwk and jwk["use"] != "sig":
        raise TrustKeysError(f'{where}: the jwk\'s use must be "sig"')
    x = _coordinate(jwk, "x", size, where)
    if kty == "OKP":
        return Ed25519PublicKey.from_public_bytes(x)
    y = _coordinate(jwk, "y", size, where)
    numbers = ec.EllipticCurvePublicNumbers(int.from_bytes(x, "big"), int.from_bytes(y, "big"), _CURVES[crv])
    try:
        return numbers.public_key()
    except ValueError:
        raise TrustKeysError(f"{where}: the point (x, y) is not on {crv}") from None


def _coordinate(jwk: dict[str, object], name: str, size: int, where: str) -> bytes:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise TrustKeysError(f"{where}: the jwk's {name} is missing or not a string")
    try:
        raw = b64url_decode_strict(value, f"the jwk's {name}")
    except JwsMalformed as exc:
        raise TrustKeysError(f"{where}: {exc}") from None
    if len(raw) != size:
        raise TrustKeysError(f"{where}: the jwk's {name} must encode {size} bytes")
    return raw


def _public_bytes(key: object) -> bytes:
    if isinstance(key, Ed25519PublicKey):
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    if isinstance(key, ec.EllipticCurvePublicKey):
        return key.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return b""
