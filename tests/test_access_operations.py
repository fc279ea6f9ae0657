"""agent_access/operations.py: every command's valid body, and the hostile ones refused by member, never echoed."""

from __future__ import annotations

import base64

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p0_ssh_agent.agent_access.access_model import (
    DEFAULT_EXEC_SECONDS,
    MAX_EXEC_ARG_BYTES,
    MAX_EXEC_ARGS,
    MAX_EXEC_SECONDS,
    MAX_READ_BYTES,
    MAX_TREE_DEPTH,
    MAX_WRITE_BYTES,
    AccessCommand,
    Operation,
)
from p0_ssh_agent.agent_access.operations import (
    COMMAND_MEMBERS,
    MAX_COSIGNATURE_BYTES,
    MAX_OFFSET,
    MAX_UCAN_BYTES,
    MEMBER_RULES,
    OperationInvalid,
    parse_operation,
)

UCAN = "eyJhbGciOiJFZERTQSIsInR5cCI6IkpXVCJ9.eyJpc3MiOiJkaWQ6a2V5Ono2TWsifQ.c2lnbmF0dXJl"
COSIGNATURE = "eyJhbGciOiJFZERTQSIsImtpZCI6ImFsaWNlIn0.eyJqdGkiOiJ4In0.c2ln"
CONTENT = b"hello, world\n"
CONTENT_B64 = base64.b64encode(CONTENT).decode()

# The smallest valid body of each command (besides requestId, username and ucan).
MINIMAL: dict[AccessCommand, dict[str, object]] = {
    AccessCommand.FILE_READ: {"path": "/var/www/app/index.html"},
    AccessCommand.FILE_WRITE: {"path": "/var/www/app/index.html", "data": CONTENT_B64, "offset": 0},
    AccessCommand.FILE_CREATE: {"path": "/var/www/app/new.txt"},
    AccessCommand.FILE_DELETE: {"path": "/var/www/app/old.txt"},
    AccessCommand.FILE_MOVE: {"source": "/var/www/app/a", "destination": "/var/www/app/b"},
    AccessCommand.FILE_COPY: {"source": "/var/www/app/a", "destination": "/var/www/app/b"},
    AccessCommand.DIR_LIST: {"path": "/var/www/app"},
    AccessCommand.DIR_TREE: {"path": "/var/www/app"},
    AccessCommand.DIR_CREATE: {"path": "/var/www/app/releases"},
    AccessCommand.DIR_DELETE: {"path": "/var/www/app/releases"},
    AccessCommand.DIR_DELETE_RECURSIVE: {"path": "/var/www/app/releases"},
    AccessCommand.EXEC: {"argv": ["/usr/bin/true"]},
}


def body(kind: AccessCommand, /, **members: object) -> dict[str, object]:
    return {"requestId": "req-1", "username": "deploy", "ucan": UCAN, **MINIMAL[kind], **members}


def refused(command: AccessCommand | str, data: dict[str, object]) -> str:
    with pytest.raises(OperationInvalid) as caught:
        parse_operation(str(command), data)
    return caught.value.message


def test_the_table_names_every_command_and_every_member_has_a_rule() -> None:
    assert set(COMMAND_MEMBERS) == set(AccessCommand) == set(MINIMAL)
    for members in COMMAND_MEMBERS.values():
        assert (members.required | members.optional) <= MEMBER_RULES.keys()


@pytest.mark.parametrize("command", list(AccessCommand))
def test_each_commands_minimal_body_parses(command: AccessCommand) -> None:
    operation = parse_operation(command.value, body(command))
    assert (operation.command, operation.request_id, operation.username, operation.ucan) == (
        command,
        "req-1",
        "deploy",
        UCAN,
    )
    assert (operation.host, operation.cosignature) == ("", "")


@pytest.mark.parametrize("command", list(AccessCommand))
def test_each_commands_minimal_body_misses_each_required_member(command: AccessCommand) -> None:
    for member in COMMAND_MEMBERS[command].required | {"requestId", "username", "ucan"}:
        data = body(command)
        del data[member]
        assert member in refused(command, data)


def test_every_member_of_every_command() -> None:
    common = {"command": "ssh_file_read", "host": "ops-01.example.com", "cosignature": COSIGNATURE}
    read = parse_operation("ssh_file_read", body(AccessCommand.FILE_READ, offset=10, length=20, **common))
    assert read == Operation(
        AccessCommand.FILE_READ, "req-1", "deploy", "ops-01.example.com", ("/var/www/app/index.html",), UCAN,
        COSIGNATURE, offset=10, length=20,
    )  # fmt: skip
    default_read = parse_operation("ssh_file_read", body(AccessCommand.FILE_READ))
    assert (default_read.offset, default_read.length) == (0, MAX_READ_BYTES)

    write = parse_operation("ssh_file_write", body(AccessCommand.FILE_WRITE, offset=5, truncate=True))
    assert (write.data, write.offset, write.append, write.truncate) == (CONTENT, 5, False, True)
    append = body(AccessCommand.FILE_WRITE, append=True)
    del append["offset"]
    appended = parse_operation("ssh_file_write", append)
    assert (appended.offset, appended.append, appended.truncate) == (None, True, False)

    create = parse_operation("ssh_file_create", body(AccessCommand.FILE_CREATE, data=CONTENT_B64, overwrite=True))
    assert (create.data, create.overwrite) == (CONTENT, True)
    assert parse_operation("ssh_file_create", body(AccessCommand.FILE_CREATE)).data == b""

    for command in (AccessCommand.FILE_MOVE, AccessCommand.FILE_COPY):
        moved = parse_operation(command.value, body(command, overwrite=True))
        assert (moved.paths, moved.overwrite) == (("/var/www/app/a", "/var/www/app/b"), True)

    assert parse_operation("ssh_dir_tree", body(AccessCommand.DIR_TREE, depth=MAX_TREE_DEPTH)).depth == MAX_TREE_DEPTH
    assert parse_operation("ssh_dir_tree", body(AccessCommand.DIR_TREE)).depth == 1

    exec_body = body(AccessCommand.EXEC, argv=["/bin/ls", "-l", "a b"], cwd="/var/www/app", timeoutSeconds=5)
    executed = parse_operation("ssh_exec", exec_body)
    assert (executed.argv, executed.cwd, executed.timeout_seconds, executed.paths) == (
        ("/bin/ls", "-l", "a b"),
        "/var/www/app",
        5,
        (),
    )
    assert parse_operation("ssh_exec", body(AccessCommand.EXEC)).timeout_seconds == DEFAULT_EXEC_SECONDS


def test_a_plain_cosigner_flag_is_refused_loudly() -> None:
    for value in (True, "true", 1):
        message = refused(AccessCommand.EXEC, body(AccessCommand.EXEC, cosigner=value))
        assert "cosigner" in message and "counts for nothing" in message and "cosignature" in message


def test_unknown_members_and_members_of_another_command_are_listed_bounded() -> None:
    message = refused(AccessCommand.FILE_READ, body(AccessCommand.FILE_READ, argv=["/bin/sh"], Path="/x"))
    assert '"argv"' in message and '"Path"' in message
    # Exact names: requests.py's case folding does not apply here.
    data = body(AccessCommand.FILE_READ)
    data["requestid"] = data.pop("requestId")
    assert "requestid" in refused(AccessCommand.FILE_READ, data)
    many = body(AccessCommand.FILE_READ, **{f"x{i}{'y' * 500}": 1 for i in range(1000)})
    message = refused(AccessCommand.FILE_READ, many)
    assert "and 992 more" in message and len(message) < 800


def test_the_command_member_must_be_the_command() -> None:
    assert parse_operation("ssh_dir_list", body(AccessCommand.DIR_LIST, command="ssh_dir_list")).paths
    assert "command" in refused(AccessCommand.DIR_LIST, body(AccessCommand.DIR_LIST, command="ssh_dir_delete"))
    assert "not an agent-access command" in refused("provisionSudo", body(AccessCommand.DIR_LIST))
    with pytest.raises(OperationInvalid, match="JSON object"):
        parse_operation("ssh_dir_list", ["path"])  # type: ignore[arg-type]


WRONG_TYPES: list[tuple[AccessCommand, str, object]] = [
    (AccessCommand.FILE_READ, "requestId", 12),
    (AccessCommand.FILE_READ, "username", None),
    (AccessCommand.FILE_READ, "host", ["ops-01"]),
    (AccessCommand.FILE_READ, "ucan", {"alg": "none"}),
    (AccessCommand.FILE_READ, "cosignature", True),
    (AccessCommand.FILE_READ, "path", None),
    (AccessCommand.FILE_READ, "path", ["/var/www/app"]),
    (AccessCommand.FILE_READ, "offset", "0"),
    (AccessCommand.FILE_READ, "offset", 1.5),
    (AccessCommand.FILE_READ, "offset", False),  # bool is not an int
    (AccessCommand.FILE_READ, "length", True),
    (AccessCommand.FILE_WRITE, "data", b"raw"),
    (AccessCommand.FILE_WRITE, "data", None),
    (AccessCommand.FILE_WRITE, "truncate", 1),
    (AccessCommand.FILE_WRITE, "truncate", "true"),
    (AccessCommand.FILE_CREATE, "overwrite", 0),
    (AccessCommand.FILE_MOVE, "source", 7),
    (AccessCommand.FILE_COPY, "destination", None),
    (AccessCommand.DIR_TREE, "depth", True),
    (AccessCommand.DIR_TREE, "depth", 2.0),
    (AccessCommand.EXEC, "argv", "/bin/sh -c id"),
    (AccessCommand.EXEC, "argv", ["/bin/echo", 1]),
    (AccessCommand.EXEC, "argv", ["/bin/echo", None]),
    (AccessCommand.EXEC, "cwd", 0),
    (AccessCommand.EXEC, "timeoutSeconds", True),
    (AccessCommand.EXEC, "timeoutSeconds", "30"),
]


@pytest.mark.parametrize(("command", "member", "value"), WRONG_TYPES)
def test_a_wrong_json_type_is_refused_naming_the_member(command: AccessCommand, member: str, value: object) -> None:
    assert member in refused(command, body(command, **{member: value}))


OUT_OF_RANGE: list[tuple[AccessCommand, str, object]] = [
    (AccessCommand.FILE_READ, "offset", -1),
    (AccessCommand.FILE_READ, "offset", MAX_OFFSET + 1),
    (AccessCommand.FILE_READ, "length", 0),
    (AccessCommand.FILE_READ, "length", MAX_READ_BYTES + 1),
    (AccessCommand.DIR_TREE, "depth", 0),
    (AccessCommand.DIR_TREE, "depth", MAX_TREE_DEPTH + 1),
    (AccessCommand.EXEC, "timeoutSeconds", 0),
    (AccessCommand.EXEC, "timeoutSeconds", MAX_EXEC_SECONDS + 1),
    (AccessCommand.FILE_READ, "requestId", "req 1"),
    (AccessCommand.FILE_READ, "requestId", "r" * 129),
    (AccessCommand.FILE_READ, "requestId", "req-1\n"),
    (AccessCommand.FILE_READ, "username", "Deploy"),
    (AccessCommand.FILE_READ, "username", "deploy\x00root"),
    (AccessCommand.FILE_READ, "username", ""),
    (AccessCommand.FILE_READ, "host", ""),
    (AccessCommand.FILE_READ, "host", "ops-01.example.com."),
    (AccessCommand.FILE_READ, "host", "-ops.example.com"),
    (AccessCommand.FILE_READ, "host", "ops_01.example.com"),
    (AccessCommand.FILE_READ, "host", "ops-01.example.com\x00.evil"),
    (AccessCommand.FILE_READ, "host", ("a" * 63 + ".") * 4),
    (AccessCommand.FILE_READ, "host", "a" * 64),
    (AccessCommand.FILE_READ, "ucan", ""),
    (AccessCommand.FILE_READ, "ucan", "not a token"),
    (AccessCommand.FILE_READ, "cosignature", "a.b\n"),
]


@pytest.mark.parametrize(("command", "member", "value"), OUT_OF_RANGE)
def test_a_value_out_of_range_or_syntax_is_refused(command: AccessCommand, member: str, value: object) -> None:
    assert member in refused(command, body(command, **{member: value}))


def test_the_bounds_themselves_are_accepted() -> None:
    read = parse_operation("ssh_file_read", body(AccessCommand.FILE_READ, offset=MAX_OFFSET, length=MAX_READ_BYTES))
    assert (read.offset, read.length) == (MAX_OFFSET, MAX_READ_BYTES)
    host = ".".join(["a" * 63] * 3 + ["b" * 61])  # 253 characters
    assert parse_operation("ssh_file_read", body(AccessCommand.FILE_READ, host=host)).host == host
    ucan = "a." + "b" * (MAX_UCAN_BYTES - 2)
    assert parse_operation("ssh_file_read", body(AccessCommand.FILE_READ, ucan=ucan)).ucan == ucan
    signature = "a." + "b" * (MAX_COSIGNATURE_BYTES - 2)
    assert parse_operation("ssh_exec", body(AccessCommand.EXEC, cosignature=signature)).cosignature == signature
    assert parse_operation("ssh_exec", body(AccessCommand.EXEC, timeoutSeconds=MAX_EXEC_SECONDS)).timeout_seconds


def test_huge_secrets_and_values_are_never_echoed() -> None:
    secret = "eyJ" + "S" * MAX_UCAN_BYTES
    for member, value in (("ucan", secret), ("cosignature", secret[: MAX_COSIGNATURE_BYTES + 10])):
        message = refused(AccessCommand.FILE_READ, body(AccessCommand.FILE_READ, **{member: value}))
        assert member in message and "SSSS" not in message and len(message) < 200
    bad_token = refused(AccessCommand.FILE_READ, body(AccessCommand.FILE_READ, ucan="secret-part.\x01tail"))
    assert "secret-part" not in bad_token
    for member in ("requestId", "username", "host", "path"):
        message = refused(AccessCommand.FILE_READ, body(AccessCommand.FILE_READ, **{member: "x" * 100_000}))
        assert member in message and len(message) < 300


HOSTILE_PATHS = [
    "var/www/app",  # relative
    "",
    "/var/www/app/../../etc/shadow",
    "/var/www/app/./index.html",
    "/var/www/app/",
    "/var/www//app",
    "/var/www/app\x00.txt",
    "/var/www/app/\nfake-log-line",
    "/" + "a" * 256,
    "/a" * 2049,
    "/var/www/\udcff",  # a lone surrogate: not UTF-8
]


@pytest.mark.parametrize("path", HOSTILE_PATHS)
@pytest.mark.parametrize("member", ["path", "source", "destination", "cwd"])
def test_hostile_paths_are_refused_in_every_path_member(member: str, path: str) -> None:
    command = {
        "path": AccessCommand.FILE_DELETE,
        "source": AccessCommand.FILE_MOVE,
        "destination": AccessCommand.FILE_COPY,
        "cwd": AccessCommand.EXEC,
    }[member]
    message = refused(command, body(command, **{member: path}))
    assert member in message and len(message) < 200


def test_write_takes_exactly_one_of_offset_and_append() -> None:
    both = body(AccessCommand.FILE_WRITE, append=True)
    assert "exactly one of offset and append" in refused(AccessCommand.FILE_WRITE, both)
    neither = body(AccessCommand.FILE_WRITE)
    del neither["offset"]
    assert "exactly one of offset and append" in refused(AccessCommand.FILE_WRITE, neither)
    false_append = dict(neither, append=False)
    assert "append" in refused(AccessCommand.FILE_WRITE, false_append)
    cut_append = dict(neither, append=True, truncate=True)
    assert "truncate" in refused(AccessCommand.FILE_WRITE, cut_append)
    # offset and append belong to writes alone; overwrite does not belong to writes.
    assert "append" in refused(AccessCommand.FILE_CREATE, body(AccessCommand.FILE_CREATE, append=True))
    assert "overwrite" in refused(AccessCommand.FILE_WRITE, body(AccessCommand.FILE_WRITE, overwrite=True))


@pytest.mark.parametrize(
    "text",
    [
        "aGVsbG8",  # no padding
        "aGVsbG8==",  # too much padding
        "aGVs bG8=",  # whitespace
        "aGVsbG8=\n",
        "aGVs_G8-",  # base64url's alphabet
        "aGVsbG8=aGVs",  # data after the padding
        "aGVsbG8é",  # not ASCII
        "!!!!",
    ],
)
def test_data_must_be_strict_standard_base64(text: str) -> None:
    message = refused(AccessCommand.FILE_WRITE, body(AccessCommand.FILE_WRITE, data=text))
    assert message == "data: not standard base64 with padding"


def test_data_is_bounded_at_the_write_limit() -> None:
    exact = base64.b64encode(b"\xff" * MAX_WRITE_BYTES).decode()
    assert len(parse_operation("ssh_file_write", body(AccessCommand.FILE_WRITE, data=exact)).data) == MAX_WRITE_BYTES
    over = base64.b64encode(b"\xff" * (MAX_WRITE_BYTES + 1)).decode()
    for command in (AccessCommand.FILE_WRITE, AccessCommand.FILE_CREATE):
        assert "more than 65536 bytes" in refused(command, body(command, data=over))
    assert "more than" in refused(AccessCommand.FILE_WRITE, body(AccessCommand.FILE_WRITE, data="A" * 10_000_000))
    assert parse_operation("ssh_file_write", body(AccessCommand.FILE_WRITE, data="")).data == b""


def test_argv_is_bounded_and_clean() -> None:
    def argv_refusal(argv: object) -> str:
        return refused(AccessCommand.EXEC, body(AccessCommand.EXEC, argv=argv))

    assert "1 to 256" in argv_refusal([])
    assert "1 to 256" in argv_refusal(["/bin/echo"] * (MAX_EXEC_ARGS + 1))
    assert parse_operation("ssh_exec", body(AccessCommand.EXEC, argv=["/bin/echo"] * MAX_EXEC_ARGS)).argv
    assert "argv[1]: contains a NUL" in argv_refusal(["/bin/echo", "a\x00b"])
    assert "argv[0]" in argv_refusal(["", "x"])
    assert "argv[1]: not valid UTF-8" in argv_refusal(["/bin/echo", "\ud800"])
    half = "x" * (MAX_EXEC_ARG_BYTES // 2)
    assert f"more than {MAX_EXEC_ARG_BYTES} bytes" in argv_refusal([half, half, "y"])
    at_limit = ["é" * (MAX_EXEC_ARG_BYTES // 4), "x" * (MAX_EXEC_ARG_BYTES // 2)]  # é is 2 bytes: exactly the limit
    assert parse_operation("ssh_exec", body(AccessCommand.EXEC, argv=at_limit)).argv == tuple(at_limit)
    assert f"more than {MAX_EXEC_ARG_BYTES} bytes" in argv_refusal(["é" * (MAX_EXEC_ARG_BYTES // 2 + 1)])
    # Newlines and tabs are arguments like any other: argv never meets a shell.
    assert parse_operation("ssh_exec", body(AccessCommand.EXEC, argv=["/bin/printf", "a\nb\t"])).argv[1] == "a\nb\t"


JSON_SCALARS = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20)
JSON_VALUES = JSON_SCALARS | st.lists(JSON_SCALARS, max_size=3) | st.dictionaries(st.text(max_size=5), JSON_SCALARS)
MEMBER_NAMES = st.sampled_from([*sorted(MEMBER_RULES), "cosigner", "Path", "x"])


# No deadline: the first example pays for cold imports and compiles, which once took longer than hypothesis' 200 ms.
@settings(deadline=None)
@given(
    st.sampled_from(sorted(AccessCommand)),
    st.dictionaries(MEMBER_NAMES, JSON_VALUES, max_size=4),
)
def test_any_json_body_parses_or_is_refused_never_crashes(command: AccessCommand, extra: dict[str, object]) -> None:
    try:
        operation = parse_operation(command.value, body(command, **extra))
    except OperationInvalid as exc:
        assert exc.message and len(exc.message) < 1000
    else:
        assert operation.command is command
