"""Answers as P0's Go agent gives them (issue 15): listUsers' output exactly as Go's json.Marshal writes it, and the
Go agent's message prefixes for a request without a userName. Through the daemon and the dev backend, the way the
backend sees them, plus the Go encoder's escaping rules on values no real passwd file is likely to hold."""

from __future__ import annotations

import json
import pwd
import signal
from pathlib import Path

import pytest
import trio

from daemon_helpers import CLIENT_ID, AgentProcess, DevDriver, keygen, write_config
from p0_ssh_agent.core.gojson import marshal_strings
from p0_ssh_agent.core.requests import USER_NAME_RE
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.host.inventory import list_users

GUARD = 30.0  # only stops a broken agent from hanging the suite


def forwarded(data: object) -> dict[str, object]:
    return {"path": "", "headers": {"content-type": "application/json"}, "method": "POST", "params": {}, "data": data}


async def answers(tmp_path: Path, requests: list[dict[str, object]]) -> list[dict[str, object]]:
    """The `data` of each answer a real agent (dry-run) gives the dev backend."""
    keys = tmp_path / "keys"
    public = keygen(keys)
    dev = DevBackend()
    dev.register_client(CLIENT_ID, public)
    results: list[dict[str, object]] = []
    async with trio.open_nursery() as nursery:
        await nursery.start(dev.serve)
        agent = AgentProcess.start(write_config(tmp_path, dev.rpc_url, keys), tmp_path / "agent.log")
        try:
            driver = DevDriver(dev)
            with trio.fail_after(GUARD):
                await driver.wait_connected()
                for data in requests:
                    result = await driver.call(forwarded(data))
                    assert isinstance(result["data"], dict)
                    results.append(result["data"])
        finally:
            agent.signal(signal.SIGTERM)
            await agent.wait_exit(GUARD)
            agent.kill()
        nursery.cancel_scope.cancel()
    return results


@pytest.mark.slow
async def test_list_users_output_is_go_json_marshal_byte_for_byte(tmp_path: Path) -> None:
    [data] = await answers(tmp_path, [{"command": "listUsers"}])
    output = data["output"]
    assert isinstance(output, str)
    names = list_users(pwd.getpwall())
    assert json.loads(output) == names and len(names) >= 2
    # Go: ["root","daemon",...]: no space after the comma, nothing escaped that Go leaves alone.
    assert output == "[" + ",".join(f'"{name}"' for name in names) + "]"


@pytest.mark.parametrize(
    ("names", "go"),
    [
        (["root", "sync"], '["root","sync"]'),
        (["a<b>&c"], '["a\\u003cb\\u003e\\u0026c"]'),  # json.Marshal is HTML-safe by default
        (["x\u2028y\u2029"], '["x\\u2028y\\u2029"]'),
        (["jürgen"], '["jürgen"]'),  # non-ASCII stays UTF-8
        (['q"\\'], '["q\\"\\\\"]'),
        (["bad\udcffbyte"], '["bad\ufffdbyte"]'),  # an invalid UTF-8 byte from passwd: U+FFFD, as Go writes it
    ],
)
def test_marshal_strings_follows_go_encoding_rules(names: list[str], go: str) -> None:
    assert marshal_strings(names) == go


@pytest.mark.slow
async def test_a_missing_user_name_keeps_the_go_agents_message_prefix(tmp_path: Path) -> None:
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE alice@example.com"
    requests: list[dict[str, object]] = [
        {"command": "provisionUser", "action": "grant", "requestId": "r1"},
        {"command": "provisionSudo", "action": "grant", "requestId": "r2", "sudo": True, "userName": ""},
        {"command": "provisionAuthorizedKeys", "action": "grant", "requestId": "r3", "publicKey": key},
        {"command": "provisionCAKeys", "action": "revoke", "requestId": "r4"},
    ]
    got = await answers(tmp_path, requests)
    errors = [str(data["error"]) for data in got]
    assert all(data["success"] is False for data in got)
    syntax = f"invalid username format: must match {USER_NAME_RE} (userName missing or empty)"
    assert errors[:2] == [syntax, syntax]
    # The Go agent looks the user up for key grants: `user  not found: ...` (two spaces: the empty name).
    assert errors[2:] == ["user  not found: userName missing or empty"] * 2
