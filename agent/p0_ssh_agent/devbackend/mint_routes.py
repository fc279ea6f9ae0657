"""The dev backend's minting endpoints (`dev-backend --agent-access-keys DIR`, devbackend/access_keys.py): test
UCANs and step-up cosignatures made from local keys, so the docs, `make run` and a developer can drive agent access
(docs/ai-agents.md) without an issuer or an approver of their own. Callers on loopback only.

    POST /mint/ucan    {"username", "host", "path_prefix", "abilities": ["ssh/file/read", ...],
                        "lifetime": seconds (default 600), "audience": (default "did:web:<host>")}
                    -> {"ucan", "issuer", "audience", "expires"}
    POST /mint/cosign  {"request": <the ssh_* body to be sent, with its "ucan">, "ucan": (if the body has none),
                        "audience": (default "did:web:<the body's host>"), "lifetime": seconds (default 120)}
                    -> {"cosignature", "approver"}

The UCAN grants each ability under the one constraint {"provider": "ssh", host, username, path_prefix}. Values
are checked only as far as minting needs (types, sizes, known abilities): a developer may mint a token the agent
must refuse (a prefix of "/", another host), and the agent is the judge. The cosignature is of the request body as
the agent will parse it (agent_access/operations.py), so it binds exactly what the agent checks. Neither token is
ever logged or put in an error message.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.agent_access.access_model import Grant
from p0_ssh_agent.agent_access.capability import KNOWN_ABILITIES, MAX_UCAN_LIFETIME_SECONDS
from p0_ssh_agent.agent_access.cosign import MAX_COSIGN_SECONDS
from p0_ssh_agent.agent_access.minting import mint_cosignature, mint_ucan
from p0_ssh_agent.agent_access.operations import OperationInvalid, parse_operation
from p0_ssh_agent.config.values import is_loopback_host
from p0_ssh_agent.devbackend.access_keys import APPROVER_ALGORITHM, APPROVER_ID, ISSUER_ALGORITHM, AccessKeys
from p0_ssh_agent.devbackend.http import HttpRequest, HttpResponse

log = get_logger("p0_ssh_agent.devbackend")

DEFAULT_UCAN_SECONDS = 600
DEFAULT_COSIGN_SECONDS = 120
MAX_FIELD_CHARS = 4096
UCAN_MEMBERS = frozenset({"username", "host", "path_prefix", "abilities", "lifetime", "audience"})
COSIGN_MEMBERS = frozenset({"request", "ucan", "audience", "lifetime"})


class MintInvalid(ValueError):
    """A mint request that cannot be served; the message names the member (never a token)."""


class MintRoutes:
    def __init__(self, keys: AccessKeys, *, clock: Callable[[], float] = time.time) -> None:
        self.keys = keys
        self._clock = clock

    async def handle(self, request: HttpRequest) -> HttpResponse:
        """/mint/ucan and /mint/cosign; 403 for a caller that is not on loopback."""
        if not is_loopback_host(request.peer):
            return HttpResponse.json(403, {"error": "minting answers callers on loopback only"})
        route = {"/mint/ucan": self._ucan, "/mint/cosign": self._cosign}.get(request.path)
        if route is None:
            return HttpResponse.json(404, {"error": "not found: POST /mint/ucan or /mint/cosign"})
        if request.method != "POST":
            return HttpResponse.json(405, {"error": f"{request.path} takes POST"})
        body = request.data()
        if not isinstance(body, Mapping):
            return HttpResponse.json(400, {"error": "the body must be a JSON object (content-type: application/json)"})
        try:
            return HttpResponse.json(200, route(body))
        except MintInvalid as exc:
            return HttpResponse.json(400, {"error": str(exc)})

    def _ucan(self, body: Mapping[str, object]) -> dict[str, object]:
        _refuse_unknown(body, UCAN_MEMBERS)
        username, host, prefix = (_text(body, name) for name in ("username", "host", "path_prefix"))
        abilities = body.get("abilities")
        if not isinstance(abilities, list) or not abilities or not all(isinstance(a, str) for a in abilities):
            raise MintInvalid('abilities: a non-empty list of strings, e.g. ["ssh/file/read", "ssh/dir/list"]')
        if unknown := sorted(set(abilities) - KNOWN_ABILITIES):
            raise MintInvalid(
                f"abilities: unknown {', '.join(unknown)[:200]}; known: {', '.join(sorted(KNOWN_ABILITIES))}"
            )
        lifetime = _seconds(body, "lifetime", DEFAULT_UCAN_SECONDS, MAX_UCAN_LIFETIME_SECONDS)
        audience = _text(body, "audience") if "audience" in body else f"did:web:{host}"
        now = int(self._clock())
        grants = [Grant(ability, host, username, prefix) for ability in dict.fromkeys(abilities)]
        token = mint_ucan(
            self.keys.issuer_key,
            algorithm=ISSUER_ALGORITHM,
            issuer=self.keys.issuer,
            audience=audience,
            grants=grants,
            now=now,
            lifetime_seconds=lifetime,
        )
        log.info("minted_ucan", audience=audience, username=username, path_prefix=prefix, abilities=abilities)
        return {"ucan": token, "issuer": self.keys.issuer, "audience": audience, "expires": now + lifetime}

    def _cosign(self, body: Mapping[str, object]) -> dict[str, object]:
        _refuse_unknown(body, COSIGN_MEMBERS)
        request = body.get("request")
        if not isinstance(request, Mapping):
            raise MintInvalid(
                'request: the JSON object of the ssh_* request to cosign, e.g. {"command": "ssh_exec", ...}'
            )
        data = dict(request)
        if "ucan" in body:
            ucan = _text(body, "ucan", limit=64 * 1024)
            if data.setdefault("ucan", ucan) != ucan:
                raise MintInvalid("ucan: the request carries another UCAN; give one of the two")
        command = data.get("command")
        if not isinstance(command, str):
            raise MintInvalid("request.command: the ssh_* command, as the request to the agent will carry it")
        try:
            operation = parse_operation(command, data)
        except OperationInvalid as exc:
            raise MintInvalid(f"request: {exc.message}") from None
        if "audience" in body:
            audience = _text(body, "audience")
        elif operation.host:
            audience = f"did:web:{operation.host}"
        else:
            raise MintInvalid('audience: the request names no host, so give the agent\'s: "did:web:<its hostname>"')
        lifetime = _seconds(body, "lifetime", DEFAULT_COSIGN_SECONDS, MAX_COSIGN_SECONDS)
        cosignature = mint_cosignature(
            self.keys.approver_key,
            algorithm=APPROVER_ALGORITHM,
            key_id=APPROVER_ID,
            op=operation,
            audience=audience,
            ucan_token=operation.ucan,
            now=int(self._clock()),
            lifetime_seconds=lifetime,
        )
        log.info("minted_cosignature", audience=audience, command=command, request_id=operation.request_id)
        return {"cosignature": cosignature, "approver": APPROVER_ID}


def _refuse_unknown(body: Mapping[str, object], allowed: frozenset[str]) -> None:
    if unknown := sorted(str(name)[:40] for name in body if name not in allowed):
        raise MintInvalid(
            f"unknown member(s) {', '.join(unknown)[:200]}; this endpoint takes {', '.join(sorted(allowed))}"
        )


def _text(body: Mapping[str, object], name: str, *, limit: int = MAX_FIELD_CHARS) -> str:
    value = body.get(name)
    if not isinstance(value, str) or not value or len(value) > limit or not value.isprintable():
        raise MintInvalid(f"{name}: a non-empty printable string of at most {limit} characters")
    return value


def _seconds(body: Mapping[str, object], name: str, default: int, maximum: int) -> int:
    value = body.get(name, default)
    if isinstance(value, bool) or not isinstance(value, int) or not 0 < value <= maximum:
        raise MintInvalid(f"{name}: a whole number of seconds, 1..{maximum}")
    return value
