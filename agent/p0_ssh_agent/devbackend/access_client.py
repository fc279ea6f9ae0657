"""A client of the dev backend's HTTP side: one POST, and one agent-access call made whole (`dev-backend call`).

send_access_request takes an ssh_* request body, mints a UCAN for it (POST /mint/ucan: its username, the host and
the path prefix given), puts it in the body, adds a cosignature when asked (POST /mint/cosign), then sends it to the
agent (POST /client/<clientId>) and returns the agent's status and answer: what docs/ai-agents.md shows step by
step with curl. The tokens go into the request only; they are never printed.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from urllib.parse import urlsplit

import trio

from p0_ssh_agent.errors import UsageError

MAX_ANSWER_BYTES = 8 * 1024 * 1024  # an agent's answer is at most one tunnel frame (1 MiB); far more is not ours
TIMEOUT_SECONDS = 130.0  # above the agent's own answer deadline (120 s), so its answer, not ours, ends a slow call


@dataclass(frozen=True)
class Answer:
    status: int
    body: object  # the JSON answer (None when there was no body)


async def http_post(base_url: str, path: str, body: object) -> Answer:
    """POST `body` as JSON to `base_url` + `path` (http:// only; the dev backend closes after one response)."""
    parts = urlsplit(base_url)
    if parts.scheme != "http" or not parts.hostname:
        raise UsageError(f"{base_url!r}: the dev backend's HTTP side is http://HOST:PORT")
    host, port = parts.hostname, parts.port or 80
    payload = json.dumps(body).encode()
    head = (
        f"POST {path} HTTP/1.1\r\nhost: {parts.netloc}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(payload)}\r\nconnection: close\r\n\r\n"
    )
    with trio.fail_after(TIMEOUT_SECONDS):
        stream = await trio.open_tcp_stream(host, port)
        async with stream:
            await stream.send_all(head.encode("latin-1") + payload)
            response = bytearray()
            while chunk := await stream.receive_some(65536):
                response += chunk
                if len(response) > MAX_ANSWER_BYTES:
                    raise UsageError(f"{base_url}{path}: an answer over {MAX_ANSWER_BYTES} bytes")
    status_line, _, rest = bytes(response).partition(b"\r\n")
    _, _, content = rest.partition(b"\r\n\r\n")
    try:
        status = int(status_line.split()[1])
        return Answer(status, json.loads(content) if content else None)
    except (IndexError, ValueError):
        raise UsageError(f"{base_url}{path}: not an HTTP answer with a JSON body") from None


async def mint(base_url: str, what: str, body: Mapping[str, object]) -> str:
    """The token POST /mint/<what> answers ("ucan" or "cosign"); UsageError with the backend's reason otherwise."""
    answer = await http_post(base_url, f"/mint/{what}", body)
    member = "ucan" if what == "ucan" else "cosignature"
    token = answer.body.get(member) if isinstance(answer.body, dict) else None
    if answer.status != 200 or not isinstance(token, str):
        reason = answer.body.get("error") if isinstance(answer.body, dict) else answer.body
        raise UsageError(f"POST /mint/{what}: HTTP {answer.status}: {reason}")
    return token


async def send_access_request(
    base_url: str,
    client_id: str,
    request: Mapping[str, object],
    *,
    host: str,
    path_prefix: str,
    abilities: Sequence[str],
    lifetime: int | None = None,
    cosign: bool = False,
) -> Answer:
    """Mint the UCAN (and the cosignature), send the request to the agent, and return its answer (module doc)."""
    username = request.get("username")
    if not isinstance(username, str):
        raise UsageError('the request needs its "username" (the account the operation runs as)')
    ucan_body: dict[str, object] = {
        "username": username,
        "host": host,
        "path_prefix": path_prefix,
        "abilities": list(abilities),
    }
    if lifetime is not None:
        ucan_body["lifetime"] = lifetime
    body = {**request, "ucan": await mint(base_url, "ucan", ucan_body)}
    if cosign:
        body["cosignature"] = await mint(base_url, "cosign", {"request": body, "audience": f"did:web:{host}"})
    return await http_post(base_url, f"/client/{client_id}", body)
