"""ForwardedRequest parsing (§5.1, §5.2), header redaction, and the ForwardedResponse shape (§5.4) key for key."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p0_ssh_agent.protocol.forwarded import (
    NO_COMMAND_MESSAGE,
    CommandResult,
    ForwardedRequest,
    InvalidParams,
    forwarded_response,
    parse_forwarded_request,
    redact_headers,
)

NOW = datetime(2025, 8, 13, 5, 0, 0, 123456, tzinfo=UTC)
CLIENT = "acme:3f2c:ssh"

# The §5.1 wire example, as braekhus sends it.
WIRE_PARAMS: dict[str, object] = {
    "path": "",
    "headers": {
        "content-type": "application/json",
        "content-length": "171",
        "host": "tunnel.internal:8081",
        "authorization": "Bearer eyJhbGciOiJFUzM4NCJ9.e30.c2ln",
    },
    "method": "POST",
    "params": {},
    "data": {
        "command": "provisionAuthorizedKeys",
        "userName": "alice",
        "action": "grant",
        "requestId": "req12345",
        "publicKey": "ssh-ed25519 AAAAC3Nz alice@example.com",
    },
    "options": {"timeoutMillis": 4000},
}


def test_parses_the_upstream_wire_example() -> None:
    request = parse_forwarded_request(WIRE_PARAMS)
    assert request.method == "POST"
    assert request.path == ""
    assert request.params == {}
    assert request.headers["host"] == "tunnel.internal:8081"
    assert request.data == WIRE_PARAMS["data"]
    assert request.timeout_millis == 4000
    assert request.command == "provisionAuthorizedKeys"


def test_missing_members_take_defaults() -> None:
    request = parse_forwarded_request({})
    assert request == ForwardedRequest(headers={}, method="", path="", params={}, data=None, timeout_millis=None)
    assert request.command == ""


def test_null_members_take_defaults() -> None:
    request = parse_forwarded_request(
        {"headers": None, "method": None, "path": None, "params": None, "data": None, "options": None}
    )
    assert (request.headers, request.method, request.path, request.params) == ({}, "", "", {})
    assert request.timeout_millis is None


def test_options_without_timeout() -> None:
    assert parse_forwarded_request({"options": {}}).timeout_millis is None


@pytest.mark.parametrize("params", [None, [], "call", 3, True])
def test_params_must_be_an_object(params: object) -> None:
    with pytest.raises(InvalidParams, match="params must be an object"):
        parse_forwarded_request(params)


def test_invalid_params_is_a_value_error() -> None:
    assert issubclass(InvalidParams, ValueError)


@pytest.mark.parametrize(
    ("member", "value", "field"),
    [
        ("method", 1, "method"),
        ("method", ["POST"], "method"),
        ("path", {}, "path"),
        ("params", "a=b", "params.params"),
        ("params", [1], "params.params"),
        ("headers", "content-type: x", "headers"),
        ("headers", ["a"], "headers"),
        ("headers", {"x-a": {"nested": 1}}, "x-a"),
        ("headers", {"x-a": ["ok", 1]}, "x-a"),
        ("headers", {"x-a": True}, "x-a"),
        ("headers", {"x-a": None}, "x-a"),
        ("options", "fast", "options"),
        ("options", {"timeoutMillis": 0}, "timeoutMillis"),
        ("options", {"timeoutMillis": -5}, "timeoutMillis"),
        ("options", {"timeoutMillis": 1.5}, "timeoutMillis"),
        ("options", {"timeoutMillis": "4000"}, "timeoutMillis"),
        ("options", {"timeoutMillis": True}, "timeoutMillis"),
    ],
)
def test_wrong_member_types_name_the_field(member: str, value: object, field: str) -> None:
    with pytest.raises(InvalidParams, match=field):
        parse_forwarded_request({member: value})


def test_header_values_may_be_strings_or_lists() -> None:
    # braekhus (Node) sends strings, and arrays for repeated headers such as set-cookie (§5.1).
    request = parse_forwarded_request({"headers": {"Set-Cookie": ["a=1", "b=2"], "X-Count": 3, "Accept": "*/*"}})
    assert request.headers == {"set-cookie": ["a=1", "b=2"], "x-count": "3", "accept": "*/*"}


def test_data_is_kept_as_sent() -> None:
    for data in ("text body", {"type": "Buffer", "data": [1, 2]}, [1, 2], 5, {}):
        assert parse_forwarded_request({"data": data}).data == data


# --- command selection (§5.2) -------------------------------------------------------------------------------------


def _command(params: dict[str, object]) -> str:
    return parse_forwarded_request(params).command


def test_command_comes_from_data() -> None:
    assert _command({"data": {"command": "provisionUser"}}) == "provisionUser"


def test_data_command_wins_over_a_top_level_command() -> None:
    assert _command({"command": "listUsers", "data": {"command": "provisionUser"}}) == "provisionUser"


def test_top_level_command_is_the_tolerant_fallback() -> None:
    # One intermediate Go version read params.command (§5.1).
    assert _command({"command": "listUsers", "data": {"userName": "a"}}) == "listUsers"
    assert _command({"command": "listUsers"}) == "listUsers"


@pytest.mark.parametrize("data", [None, {}, "provisionUser", ["provisionUser"], {"command": 5}, {"command": None}])
def test_no_command(data: object) -> None:
    assert _command({"data": data}) == ""


def test_non_string_top_level_command_is_ignored() -> None:
    assert _command({"command": 7, "data": {}}) == ""


# --- redaction -------------------------------------------------------------------------------------------------------


def test_redacts_credentials_and_keeps_the_rest() -> None:
    headers: dict[str, str | list[str]] = {
        "authorization": "Bearer abc",
        "Proxy-Authorization": "Basic dXNlcjpwYXNz",
        "cookie": "session=1",
        "set-cookie": ["a=1", "b=2"],
        "x-api-key": "k",
        "x-auth-token": "t",
        "x-client-secret": "s",
        "content-type": "application/json",
        "host": "tunnel:8081",
    }
    redacted = redact_headers(headers)
    for name in ("authorization", "Proxy-Authorization", "cookie", "set-cookie", "x-api-key"):
        assert redacted[name] == "[REDACTED]"
    assert redacted["x-auth-token"] == redacted["x-client-secret"] == "[REDACTED]"
    assert redacted["content-type"] == "application/json"
    assert redacted["host"] == "tunnel:8081"
    assert headers["authorization"] == "Bearer abc"  # the input is not modified
    assert "abc" not in json.dumps(redacted)


def test_redaction_of_a_parsed_request_hides_the_callers_authorization() -> None:
    # braekhus forwards the caller's authorization header to the agent (§12 item 13).
    request = parse_forwarded_request(WIRE_PARAMS)
    assert "eyJ" not in json.dumps(redact_headers(request.headers))


# --- response shape (§5.4) -------------------------------------------------------------------------------------------


def test_success_shape_matches_upstream_key_for_key() -> None:
    result = CommandResult(True, message="SSH public key added", output="line")
    body = forwarded_response(result, client_id=CLIENT, command="provisionAuthorizedKeys", now=NOW)
    assert json.dumps(body) == json.dumps(
        {
            "headers": {"content-type": "application/json"},
            "status": 200,
            "statusText": "OK",
            "data": {
                "success": True,
                "message": "SSH public key added",
                "client_id": CLIENT,
                "command": "provisionAuthorizedKeys",
                "timestamp": "2025-08-13T05:00:00Z",
                "status": "completed",
                "output": "line",
            },
        }
    )


def test_failure_shape_matches_upstream_key_for_key() -> None:
    # message and output are dropped on failure, exactly as the Go agent does.
    result = CommandResult(False, message="ignored", error="invalid username format", output="ignored too")
    body = forwarded_response(result, client_id=CLIENT, command="provisionUser", now=NOW)
    assert json.dumps(body) == json.dumps(
        {
            "headers": {"content-type": "application/json"},
            "status": 500,
            "statusText": "Internal Server Error",
            "data": {
                "success": False,
                "error": "invalid username format",
                "client_id": CLIENT,
                "command": "provisionUser",
                "timestamp": "2025-08-13T05:00:00Z",
                "status": "failed",
            },
        }
    )


@pytest.mark.parametrize("output", [None, ""])
def test_output_only_when_non_empty(output: str | None) -> None:
    body = forwarded_response(CommandResult(True, "m", output=output), client_id=CLIENT, command="c", now=NOW)
    assert isinstance(body["data"], dict)
    assert "output" not in body["data"]


def test_failure_with_empty_error_keeps_the_error_key() -> None:
    body = forwarded_response(CommandResult(False), client_id=CLIENT, command="provisionCAKeys", now=NOW)
    assert body["data"] == {
        "success": False,
        "error": "",
        "client_id": CLIENT,
        "command": "provisionCAKeys",
        "timestamp": "2025-08-13T05:00:00Z",
        "status": "failed",
    }


def test_no_command_result() -> None:
    body = forwarded_response(CommandResult(True, NO_COMMAND_MESSAGE), client_id=CLIENT, command="", now=NOW)
    assert body["data"] == {
        "success": True,
        "message": "Request logged - no command specified",
        "client_id": CLIENT,
        "command": "",
        "timestamp": "2025-08-13T05:00:00Z",
        "status": "completed",
    }


@pytest.mark.parametrize(
    ("status", "text"), [(403, "Forbidden"), (503, "Service Unavailable"), (409, "Conflict"), (299, "Unknown")]
)
def test_http_status_override_and_its_reason(status: int, text: str) -> None:
    body = forwarded_response(
        CommandResult(False, error="denied", http_status=status), client_id=CLIENT, command="c", now=NOW
    )
    assert (body["status"], body["statusText"]) == (status, text)
    assert isinstance(body["data"], dict)
    assert body["data"]["status"] == "failed"


@pytest.mark.parametrize("status", [0, 99, 600, -1])
def test_http_status_must_be_an_http_code(status: int) -> None:
    with pytest.raises(ValueError, match="http_status"):
        CommandResult(False, http_status=status)


def test_timestamp_is_utc_whole_seconds_with_z() -> None:
    local = datetime(2025, 8, 13, 7, 0, 59, 999999, tzinfo=timezone(timedelta(hours=2)))
    body = forwarded_response(CommandResult(True), client_id=CLIENT, command="c", now=local)
    assert isinstance(body["data"], dict)
    assert body["data"]["timestamp"] == "2025-08-13T05:00:59Z"


def test_naive_timestamp_is_taken_as_utc() -> None:
    body = forwarded_response(CommandResult(True), client_id=CLIENT, command="c", now=datetime(2025, 1, 2, 3, 4, 5))
    assert isinstance(body["data"], dict)
    assert body["data"]["timestamp"] == "2025-01-02T03:04:05Z"


@given(st.booleans(), st.text(), st.text(), st.none() | st.text())
def test_response_data_keys_are_always_in_upstream_order(
    success: bool, message: str, error: str, output: str | None
) -> None:
    result = CommandResult(success, message, error, output)
    body = forwarded_response(result, client_id=CLIENT, command="c", now=NOW)
    assert list(body) == ["headers", "status", "statusText", "data"]
    data = body["data"]
    assert isinstance(data, dict)
    middle = ["message"] if success else ["error"]
    tail = ["output"] if success and output else []
    assert list(data) == ["success", *middle, "client_id", "command", "timestamp", "status", *tail]
    json.dumps(body, allow_nan=False)
