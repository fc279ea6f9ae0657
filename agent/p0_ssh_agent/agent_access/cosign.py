"""Step-up: an approver's cosignature of one request (pure). It is what makes `context.cosigner` true, and the
backend cannot fake it: the approver's key is listed on this host (trust_keys.py) and is not the UCAN's issuer.

A cosignature is a compact JWS (jws_compact.py, the same strict parsing as the UCAN), at most MAX_COSIGN_BYTES:

    header  {"alg": "EdDSA" | "ES256" | "ES384", "kid": "<approver id>", "typ": "p0-cosign+jwt"}
    claims  {"aud": "did:web:<this host>", "requestId", "command", "username", "paths": [every path, in order],
             "digest": binding_digest(op), "ucan": ucan_digest(op.ucan), "iat", "exp", "jti"}

The bound claims (expected_claims) tie it to this host, this request, this command, this account, every path (both
of a move or copy), the content written or the exec command line, and the UCAN it steps up. It lives at most
MAX_COSIGN_SECONDS and is accepted from iat - COSIGN_SKEW_SECONDS until exp + COSIGN_SKEW_SECONDS (exclusive). It is
valid once: the gate claims its jti in the replay cache (replay_cache.py) only when everything else has passed,
so check_cosignature does not consult the cache. Messages never quote the cosignature.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass

from p0_ssh_agent.agent_access.access_model import AccessCommand, Capability, Operation, TrustKeys
from p0_ssh_agent.agent_access.jws_compact import SUPPORTED_ALGORITHMS, JwsMalformed, parse_compact, signature_valid

COSIGN_TYPE = "p0-cosign+jwt"
MAX_COSIGN_BYTES = 8 * 1024
MAX_COSIGN_SECONDS = 300
COSIGN_SKEW_SECONDS = 60
JTI_PATTERN = re.compile(r"[A-Za-z0-9_-]{16,128}\Z")
_TIME_CLAIMS = frozenset({"iat", "exp", "jti"})


class CosignRejected(ValueError):
    """The cosignature does not make this request stepped-up; the message says why (never quoting it)."""


@dataclass(frozen=True)
class CosignCheck:
    """A cosignature that passed. expires: the first second it is no longer accepted (exp + skew), which is how
    long the replay cache must remember its jti."""

    approver: str
    jti: str
    expires: int


def binding_digest(op: Operation) -> str:
    """ "sha256:<hex>" of what the operation does beyond its paths: a write's or create's bytes, an exec's argv and
    working directory (canonical JSON), nothing (b"") for every other command."""
    if op.command in (AccessCommand.FILE_WRITE, AccessCommand.FILE_CREATE):
        bound = op.data
    elif op.command is AccessCommand.EXEC:
        command_line = {"argv": list(op.argv), "cwd": op.cwd}
        bound = json.dumps(command_line, separators=(",", ":"), ensure_ascii=False, sort_keys=True).encode()
    else:
        bound = b""
    return "sha256:" + hashlib.sha256(bound).hexdigest()


def expected_claims(op: Operation, *, audience: str, ucan_digest: str) -> dict[str, object]:
    """The claims a cosignature of `op` must carry, exactly: used by check_cosignature and by minting.py."""
    return {
        "aud": audience,
        "requestId": op.request_id,
        "command": op.command.value,
        "username": op.username,
        "paths": list(op.paths),
        "digest": binding_digest(op),
        "ucan": ucan_digest,
    }


def _same(value: object, expected: object) -> bool:
    """JSON equality without Python's coercions (True == 1): same type, same value, element by element."""
    if isinstance(expected, list):
        return (
            isinstance(value, list)
            and len(value) == len(expected)
            and all(_same(item, wanted) for item, wanted in zip(value, expected, strict=True))
        )
    return type(value) is type(expected) and value == expected


def check_cosignature(
    op: Operation, *, keys: TrustKeys, audience: str, capability: Capability, now: int
) -> CosignCheck:
    """The approver, jti and expiry of op.cosignature when it steps `op` up (module docstring); CosignRejected."""
    try:
        jws = parse_compact(op.cosignature, max_bytes=MAX_COSIGN_BYTES)
    except JwsMalformed as exc:
        raise CosignRejected(f"the cosignature is malformed: {exc}") from None
    header, claims = jws.header, jws.payload
    algorithm, key_id = header.get("alg"), header.get("kid")
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise CosignRejected(f"the cosignature's alg is refused (only {', '.join(SUPPORTED_ALGORITHMS)})")
    if header.get("typ") != COSIGN_TYPE or set(header) != {"alg", "kid", "typ"}:
        raise CosignRejected(f'the cosignature\'s header must be exactly alg, kid and "typ": "{COSIGN_TYPE}"')
    if not isinstance(key_id, str) or key_id == capability.issuer or key_id in keys.issuers:
        raise CosignRejected("the cosignature's kid is the UCAN's issuer or another issuer: an approver must sign")
    approver = keys.approvers.get(key_id)
    if approver is None:
        raise CosignRejected("the cosignature's kid is not a configured approver")
    if algorithm != approver.algorithm:
        raise CosignRejected(
            f"the cosignature is signed with {algorithm}; its approver is configured for {approver.algorithm}"
        )
    if not signature_valid(jws, approver.algorithm, approver.public_key):
        raise CosignRejected("the cosignature's signature does not verify with its approver's key")
    wanted = expected_claims(op, audience=audience, ucan_digest=capability.digest)
    if unknown := sorted(set(claims) - set(wanted) - _TIME_CLAIMS):
        raise CosignRejected(f"the cosignature has claims this agent does not accept: {', '.join(unknown)[:120]}")
    for name, value in wanted.items():
        if not _same(claims.get(name), value):
            raise CosignRejected(f"the cosignature's {name} does not match this request")
    return _checked_time(claims, approver=approver.key_id, now=now)


def _checked_time(claims: dict[str, object], *, approver: str, now: int) -> CosignCheck:
    issued, expires, jti = claims.get("iat"), claims.get("exp"), claims.get("jti")
    if not isinstance(issued, int) or isinstance(issued, bool):
        raise CosignRejected("the cosignature's iat must be an integer")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise CosignRejected("the cosignature's exp must be an integer")
    if not 0 < expires - issued <= MAX_COSIGN_SECONDS:
        raise CosignRejected(f"the cosignature's lifetime (exp - iat) must be between 1 and {MAX_COSIGN_SECONDS} s")
    if now < issued - COSIGN_SKEW_SECONDS:
        raise CosignRejected(f"the cosignature is not yet valid (iat is {issued - now} s from now)")
    if now >= expires + COSIGN_SKEW_SECONDS:
        raise CosignRejected(f"the cosignature expired {now - expires} s ago")
    if not isinstance(jti, str) or not JTI_PATTERN.match(jti):
        raise CosignRejected("the cosignature's jti must be 16 to 128 characters of [A-Za-z0-9_-]")
    return CosignCheck(approver=approver, jti=jti, expires=expires + COSIGN_SKEW_SECONDS)
