"""JSON-RPC 2.0 framing for the tunnel (pure: no I/O).

One JSON object per WebSocket text frame, no batches (upstream-protocol.md §3.1). `parse_frame` never raises:
anything it cannot accept becomes `Invalid`, carrying the error frame to send back (or None when the JSON-RPC
spec says not to answer). The reader can therefore feed it hostile bytes without a try block, and a bad frame
never closes the connection.

Each accepted request carries `held_bytes`, an upper bound on the memory its parsed form holds, computed from the
text before it is parsed: every string at STRING_BYTES_PER_CHAR per character (Python stores a string at the
width of its widest character) plus BYTES_PER_VALUE per JSON value. A frame may hold at most MAX_FRAME_VALUES
values, so no frame under MAX_FRAME_BYTES can parse into much more than itself (without that cap, a megabyte of
`[[]],` parses into 30 MiB of lists). The runtime spends its in-flight budget by `held_bytes`.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from typing import Any

MAX_FRAME_BYTES = 1_048_576
MAX_NESTING = 64
# Keys count as values. A real call has a few dozen (the forwarded headers, the request's fields).
MAX_FRAME_VALUES = 10_000
STRING_BYTES_PER_CHAR = 4
# The largest object one JSON value becomes, with its slot in the parent (an empty dict: 64 bytes, a list
# holding one empty list: 120 for two values) and the allocator's rounding; tests/test_protocol_jsonrpc.py measures
# hostile shapes against it.
BYTES_PER_VALUE = 128

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603

JsonId = int | str | None


@dataclass(frozen=True, slots=True)
class Request:
    id: JsonId
    method: str
    params: object
    # An upper bound on the memory `params` holds (module docstring); bookkeeping, not part of the message.
    held_bytes: int = field(default=0, compare=False)


@dataclass(frozen=True, slots=True)
class Notification:
    method: str
    params: object


@dataclass(frozen=True, slots=True)
class RpcError:
    code: int
    message: str
    data: object = None


@dataclass(frozen=True, slots=True)
class Response:
    id: JsonId
    result: object
    error: RpcError | None


@dataclass(frozen=True, slots=True)
class Invalid:
    reply: str | None
    reason: str


Incoming = Request | Notification | Response | Invalid


class DuplicateKeyError(ValueError):
    """A JSON object named one member twice (no_duplicate_keys); `key` is that member."""

    def __init__(self, key: str) -> None:
        super().__init__(f"duplicate key {key!r}")
        self.key = key


def no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """json.loads' object_pairs_hook that refuses a repeated member (also agent_access/jws_compact.py's)."""
    # Two values for one key would let a proxy and the agent read different requests from the same bytes.
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise DuplicateKeyError(key)
        result[key] = value
    return result


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _finite_float(text: str) -> float:
    # 1e400 parses to inf, which JSON cannot carry back out (and json.dumps would refuse later, far from here).
    value = float(text)
    if math.isinf(value):
        raise ValueError(f"number {text[:32]} is out of range")
    return value


def _nesting_depth(text: str) -> int:
    """Deepest bracket nesting outside strings; checked before json.loads so deep input cannot recurse."""
    if text.count("[") + text.count("{") <= MAX_NESTING:
        return 0  # cannot be too deep: skip the character-by-character scan for ordinary frames
    return nesting_depth(text)


def nesting_depth(text: str) -> int:
    """The deepest nesting of arrays and objects in JSON text, counted outside strings, without recursing (also
    agent_access/jws_compact.py's check before it parses a token's parts)."""
    depth = deepest = 0
    in_string = escaped = False
    for char in text:
        if in_string:
            if escaped:
                escaped = False
            elif char == "\\":
                escaped = True
            elif char == '"':
                in_string = False
        elif char == '"':
            in_string = True
        elif char in "[{":
            depth += 1
            deepest = max(deepest, depth)
        elif char in "]}":
            depth -= 1
    return deepest


# A JSON string literal (an unterminated one is left alone: the frame is then no JSON and json.loads refuses it).
_STRING_LITERAL = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_VALUE_STARTS = ",:[{"


def _value_count_bound(text: str) -> int:
    """At least the number of JSON values (keys included) in `text`: every value but the first follows a comma,
    a colon or an opening bracket. Counted in the raw text first (C speed; separators inside strings only make it
    larger); only a frame over the cap pays for removing its strings and counting again."""
    count = 1 + sum(text.count(char) for char in _VALUE_STARTS)
    if count <= MAX_FRAME_VALUES:
        return count
    skeleton = _STRING_LITERAL.sub('""', text)
    return 1 + sum(skeleton.count(char) for char in _VALUE_STARTS)


def _valid_id(value: object) -> bool:
    # bool is an int subclass in Python but not a JSON-RPC id; floats are discouraged by the spec and braekhus
    # (json-rpc-2.0) only issues integers.
    return value is None or isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))


def loads_strict(text: str) -> object:
    """json.loads that refuses duplicate keys, NaN/Infinity and nesting deeper than MAX_NESTING."""
    if _nesting_depth(text) > MAX_NESTING:
        raise ValueError(f"nesting deeper than {MAX_NESTING}")
    return json.loads(
        text, object_pairs_hook=no_duplicate_keys, parse_constant=_reject_constant, parse_float=_finite_float
    )


def parse_frame(text: str | bytes, *, max_bytes: int = MAX_FRAME_BYTES, max_values: int = MAX_FRAME_VALUES) -> Incoming:
    """Classify one WebSocket frame. Never raises; see the module docstring. The limits are the agent's own; the dev
    backend, which stands in for P0's tunnel server, passes that server's."""
    if isinstance(text, bytes | bytearray):
        # braekhus ignores binary frames ("Message in binary format is not supported"); so do we, silently.
        return Invalid(None, "binary frame ignored")
    # UTF-8 takes at most 4 bytes a character (a lone surrogate 3): only a frame that could be over is encoded.
    if len(text) > max_bytes or (4 * len(text) > max_bytes and len(text.encode("utf-8", "surrogatepass")) > max_bytes):
        return Invalid(encode_error(None, INVALID_REQUEST, f"frame larger than {max_bytes} bytes"), "oversized frame")
    values = _value_count_bound(text)
    if values > max_values:
        return Invalid(
            encode_error(None, INVALID_REQUEST, f"frame with more than {max_values} JSON values"),
            "too many values",
        )
    try:
        message = loads_strict(text)
    except (ValueError, RecursionError) as exc:
        return Invalid(encode_error(None, PARSE_ERROR, "parse error"), f"parse error: {exc}")
    if isinstance(message, list):
        return Invalid(encode_error(None, INVALID_REQUEST, "batches are not supported"), "batch")
    if not isinstance(message, dict):
        return Invalid(encode_error(None, INVALID_REQUEST, "invalid request"), "not an object")
    incoming = _classify(message)
    if isinstance(incoming, Request):
        held = STRING_BYTES_PER_CHAR * len(text) + BYTES_PER_VALUE * values
        return Request(incoming.id, incoming.method, incoming.params, held)
    return incoming


def _classify(message: dict[str, Any]) -> Incoming:
    has_id = "id" in message
    raw_id = message.get("id")
    reply_id = raw_id if _valid_id(raw_id) else None
    if message.get("jsonrpc") != "2.0":
        return _invalid(reply_id, 'missing or wrong "jsonrpc" member (must be "2.0")')
    if has_id and not _valid_id(raw_id):
        return _invalid(None, "id must be a string, an integer or null")
    if "method" in message:
        method = message["method"]
        if not isinstance(method, str) or not method:
            return _invalid(reply_id, "method must be a non-empty string")
        if "result" in message or "error" in message:
            return _invalid(reply_id, "a request carries no result or error")
        params = message.get("params")
        if params is not None and not isinstance(params, dict | list):
            return _invalid(reply_id, "params must be an object or an array")
        if not has_id:
            return Notification(method, params)
        return Request(raw_id, method, params)
    return _classify_response(message, has_id, reply_id)


def _classify_response(message: dict[str, Any], has_id: bool, reply_id: JsonId) -> Incoming:
    has_result, has_error = "result" in message, "error" in message
    if not has_id or has_result == has_error:
        # A malformed response must not be answered (that could ping-pong forever); just drop it.
        return Invalid(None, "response without id, or with both/neither result and error")
    if has_result:
        return Response(reply_id, message["result"], None)
    error = message["error"]
    if (
        not isinstance(error, dict)
        or not isinstance(error.get("code"), int)
        or isinstance(error.get("code"), bool)
        or not isinstance(error.get("message"), str)
    ):
        return Invalid(None, "malformed error object in response")
    return Response(reply_id, None, RpcError(error["code"], error["message"], error.get("data")))


def _invalid(reply_id: JsonId, reason: str) -> Invalid:
    return Invalid(encode_error(reply_id, INVALID_REQUEST, f"invalid request: {reason}"), reason)


def _dumps(value: object) -> str:
    text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    if text.isascii():  # the usual frame: nothing to check (isascii is one pass in C, without a copy)
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate (legal as a "\ud800" escape in the JSON we received, e.g. inside an id we echo) cannot
        # go out as UTF-8; escaped ASCII carries the same JSON value.
        return json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False)
    return text


def encode_request(id: int | str, method: str, params: object) -> str:
    """A request frame (compact JSON). `id` is echoed by the peer exactly as given."""
    return _dumps({"jsonrpc": "2.0", "id": id, "method": method, "params": params})


def encode_result(id: JsonId, result: object) -> str:
    """A success response frame; `id` is the request's id, unchanged (an int stays an int)."""
    return _dumps({"jsonrpc": "2.0", "id": id, "result": result})


def encode_error(id: JsonId, code: int, message: str, data: object = None) -> str:
    """An error response frame; `data` is left out when None."""
    error: dict[str, object] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _dumps({"jsonrpc": "2.0", "id": id, "error": error})
