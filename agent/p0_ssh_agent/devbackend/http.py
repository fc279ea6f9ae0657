"""A deliberately small HTTP/1.1 server on trio streams, enough for the dev backend's proxy side.

One request per connection (`Connection: close`), bounded head (16 KiB) and body (100 kB, body-parser's default,
upstream-protocol.md §4). Bodies become `data` the way braekhus' Express parsers do: JSON for application/json,
text for text/plain, `{}` when there is none.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from functools import partial
from http import HTTPStatus
from urllib.parse import parse_qs, urlsplit

import trio

MAX_HEAD_BYTES = 16384
MAX_BODY_BYTES = 100_000
READ_TIMEOUT_SECONDS = 30.0


@dataclass(frozen=True)
class HttpRequest:
    method: str
    path: str
    query: dict[str, object]
    headers: dict[str, str]
    body: bytes
    peer: str = ""  # the client's IP address (the mint endpoints answer loopback only)

    def data(self) -> object:
        if not self.body:
            return {}
        kind = self.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            return json.loads(self.body)
        if kind.startswith("text/"):
            return self.body.decode("utf-8", "replace")
        return {}


@dataclass(frozen=True)
class HttpResponse:
    status: int
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""

    @classmethod
    def json(cls, status: int, value: object) -> HttpResponse:
        return cls(status, {"content-type": "application/json"}, json.dumps(value).encode())

    def encode(self) -> bytes:
        try:
            reason = HTTPStatus(self.status).phrase
        except ValueError:
            reason = "Unknown"
        headers = {k.lower(): v for k, v in self.headers.items() if k.lower() not in ("content-length", "connection")}
        lines = [f"HTTP/1.1 {self.status} {reason}"]
        lines += [f"{name}: {value}" for name, value in headers.items() if name != "transfer-encoding"]
        lines += [f"content-length: {len(self.body)}", "connection: close", "", ""]
        return "\r\n".join(lines).encode("latin-1") + self.body


class BadRequest(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


Handler = Callable[[HttpRequest], Awaitable[HttpResponse]]


async def _read_request(stream: trio.abc.Stream, peer: str = "") -> HttpRequest:
    buffer = bytearray()
    while b"\r\n\r\n" not in buffer:
        if len(buffer) > MAX_HEAD_BYTES:
            raise BadRequest(431, "request head too large")
        chunk = await stream.receive_some(4096)
        if not chunk:
            raise BadRequest(400, "connection closed before the request was complete")
        buffer += chunk
    head, _, rest = bytes(buffer).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    try:
        method, target, _version = lines[0].split(" ")
    except ValueError:
        raise BadRequest(400, "malformed request line") from None
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise BadRequest(400, "malformed header line")
        headers[name.strip().lower()] = value.strip()
    try:
        length = int(headers.get("content-length", "0"))
    except ValueError:
        raise BadRequest(400, "bad content-length") from None
    if length < 0:  # int() takes "-5"; slicing by it would silently drop the end of the body
        raise BadRequest(400, "bad content-length")
    if length > MAX_BODY_BYTES:
        raise BadRequest(413, "request entity too large")
    body = bytearray(rest)
    while len(body) < length:
        chunk = await stream.receive_some(length - len(body))
        if not chunk:
            raise BadRequest(400, "body shorter than content-length")
        body += chunk
    url = urlsplit(target)
    query: dict[str, object] = {
        k: (v[0] if len(v) == 1 else v) for k, v in parse_qs(url.query, keep_blank_values=True).items()
    }
    return HttpRequest(method, url.path, query, headers, bytes(body[:length]), peer)


async def _serve_one(handler: Handler, stream: trio.SocketStream) -> None:
    async with stream:
        try:
            with trio.fail_after(READ_TIMEOUT_SECONDS):
                request = await _read_request(stream, str(stream.socket.getpeername()[0]))
            try:
                response = await handler(request)
            except ValueError:  # a body that is not the JSON it claims to be
                response = HttpResponse.json(400, {"error": "malformed JSON body"})
        except BadRequest as exc:
            response = HttpResponse.json(exc.status, {"error": str(exc)})
        except (trio.TooSlowError, trio.BrokenResourceError):
            return
        try:
            await stream.send_all(response.encode())
        except trio.BrokenResourceError:
            return


async def serve_http(
    handler: Handler, host: str, port: int, *, task_status: trio.TaskStatus[int] = trio.TASK_STATUS_IGNORED
) -> None:
    listeners = await trio.open_tcp_listeners(port, host=host)
    bound = listeners[0].socket.getsockname()[1]
    async with trio.open_nursery() as nursery:
        nursery.start_soon(partial(trio.serve_listeners, partial(_serve_one, handler), listeners))
        task_status.started(bound)
