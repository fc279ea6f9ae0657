"""The JobKey of a parsed `call` (runtime/jobs.py): the command name parse_forwarded_request worked out, bounded;
hostile values become "-" and can at worst pick a lock name."""

from __future__ import annotations

import pytest

from p0_ssh_agent.protocol.forwarded import parse_forwarded_request
from p0_ssh_agent.runtime.jobs import ABSENT, JobKey, job_key


def _key(params: dict[str, object]) -> JobKey:
    return job_key(parse_forwarded_request(params))


def test_the_key_carries_the_parsed_command_and_the_fields() -> None:
    key = _key({"data": {"command": "provisionUser", "userName": "alice", "action": "grant", "requestId": "r1"}})
    assert key == JobKey(command="provisionUser", user="alice", action="grant", request_id="r1")
    assert key.lock_name == "alice"
    assert key.dedupe_key == ("provisionUser", "r1", "grant", "alice")


def test_the_top_level_command_is_the_one_the_request_carries() -> None:
    assert _key({"command": "listUsers", "data": {}}).command == "listUsers"


@pytest.mark.parametrize("command", ["provision User", "x" * 129, "a\nb", "\x00", "provisionUser;rm"])
def test_a_hostile_command_becomes_absent(command: str) -> None:
    key = _key({"data": {"command": command, "userName": "alice", "requestId": "r1"}})
    assert key.command == ABSENT
    assert key.dedupe_key == (ABSENT, "r1", ABSENT, "alice")


def test_no_command_is_empty_and_never_deduplicated() -> None:
    key = _key({"data": {"requestId": "r1"}})
    assert key.command == ""
    assert key.dedupe_key is None


@pytest.mark.parametrize("value", [5, None, ["alice"], "../etc", "a b", "x" * 129])
def test_hostile_field_values_become_absent_and_take_no_lock(value: object) -> None:
    key = _key({"data": {"command": "provisionUser", "userName": value, "requestId": value}})
    assert (key.user, key.request_id) == (ABSENT, ABSENT)
    assert key.lock_name is None
    assert key.dedupe_key is None


def test_field_names_match_case_insensitively_like_go() -> None:
    key = _key({"data": {"command": "provisionUser", "USERNAME": "bob", "requestid": "r2", "Action": "revoke"}})
    assert (key.user, key.request_id, key.action) == ("bob", "r2", "revoke")
