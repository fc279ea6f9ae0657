"""ES384 JWTs for the tunnel handshake (upstream-protocol.md §2.3, §2.4). The only importer of python-jose.

Tokens live minutes, not the Go agent's week: a fresh one is made for every connection attempt, so a stolen
token (from a proxy log, say) is worth little. `iat` is backdated a little because braekhus does not check
it but a skewed intermediary might; `exp` is what braekhus enforces.
"""

from __future__ import annotations

import time
from collections.abc import Mapping

from jose import jwt
from jose.backends.cryptography_backend import CryptographyECKey
from jose.exceptions import JOSEError

from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.identity.signing_key import AgentKey, public_key_from_jwk

TOKEN_LIFETIME_SECONDS = 300
ISSUER = "kd-client"
AUDIENCE = "p0.dev"
ALGORITHM = "ES384"
IAT_BACKDATE_SECONDS = 30


class TokenRejected(AgentError):
    """The token does not verify under braekhus's rules; the message says which rule."""


def make_token(
    key: AgentKey,
    client_id: str,
    *,
    now: float | None = None,
    lifetime_seconds: int = TOKEN_LIFETIME_SECONDS,
    tunnel_id: str = "my-tunnel-id",
) -> str:
    issued = int(time.time() if now is None else now)
    claims = {
        "iss": ISSUER,
        "sub": client_id,
        "aud": AUDIENCE,
        "iat": issued - IAT_BACKDATE_SECONDS,
        "exp": issued + lifetime_seconds,
        "tunnel-id": tunnel_id,
    }
    # python-jose emits raw R||S (JWS form, RFC 7518 §3.4) for EC keys, and the header {"alg","typ"}.
    signing_key = CryptographyECKey(key.private_key, ALGORITHM)
    return jwt.encode(claims, signing_key, algorithm=ALGORITHM, headers={"typ": "JWT"})


def unverified_subject(token: str) -> str | None:
    """braekhus reads `sub` before verifying, to pick the registered key (§2.4 step 2)."""
    try:
        claims = jwt.get_unverified_claims(token)
    except JOSEError:
        return None
    sub = claims.get("sub")
    return sub if isinstance(sub, str) else None


def verify_token(
    token: str,
    public_jwk: Mapping[str, object],
    *,
    client_id: str,
    now: float | None = None,
    leeway_seconds: int = 0,
) -> dict[str, object]:
    try:
        header = jwt.get_unverified_header(token)
    except JOSEError:
        raise TokenRejected("malformed token") from None
    if header.get("alg") != ALGORITHM:
        raise TokenRejected(f"algorithm {header.get('alg')!r} not accepted; only ES384")
    public_key = CryptographyECKey(public_key_from_jwk(public_jwk), ALGORITHM)
    options = {"leeway": leeway_seconds, "verify_iat": False}
    try:
        if now is None:
            claims = jwt.decode(
                token, public_key, algorithms=[ALGORITHM], audience=AUDIENCE, subject=client_id, options=options
            )
        else:
            claims = jwt.decode(
                token,
                public_key,
                algorithms=[ALGORITHM],
                audience=AUDIENCE,
                subject=client_id,
                options={**options, "verify_exp": False, "verify_nbf": False},
            )
            _check_times(claims, now, leeway_seconds)
    except JOSEError as exc:
        raise TokenRejected(str(exc) or type(exc).__name__) from None
    # python-jose skips its audience and subject checks when the claim is absent; braekhus's jose rejects that.
    for name in ("aud", "sub"):
        if name not in claims:
            raise TokenRejected(f"{name} claim missing")
    return dict(claims)


def _check_times(claims: Mapping[str, object], now: float, leeway: int) -> None:
    exp = claims.get("exp")
    if not isinstance(exp, int) or isinstance(exp, bool):
        raise TokenRejected("exp claim missing or not an integer")
    if now > exp + leeway:
        raise TokenRejected("Signature has expired.")
    nbf = claims.get("nbf")
    if isinstance(nbf, int) and not isinstance(nbf, bool) and now < nbf - leeway:
        raise TokenRejected("The token is not yet valid (nbf)")
