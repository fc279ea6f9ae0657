"""The capability a request carries: a UCAN 0.10.0 in its JWT form, verified on this host (pure).

verify_ucan checks, in this order, and refuses with CapabilityRejected at the first failure:

1. the text: at most MAX_UCAN_BYTES, a strict compact JWS (jws_compact.py: three unpadded base64url parts, JSON
   objects without duplicate members, bounded nesting);
2. the header: exactly {"alg", "typ": "JWT"}, alg one of EdDSA, ES256, ES384 ("none" and anything else refused);
3. the issuer: `iss` is a configured issuer (TrustKeys.issuers), and the header's alg is the algorithm configured
   for it, so a token cannot choose how it is checked (no algorithm confusion);
4. the signature, with that key;
5. the claims: "ucv" == "0.10.0"; "aud" == this agent's audience ("did:web:<hostname>"); "exp" an integer (a UCAN
   that never expires is refused), "nbf" an integer when present, "nnc" a string when present, "fct" ignored;
   "prf" absent or [] (delegation chains are refused for now); other members are ignored, as JWT claims are;
6. the time: valid from nbf - CLOCK_SKEW_SECONDS until exp + CLOCK_SKEW_SECONDS (exclusive), and no longer than
   MAX_UCAN_LIFETIME_SECONDS from nbf (or from now, without nbf);
7. the capabilities: "cap" is {"ssh://<host>": {"<ability>": [caveat, ...]}}. An ability is an AccessCommand's
   ("ssh/file/read", ..., "ssh/exec") or "ssh/*"; an ability or a resource scheme this agent does not know is
   ignored (a token may carry other providers' capabilities), but a token that grants nothing usable is refused.
   Each caveat is exactly {"provider": "ssh", "host": <the resource's host>, "username", "path_prefix"}: an empty
   caveat (which would mean "no restriction") or one with any other member is refused, since a constraint we do not
   understand could be a restriction we would fail to apply. path_prefix must pass scoped_paths.clean_prefix.
   Each (ability, caveat) is one Grant.

covering_grant then says whether one grant covers a request: the ability (or "ssh/*"), the host, the username,
and every path beneath its path_prefix, compared on components (scoped_paths.within), never as strings.

Messages name what failed and never contain the token or its signature.
"""

from __future__ import annotations

import hashlib
import re

from p0_ssh_agent.agent_access.access_model import AccessCommand, Capability, Grant, TrustKeys
from p0_ssh_agent.agent_access.jws_compact import SUPPORTED_ALGORITHMS, JwsMalformed, parse_compact, signature_valid
from p0_ssh_agent.agent_access.scoped_paths import PathRefused, clean_prefix, within

UCAN_VERSION = "0.10.0"
MAX_UCAN_BYTES = 16 * 1024
CLOCK_SKEW_SECONDS = 60
MAX_UCAN_LIFETIME_SECONDS = 86400
RESOURCE_SCHEME = "ssh://"
WILDCARD_ABILITY = "ssh/*"
KNOWN_ABILITIES = frozenset({command.ability for command in AccessCommand} | {WILDCARD_ABILITY})
CAVEAT_KEYS = frozenset({"provider", "host", "username", "path_prefix"})
# A DNS name (RFC 1123 labels): the resource's and caveat's host are compared with this agent's hostname.
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
_HOSTNAME = re.compile(rf"(?=.{{1,253}}\Z){_LABEL}(?:\.{_LABEL})*\Z")
# A login name as useradd accepts it, bounded: the account itself is looked up and judged later (eligibility.py).
_USERNAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}\Z")


class CapabilityRejected(ValueError):
    """The UCAN does not verify, or grants nothing usable; the message says why (never quoting the token)."""


def ucan_digest(token: str) -> str:
    """What a cosignature binds the UCAN by: "sha256:" and the hex digest of the token's ASCII text."""
    return "sha256:" + hashlib.sha256(token.encode("ascii")).hexdigest()


def _shown(value: object) -> str:
    """A hostile value in a message: repr'd (no control character reaches a log) and cut short."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def verify_ucan(token: str, keys: TrustKeys, *, audience: str, now: int) -> Capability:
    """The verified capability of `token` (module docstring), or CapabilityRejected."""
    try:
        jws = parse_compact(token, max_bytes=MAX_UCAN_BYTES)
    except JwsMalformed as exc:
        raise CapabilityRejected(f"the UCAN is malformed: {exc}") from None
    header, payload = jws.header, jws.payload
    algorithm = header.get("alg")
    if algorithm not in SUPPORTED_ALGORITHMS:
        raise CapabilityRejected(
            f"the UCAN's alg {_shown(algorithm)} is refused (only {', '.join(SUPPORTED_ALGORITHMS)})"
        )
    if header.get("typ") != "JWT":
        raise CapabilityRejected('the UCAN\'s header must have "typ": "JWT"')
    if extra := sorted(set(header) - {"alg", "typ"}):
        raise CapabilityRejected(f"the UCAN's header has members this agent does not accept: {_shown(extra)}")
    issuer = payload.get("iss")
    trusted = keys.issuers.get(issuer) if isinstance(issuer, str) else None
    if trusted is None:
        raise CapabilityRejected(f"the UCAN's issuer {_shown(issuer)} is not a configured issuer")
    if algorithm != trusted.algorithm:
        raise CapabilityRejected(
            f"the UCAN is signed with {algorithm} but its issuer is configured for {trusted.algorithm}"
        )
    if not signature_valid(jws, trusted.algorithm, trusted.public_key):
        raise CapabilityRejected("the UCAN's signature does not verify with its issuer's key")
    return _checked_claims(payload, issuer=trusted.key_id, audience=audience, now=now, digest=ucan_digest(token))


def _checked_claims(payload: dict[str, object], *, issuer: str, audience: str, now: int, digest: str) -> Capability:
    if payload.get("ucv") != UCAN_VERSION:
        raise CapabilityRejected(f"the UCAN's version (ucv) is {_shown(payload.get('ucv'))}, not {UCAN_VERSION!r}")
    if payload.get("aud") != audience:
        raise CapabilityRejected(f"the UCAN's audience is not this host (expected {audience!r})")
    proofs = payload.get("prf", [])
    if not isinstance(proofs, list):
        raise CapabilityRejected("the UCAN's prf must be a list")
    if proofs:
        raise CapabilityRejected("the UCAN has proofs (prf): delegation chains are refused")
    nonce = payload.get("nnc", "")
    if not isinstance(nonce, str):
        raise CapabilityRejected("the UCAN's nnc must be a string")
    expires = payload.get("exp")
    if not isinstance(expires, int) or isinstance(expires, bool):
        raise CapabilityRejected("the UCAN's exp must be an integer (a UCAN that never expires is refused)")
    not_before: int | None = None
    if "nbf" in payload:
        raw_not_before = payload["nbf"]
        if not isinstance(raw_not_before, int) or isinstance(raw_not_before, bool):
            raise CapabilityRejected("the UCAN's nbf must be an integer when present")
        not_before = raw_not_before
    _check_time(not_before, expires, now)
    return Capability(
        issuer=issuer,
        audience=audience,
        not_before=not_before,
        expires=expires,
        grants=_grants(payload.get("cap")),
        digest=digest,
        nonce=nonce,
    )


def _check_time(not_before: int | None, expires: int, now: int) -> None:
    if not_before is not None and expires <= not_before:
        raise CapabilityRejected("the UCAN's exp is not after its nbf")
    start = not_before if not_before is not None else now
    if expires - start > MAX_UCAN_LIFETIME_SECONDS:
        raise CapabilityRejected(
            f"the UCAN's lifetime too long: {expires - start} s, at most {MAX_UCAN_LIFETIME_SECONDS} s are accepted"
        )
    if not_before is not None and now < not_before - CLOCK_SKEW_SECONDS:
        raise CapabilityRejected(f"the UCAN is not yet valid (nbf is {not_before - now} s from now)")
    if now >= expires + CLOCK_SKEW_SECONDS:
        raise CapabilityRejected(f"the UCAN expired {now - expires} s ago")


def _grants(capabilities: object) -> tuple[Grant, ...]:
    if not isinstance(capabilities, dict):
        raise CapabilityRejected("the UCAN's cap must be an object of resources")
    grants: list[Grant] = []
    for resource, abilities in capabilities.items():
        if not resource.startswith(RESOURCE_SCHEME):
            continue  # another provider's resource: not ours to judge, and it grants nothing here
        host = resource[len(RESOURCE_SCHEME) :]
        if not _HOSTNAME.match(host):
            raise CapabilityRejected(f"the UCAN's resource {_shown(resource)} is not ssh://<hostname>")
        if not isinstance(abilities, dict):
            raise CapabilityRejected(f"the UCAN's cap[{_shown(resource)}] must be an object of abilities")
        for ability, caveats in abilities.items():
            if ability not in KNOWN_ABILITIES:
                continue  # forward compatible: an ability this agent does not know grants nothing here
            where = f"cap[{_shown(resource)}][{ability!r}]"
            if not isinstance(caveats, list) or not caveats:
                raise CapabilityRejected(f"the UCAN's {where} must be a non-empty list of caveats")
            grants.extend(_grant(ability, host, caveat, f"{where}[{index}]") for index, caveat in enumerate(caveats))
    if not grants:
        raise CapabilityRejected("the UCAN grants nothing this agent can use (no ssh:// ability it knows)")
    return tuple(grants)


def _grant(ability: str, host: str, caveat: object, where: str) -> Grant:
    if not isinstance(caveat, dict) or not caveat:
        raise CapabilityRejected(
            f"the UCAN's {where} must be a non-empty caveat object (an empty one restricts nothing)"
        )
    if unknown := sorted(set(caveat) - CAVEAT_KEYS):
        raise CapabilityRejected(
            f"the UCAN's {where} has constraints this agent does not understand: {_shown(unknown)} (refused: "
            "it could be a restriction that would not be applied)"
        )
    if missing := sorted(CAVEAT_KEYS - set(caveat)):
        raise CapabilityRejected(f"the UCAN's {where} lacks {', '.join(missing)}")
    if caveat["provider"] != "ssh":
        raise CapabilityRejected(f'the UCAN\'s {where} provider must be "ssh"')
    if caveat["host"] != host:
        raise CapabilityRejected(f"the UCAN's {where} host is not its resource's host ({host!r})")
    username = caveat["username"]
    if not isinstance(username, str) or not _USERNAME.match(username):
        raise CapabilityRejected(f"the UCAN's {where} username {_shown(username)} is not a login name")
    prefix = caveat["path_prefix"]
    if not isinstance(prefix, str):
        raise CapabilityRejected(f"the UCAN's {where} path_prefix must be a string")
    try:
        clean_prefix(prefix)
    except PathRefused as exc:
        raise CapabilityRejected(f"the UCAN's {where}: {exc}") from None
    return Grant(ability=ability, host=host, username=username, path_prefix=prefix)


def covering_grant(
    capability: Capability, command: AccessCommand, *, host: str, username: str, paths: tuple[str, ...]
) -> Grant | None:
    """The first grant for `command` (or "ssh/*") on `host` as `username` under whose path_prefix every one of
    `paths` lies, compared on components; None when no grant covers the request."""
    for grant in capability.grants:
        if grant.ability not in (command.ability, WILDCARD_ABILITY):
            continue
        if grant.host != host or grant.username != username:
            continue
        try:
            if all(within(path, grant.path_prefix) for path in paths):
                return grant
        except PathRefused:
            return None  # a path that is not clean is covered by nothing
    return None
