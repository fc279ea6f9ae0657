"""JSON-RPC 2.0 framing: every rejection path of parse_frame, exact id echo, and property tests that hostile
input never raises and always yields an answer that is itself a valid JSON-RPC error response."""

from __future__ import annotations

import json
import tracemalloc

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p0_ssh_agent.protocol import jsonrpc
from p0_ssh_agent.protocol.jsonrpc import (
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_FRAME_BYTES,
    MAX_FRAME_VALUES,
    MAX_NESTING,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    Invalid,
    Notification,
    Request,
    Response,
    RpcError,
    encode_error,
    encode_request,
    encode_result,
    parse_frame,
)

ERROR_CODES = {PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS, INTERNAL_ERROR}


def error_reply(incoming: jsonrpc.Incoming) -> Response:
    """The reply an Invalid carries, parsed back: it must be a well-formed error response."""
    assert isinstance(incoming, Invalid)
    assert incoming.reply is not None, incoming.reason
    parsed = parse_frame(incoming.reply)
    assert isinstance(parsed, Response), parsed
    assert parsed.error is not None
    assert parsed.result is None
    raw = json.loads(incoming.reply)
    assert raw["jsonrpc"] == "2.0"
    assert "result" not in raw
    return parsed


def assert_error(text: str | bytes, code: int, reply_id: jsonrpc.JsonId = None) -> Invalid:
    incoming = parse_frame(text)
    reply = error_reply(incoming)
    assert reply.error is not None
    assert reply.error.code == code
    assert reply.id == reply_id
    assert type(reply.id) is type(reply_id)
    assert isinstance(incoming, Invalid)
    return incoming


# --- accepted shapes -------------------------------------------------------------------------------------------


def test_request_with_integer_id() -> None:
    frame = '{"jsonrpc":"2.0","id":42,"method":"call","params":{"path":""}}'
    assert parse_frame(frame) == Request(42, "call", {"path": ""})


def test_request_with_string_and_null_ids() -> None:
    assert parse_frame('{"jsonrpc":"2.0","id":"abc","method":"m"}') == Request("abc", "m", None)
    assert parse_frame('{"jsonrpc":"2.0","id":null,"method":"m","params":[1]}') == Request(None, "m", [1])


def test_notification_has_no_id_member() -> None:
    assert parse_frame('{"jsonrpc":"2.0","method":"ping","params":{}}') == Notification("ping", {})


def test_result_response() -> None:
    assert parse_frame('{"jsonrpc":"2.0","id":1,"result":{"ok":true}}') == Response(1, {"ok": True}, None)
    # A null result is still a result.
    assert parse_frame('{"jsonrpc":"2.0","id":"x","result":null}') == Response("x", None, None)


def test_error_response() -> None:
    frame = '{"jsonrpc":"2.0","id":7,"error":{"code":-32601,"message":"nope","data":{"why":1}}}'
    assert parse_frame(frame) == Response(7, None, RpcError(-32601, "nope", {"why": 1}))


def test_error_response_with_null_id() -> None:
    frame = '{"jsonrpc":"2.0","id":null,"error":{"code":-32700,"message":"parse error"}}'
    assert parse_frame(frame) == Response(None, None, RpcError(-32700, "parse error"))


def test_binary_frames_are_ignored_without_reply() -> None:
    incoming = parse_frame(b'{"jsonrpc":"2.0","id":1,"method":"call"}')
    assert isinstance(incoming, Invalid)
    assert incoming.reply is None  # braekhus ignores binary frames; so does the agent
    assert "binary" in incoming.reason


# --- rejected: size, syntax, depth ------------------------------------------------------------------------------


def test_oversized_frame_is_invalid_request_with_null_id() -> None:
    padding = "x" * MAX_FRAME_BYTES
    assert_error('{"jsonrpc":"2.0","id":1,"method":"m","params":["' + padding + '"]}', INVALID_REQUEST)


def test_size_limit_counts_utf8_bytes_not_characters() -> None:
    # 600k two-byte characters: under the limit in characters, over it in bytes.
    frame = '{"jsonrpc":"2.0","id":1,"method":"m","params":["' + "é" * 600_000 + '"]}'
    assert len(frame) < MAX_FRAME_BYTES
    assert_error(frame, INVALID_REQUEST)


def test_frame_exactly_at_the_limit_is_parsed() -> None:
    head, tail = '{"jsonrpc":"2.0","id":1,"method":"m","params":["', '"]}'
    frame = head + "x" * (MAX_FRAME_BYTES - len(head) - len(tail)) + tail
    assert len(frame.encode()) == MAX_FRAME_BYTES
    assert isinstance(parse_frame(frame), Request)


@pytest.mark.parametrize(
    "frame",
    [
        "",
        "{",
        "not json",
        '{"jsonrpc":"2.0","id":1,"method":"m"} trailing',
        "{'jsonrpc':'2.0'}",
    ],
)
def test_bad_json_is_parse_error(frame: str) -> None:
    assert_error(frame, PARSE_ERROR)


def test_duplicate_keys_are_a_parse_error() -> None:
    # A proxy that keeps the first "method" and an agent that keeps the last would disagree on the request.
    assert_error('{"jsonrpc":"2.0","id":1,"method":"a","method":"b"}', PARSE_ERROR)
    assert_error('{"jsonrpc":"2.0","id":1,"method":"m","params":{"k":1,"k":2}}', PARSE_ERROR)


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity", "1e400", "-1e400"])
def test_non_finite_numbers_are_a_parse_error(constant: str) -> None:
    assert_error('{"jsonrpc":"2.0","id":1,"method":"m","params":[' + constant + "]}", PARSE_ERROR)


def test_nesting_at_the_limit_is_accepted_and_one_deeper_is_not() -> None:
    def nested(depth: int) -> str:
        # The envelope object is level 1, "params" adds the rest.
        inner = "[" * (depth - 1) + "]" * (depth - 1)
        return '{"jsonrpc":"2.0","id":1,"method":"m","params":' + inner + "}"

    assert isinstance(parse_frame(nested(jsonrpc.MAX_NESTING)), Request)
    assert_error(nested(jsonrpc.MAX_NESTING + 1), PARSE_ERROR)


def test_very_deep_nesting_is_rejected_before_json_recursion() -> None:
    # 200k levels would overflow json's recursion (RecursionError) if it ever reached json.loads; with that many
    # brackets the value cap refuses them first, without a character-by-character scan.
    assert_error("[" * 200_000 + "]" * 200_000, INVALID_REQUEST)
    assert_error('{"a":' * 100_000 + "1" + "}" * 100_000, INVALID_REQUEST)
    # Under the value cap, the nesting limit is what refuses.
    assert_error("[" * (MAX_NESTING + 1) + "]" * (MAX_NESTING + 1), PARSE_ERROR)
    assert_error('{"a":' * (MAX_NESTING + 1) + "1" + "}" * (MAX_NESTING + 1), PARSE_ERROR)


def test_brackets_inside_strings_do_not_count_as_nesting() -> None:
    brackets = "[{" * 500 + '\\"' + "]}" * 3
    frame = '{"jsonrpc":"2.0","id":1,"method":"m","params":["' + brackets + '"]}'
    assert parse_frame(frame) == Request(1, "m", ["[{" * 500 + '"' + "]}" * 3])


# --- rejected: envelope ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("frame", ["1", '"call"', "null", "true"])
def test_non_object_is_invalid_request(frame: str) -> None:
    assert_error(frame, INVALID_REQUEST)


@pytest.mark.parametrize("frame", ["[]", '[{"jsonrpc":"2.0","id":1,"method":"m"}]'])
def test_batches_are_invalid_requests(frame: str) -> None:
    assert_error(frame, INVALID_REQUEST)


@pytest.mark.parametrize("version", ['"1.0"', "2.0", "2", "null", '"2.0 "'])
def test_wrong_jsonrpc_version_echoes_a_valid_id(version: str) -> None:
    assert_error('{"jsonrpc":' + version + ',"id":5,"method":"m"}', INVALID_REQUEST, 5)
    assert_error('{"jsonrpc":' + version + ',"id":"s","method":"m"}', INVALID_REQUEST, "s")


def test_missing_jsonrpc_member() -> None:
    assert_error('{"id":3,"method":"m"}', INVALID_REQUEST, 3)


@pytest.mark.parametrize("bad_id", ["true", "false", "1.5", "1.0", "{}", "[1]"])
def test_id_of_wrong_type_is_invalid_with_null_id(bad_id: str) -> None:
    assert_error('{"jsonrpc":"2.0","id":' + bad_id + ',"method":"m"}', INVALID_REQUEST, None)


@pytest.mark.parametrize("method", ["1", '""', "null", '["call"]'])
def test_method_must_be_a_non_empty_string(method: str) -> None:
    assert_error('{"jsonrpc":"2.0","id":9,"method":' + method + "}", INVALID_REQUEST, 9)


@pytest.mark.parametrize("params", ['"text"', "3", "true"])
def test_params_must_be_structured(params: str) -> None:
    assert_error('{"jsonrpc":"2.0","id":9,"method":"m","params":' + params + "}", INVALID_REQUEST, 9)


def test_request_carrying_a_result_is_invalid() -> None:
    assert_error('{"jsonrpc":"2.0","id":2,"method":"m","result":1}', INVALID_REQUEST, 2)


@pytest.mark.parametrize(
    "frame",
    [
        '{"jsonrpc":"2.0","id":1,"result":1,"error":{"code":1,"message":"x"}}',  # both
        '{"jsonrpc":"2.0","id":1}',  # neither
        '{"jsonrpc":"2.0","result":1}',  # no id
        '{"jsonrpc":"2.0","id":1,"error":"boom"}',
        '{"jsonrpc":"2.0","id":1,"error":{"code":"1","message":"x"}}',
        '{"jsonrpc":"2.0","id":1,"error":{"code":true,"message":"x"}}',
        '{"jsonrpc":"2.0","id":1,"error":{"code":1}}',
    ],
)
def test_malformed_responses_are_dropped_without_reply(frame: str) -> None:
    # Answering a bad response could start an error ping-pong between two peers; drop it.
    incoming = parse_frame(frame)
    assert isinstance(incoming, Invalid)
    assert incoming.reply is None


# --- encoding ----------------------------------------------------------------------------------------------------


def test_encode_request_is_compact_and_versioned() -> None:
    assert encode_request(1, "setClientId", {"clientId": "a:b:ssh"}) == (
        '{"jsonrpc":"2.0","id":1,"method":"setClientId","params":{"clientId":"a:b:ssh"}}'
    )


@pytest.mark.parametrize("request_id", [0, 42, 2**63 + 1, -1, "42", "", "ünïcode", None])
def test_ids_are_echoed_exactly(request_id: jsonrpc.JsonId) -> None:
    for frame in (encode_result(request_id, {"ok": True}), encode_error(request_id, INTERNAL_ERROR, "x")):
        parsed = parse_frame(frame)
        assert isinstance(parsed, Response)
        assert parsed.id == request_id
        assert type(parsed.id) is type(request_id)  # "42" stays a string, 42 stays an int


def test_encode_result_shape() -> None:
    assert encode_result(42, {"status": 200}) == '{"jsonrpc":"2.0","id":42,"result":{"status":200}}'


def test_encode_error_leaves_out_absent_data() -> None:
    assert encode_error(1, METHOD_NOT_FOUND, 'method "x" not found') == (
        '{"jsonrpc":"2.0","id":1,"error":{"code":-32601,"message":"method \\"x\\" not found"}}'
    )
    assert json.loads(encode_error(1, INVALID_PARAMS, "bad", {"field": "userName"}))["error"]["data"] == {
        "field": "userName"
    }


def test_non_ascii_is_sent_as_utf8_text() -> None:
    assert encode_result("é", "ü") == '{"jsonrpc":"2.0","id":"é","result":"ü"}'


def test_lone_surrogate_id_is_echoed_as_an_escape() -> None:
    # "\ud800" is legal JSON but not encodable as UTF-8; the echo must still be sendable and equal.
    incoming = parse_frame('{"jsonrpc":"2.0","id":"\\ud800","method":"m"}')
    assert isinstance(incoming, Request)
    frame = encode_result(incoming.id, None)
    frame.encode("utf-8")
    assert parse_frame(frame) == Response("\ud800", None, None)


# --- properties ------------------------------------------------------------------------------------------------------

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | st.text()
json_values = st.recursive(
    json_scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
envelope_keys = st.sampled_from(["jsonrpc", "id", "method", "params", "result", "error"])
envelopes = st.dictionaries(envelope_keys, json_values | st.just("2.0"), max_size=6)


def check_total(incoming: jsonrpc.Incoming) -> None:
    assert isinstance(incoming, Request | Notification | Response | Invalid)
    if isinstance(incoming, Invalid) and incoming.reply is not None:
        reply = error_reply(incoming)
        assert reply.error is not None and reply.error.code in ERROR_CODES


@settings(max_examples=400)
@given(st.text())
def test_parse_frame_never_raises_on_text(text: str) -> None:
    check_total(parse_frame(text))


@settings(max_examples=200)
@given(st.binary())
def test_parse_frame_never_raises_on_bytes(data: bytes) -> None:
    incoming = parse_frame(data)
    assert isinstance(incoming, Invalid) and incoming.reply is None


@settings(max_examples=400)
@given(envelopes)
def test_parse_frame_never_raises_on_envelope_shaped_objects(message: dict[str, object]) -> None:
    check_total(parse_frame(json.dumps(message)))


@settings(max_examples=200)
@given(envelopes, st.integers(min_value=0, max_value=len('{"jsonrpc":"2.0"}')))
def test_parse_frame_never_raises_on_truncated_frames(message: dict[str, object], cut: int) -> None:
    check_total(parse_frame(json.dumps(message)[:cut]))


@settings(max_examples=300)
@given(
    st.integers() | st.text(),
    st.text(min_size=1),
    st.dictionaries(st.text(max_size=8), json_values, max_size=4) | st.lists(json_values, max_size=4),
)
def test_valid_requests_round_trip_and_replies_echo_the_id(request_id: int | str, method: str, params: object) -> None:
    incoming = parse_frame(encode_request(request_id, method, params))
    assert incoming == Request(request_id, method, params)
    reply = parse_frame(encode_result(request_id, params))
    assert reply == Response(request_id, params, None)


# --- what a parsed frame may hold (issue 11 item 7) -----------------------------------------------------------------


def _call_with(pad: str) -> str:
    return '{"jsonrpc":"2.0","id":1,"method":"call","params":{"data":{"command":"x","pad":' + pad + "}}}"


def test_a_frame_with_more_values_than_the_cap_is_refused_before_it_is_parsed() -> None:
    tracemalloc.start()
    try:
        incoming = assert_error(_call_with("[" + "[]," * MAX_FRAME_VALUES + "0]"), INVALID_REQUEST)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert incoming.reason == "too many values"
    assert peak < 1_000_000  # never parsed: parsed, these 30 KB would be about 1.3 MB of lists
    # Separators inside strings do not count: a long string full of commas is one value.
    assert isinstance(parse_frame(_call_with('"' + "a,b:c[d{" * (MAX_FRAME_VALUES // 2) + '"')), Request)


HOSTILE_SHAPES = {
    # Each packs as many Python objects (or as wide a string) into a frame as it can.
    "long ASCII string": '"' + "x" * (MAX_FRAME_BYTES - 200) + '"',
    "one emoji widens a long string": '"\U0001f600' + "x" * (MAX_FRAME_BYTES - 200) + '"',
    "an escaped emoji widens it too": '"\\ud83d\\ude00' + "x" * (MAX_FRAME_BYTES - 200) + '"',
    "empty objects": "[" + "{}," * (MAX_FRAME_VALUES // 2 - 20) + "0]",
    "empty lists": "[" + "[]," * (MAX_FRAME_VALUES // 2 - 20) + "0]",
    "lists in lists": "[" + "[[]]," * (MAX_FRAME_VALUES // 3 - 20) + "0]",
    "deep lists": "[" + ("[" * 60 + "]" * 60 + ",") * (MAX_FRAME_VALUES // 61 - 2) + "0]",
    "floats": "[" + "1e5," * (MAX_FRAME_VALUES - 20) + "0]",
    "short strings": "[" + '"ab",' * (MAX_FRAME_VALUES - 20) + "0]",
    "distinct keys": "{" + "".join(f'"k{i:x}":{{}},' for i in range(MAX_FRAME_VALUES // 3 - 20)) + '"z":0}',
    "wide keys": "{"
    + "".join(f'"{i:x}\U0001f600":"\U0001f600",' for i in range(MAX_FRAME_VALUES // 3 - 20))
    + '"z":0}',
}


@pytest.mark.parametrize("shape", HOSTILE_SHAPES)
def test_held_bytes_bounds_what_a_parsed_frame_keeps(shape: str) -> None:
    """The in-flight budget is spent by held_bytes: it must cover what the parsed request really keeps."""
    frame = _call_with(HOSTILE_SHAPES[shape])
    assert len(frame.encode()) <= MAX_FRAME_BYTES
    tracemalloc.start()
    try:
        incoming = parse_frame(frame)
        kept, _ = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert isinstance(incoming, Request), incoming
    assert kept <= incoming.held_bytes, (shape, kept, incoming.held_bytes)
