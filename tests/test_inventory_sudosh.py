"""host.sudosh: the collectSudoshRecordings export on hand-built recordings in tmp_path.

The expected texts follow upstream's script (upstream-protocol.md §6.8) line by line; base64 is checked against
coreutils `base64`, the audit events against the Go agent's own test fixtures, and the file selection against the
cross-user leak of §12 item 15.
"""

from __future__ import annotations

import base64
import functools
import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from p0_ssh_agent.core.requests import RequestInvalid, SudoshRequest, parse_request
from p0_ssh_agent.core.sudosh_events import (
    audit_events_json,
    command_lines,
    go_float,
    looks_like_prompt,
    sanitize_terminal_line,
    session_duration_ns,
)
from p0_ssh_agent.errors import DataError
from p0_ssh_agent.host.inventory import MAX_OUTPUT_BYTES, TRUNCATION_MARKER, cap_output
from p0_ssh_agent.host.sudosh import SudoshLogMissing, collect_sudosh, session_files, wrap_base64

BASE64 = shutil.which("base64")
# The files below are written by whoever runs the tests: trust them as the agent trusts root's (the default, root
# and the named user, is exercised through the real CLI in test_sudosh_sandbox.py).
export = functools.partial(collect_sudosh, owners={0, os.geteuid()})
BANNER = (
    "=== Exporting sudosh session recordings ===\n"
    "Searching for recordings:\n"
    "  Username: {user}\n"
    "  Start time: {start} (timestamp: {start})\n"
    "  End time: {end} (timestamp: {end})\n"
    "\n"
)


def banner(user: str, start: int = 0, end: int = 9999999999) -> str:
    return BANNER.format(user=user, start=start, end=end)


def record(
    log_dir: Path, prefix: str, stamp: int, tag: str, script: bytes, *, timing: bytes | None = b"1.0 5\n"
) -> str:
    """Write a sudosh2-style pair: <prefix>-script-<stamp>-<tag> and <prefix>-time-<stamp>-<tag>."""
    name = f"{prefix}-script-{stamp}-{tag}"
    (log_dir / name).write_bytes(script)
    if timing is not None:
        (log_dir / f"{prefix}-time-{stamp}-{tag}").write_bytes(timing)
    return name


def blocks(text: str) -> list[str]:
    return [line.removeprefix("SESSION_ID: ") for line in text.splitlines() if line.startswith("SESSION_ID: ")]


@pytest.fixture
def log_dir(tmp_path: Path) -> Path:
    path = tmp_path / "sudosh"
    path.mkdir()
    return path


# --- selection --------------------------------------------------------------------------------------------------------


def test_session_files_rule() -> None:
    names = [
        "a-root-script-100-x1",  # a as root
        "a-a-script-101-x2",  # a as itself
        "a-b-root-script-102-x3",  # user a-b as root: never a's
        "a-b-script-103",  # no tag: accepted
        "a-root-time-100-x1",  # timing files are not sessions
        "a-root-script-abc-x",  # the stamp must be digits
        "a-root-script-100-x-y",  # the tag has no "-"
        "a-Root-script-100-x",  # the run-as user is a user name
        "a-root-script-12345678901-x",  # more than 10 digits is not a unix time we select on
        "ab-root-script-104-x",
        "a-root-script-105-x\n",
    ]
    assert [(s.script_name, s.timing_name, s.timestamp) for s in session_files("a", names)] == [
        ("a-a-script-101-x2", "a-a-time-101-x2", 101),
        ("a-b-script-103", "a-b-time-103", 103),
        ("a-root-script-100-x1", "a-root-time-100-x1", 100),
    ]
    assert [s.script_name for s in session_files("a-b", names)] == ["a-b-root-script-102-x3"]


def test_user_a_never_receives_user_a_b_recordings(log_dir: Path) -> None:
    mine = record(log_dir, "a-root", 1710000000, "AAAA", b"a$ id\n")
    theirs = record(log_dir, "a-b-root", 1710000001, "BBBB", b"a-b$ cat /secret\n")
    out_a = export("a", log_dir=str(log_dir))
    out_ab = export("a-b", log_dir=str(log_dir))
    assert blocks(out_a) == [mine]
    assert blocks(out_ab) == [theirs]
    assert "cat /secret" not in out_a
    assert base64.b64encode(b"a-b$ cat /secret\n").decode() not in out_a


# --- the exported text ------------------------------------------------------------------------------------------------


def test_no_recordings(log_dir: Path) -> None:
    record(log_dir, "bob-root", 1710000000, "x", b"bob$ ls\n")
    assert export("alice", 5, 10, log_dir=str(log_dir)) == (
        banner("alice", 5, 10) + "Found 0 matching session(s)\n\nNo recordings found matching criteria\n"
    )


def test_missing_log_dir(tmp_path: Path) -> None:
    with pytest.raises(SudoshLogMissing) as info:
        export("alice", log_dir=str(tmp_path / "nope"))
    assert str(info.value) == f"ERROR: Log directory {tmp_path / 'nope'} does not exist"
    (tmp_path / "file").write_text("")
    with pytest.raises(SudoshLogMissing):
        export("alice", log_dir=str(tmp_path / "file"))


@pytest.mark.parametrize("user", ["", "Alice", "a b", "../x", "a/b", "-rf", "x" * 40])
def test_invalid_user_is_refused(log_dir: Path, user: str) -> None:
    with pytest.raises(DataError):
        export(user, log_dir=str(log_dir))


def test_one_session_exact_text(log_dir: Path) -> None:
    script = b"alice@host:~$ echo hello\r\nhello\r\nalice@host:~$ exit\r\n"
    timing = b"0.5 20\n1.5 7\n"
    name = record(log_dir, "alice-root", 1710000000, "testsession", script, timing=timing)
    events = audit_events_json(name, "alice", script, timing)
    assert export("alice", log_dir=str(log_dir)) == (
        banner("alice")
        + "Found 1 matching session(s)\n\n"
        + "=== EXPORT_START ===\nSESSIONS_COUNT: 1\n\n"
        + "=== SESSION_START ===\n"
        + f"SESSION_ID: {name}\n"
        + "SCRIPT_BASE64:\n"
        + base64.b64encode(script).decode()
        + "\nTIMING_BASE64:\n"
        + base64.b64encode(timing).decode()
        + "\nAUDIT_EVENTS_JSON:\n"
        + events
        + "\n=== SESSION_END ===\n\n"
        + "=== EXPORT_END ===\n\n=== Export Complete ===\n"
    )
    parsed = json.loads(events)
    assert [e["summary"] for e in parsed] == [
        "SSH session recording started",
        "Command executed: echo hello",
        "Command executed: exit",
        "SSH session recording ended",
    ]


def test_time_range_is_inclusive_and_missing_timing_warns(log_dir: Path) -> None:
    early = record(log_dir, "alice-root", 99, "e", b"")
    first = record(log_dir, "alice-root", 100, "f", b"")
    last = record(log_dir, "alice-alice", 200, "l", b"")
    late = record(log_dir, "alice-root", 201, "z", b"")
    record(log_dir, "alice-root", 150, "lonely", b"x$ ls\n", timing=None)
    text = export("alice", 100, 200, log_dir=str(log_dir))
    assert blocks(text) == [last, first]  # name order, as the shell glob lists them
    assert early not in text and late not in text
    assert "WARNING: Timing file missing for alice-root-time-150-lonely, skipping\n" in text
    assert text.index("WARNING") < text.index("Found 2 matching session(s)")
    # An empty recording has no base64 lines at all, and no events.
    assert "SCRIPT_BASE64:\nTIMING_BASE64:\n" + base64.b64encode(b"1.0 5\n").decode() in text
    assert "AUDIT_EVENTS_JSON:\n[]\n" in text


def test_symlinks_and_fifos_are_not_exported(tmp_path: Path, log_dir: Path) -> None:
    secret = tmp_path / "shadow"
    secret.write_bytes(b"root:$6$VERY-SECRET:19000::::::\n")
    (log_dir / "alice-root-script-1710000000-evil").symlink_to(secret)
    (log_dir / "alice-root-time-1710000000-evil").write_bytes(b"1 1\n")
    record(log_dir, "alice-root", 1710000001, "fifo", b"alice$ ls\n", timing=None)
    os.mkfifo(log_dir / "alice-root-time-1710000001-fifo")
    record(log_dir, "alice-root", 1710000002, "tlink", b"alice$ ls\n", timing=None)
    (log_dir / "alice-root-time-1710000002-tlink").symlink_to(secret)
    text = export("alice", log_dir=str(log_dir))
    assert blocks(text) == []
    assert "VERY-SECRET" not in text and base64.b64encode(secret.read_bytes()).decode()[:20] not in text
    assert "Timing file missing for alice-root-time-1710000001-fifo" in text
    assert "Timing file missing for alice-root-time-1710000002-tlink" in text


@pytest.mark.skipif(BASE64 is None, reason="coreutils base64 is not installed")
@pytest.mark.parametrize("size", [0, 1, 56, 57, 58, 1000, 4096])
def test_wrap_base64_matches_coreutils(size: int) -> None:
    assert BASE64 is not None
    data = bytes(range(256)) * (size // 256 + 1)
    data = data[:size]
    real = subprocess.run([BASE64], input=data, capture_output=True, check=True).stdout.decode()
    assert wrap_base64(data) == real


def test_output_is_capped_at_one_mebibyte(log_dir: Path) -> None:
    big = b"alice$ yes\n" + b"y\n" * (MAX_OUTPUT_BYTES // 2)
    for stamp in range(1710000000, 1710000004):
        record(log_dir, "alice-root", stamp, "big", big)
    text = export("alice", log_dir=str(log_dir))
    assert len(text.encode()) <= MAX_OUTPUT_BYTES
    assert text.endswith("\n" + TRUNCATION_MARKER + "\n")
    assert text.startswith(banner("alice") + "Found 4 matching session(s)\n")


# --- audit events -----------------------------------------------------------------------------------------------------


def test_events_match_the_go_agent_fixture() -> None:
    """TestAppendAuditEventsToSudoshExport from the Go agent, with its exact inputs."""
    session_id = "alice-alice-script-1710000000-testsession"
    script = "\r\n".join(
        ["Aarons-MacBook-Pro:~ alice$ echo hello", "hello", "Aarons-MacBook-Pro:~ alice$ pwd", "/Users/alice"]
    ).encode()
    events = json.loads(audit_events_json(session_id, "alice", script, b"1.0 10\n1.0 10"))
    assert [e["action"] for e in events] == ["session.started", "terminal.command", "terminal.command", "session.ended"]
    assert events[1]["summary"] == "Command executed: echo hello"
    assert events[2]["summary"] == "Command executed: pwd"
    assert events[0]["timestamp"] == "2024-03-09T16:00:00Z"
    assert events[3]["timestamp"] == "2024-03-09T16:00:02Z"
    # Commands are spread over the 2 s: at 2/3 s and 4/3 s, printed truncated to the second.
    assert [events[1]["timestamp"], events[2]["timestamp"]] == ["2024-03-09T16:00:00Z", "2024-03-09T16:00:01Z"]
    assert events[3]["details"] == {"durationSeconds": 2, "sessionId": session_id}
    assert events[1]["id"] == f"{session_id}-command-0" and events[3]["id"] == f"{session_id}-end"


def test_events_json_is_byte_for_byte_go_shaped() -> None:
    session_id = "bob-root-script-1-x"
    text = audit_events_json(session_id, "bob", b"bob@h:~$ echo '<a & b>'\n", b"0.25 1\n")
    assert text == (
        '[{"id":"bob-root-script-1-x-start","timestamp":"1970-01-01T00:00:01Z","action":"session.started",'
        '"actor":"bob","target":"bob-root-script-1-x","summary":"SSH session recording started",'
        '"details":{"sessionId":"bob-root-script-1-x"},"severity":"info","raw":{"sessionId":"bob-root-script-1-x"}},'
        '{"id":"bob-root-script-1-x-command-0","timestamp":"1970-01-01T00:00:01Z","action":"terminal.command",'
        '"actor":"bob","target":"bob-root-script-1-x",'
        '"summary":"Command executed: echo \'\\u003ca \\u0026 b\\u003e\'",'
        '"details":{"command":"echo \'\\u003ca \\u0026 b\\u003e\'","index":0,"sessionId":"bob-root-script-1-x"},'
        '"severity":"info","raw":{"line":"echo \'\\u003ca \\u0026 b\\u003e\'"}},'
        '{"id":"bob-root-script-1-x-end","timestamp":"1970-01-01T00:00:01Z","action":"session.ended",'
        '"actor":"bob","target":"bob-root-script-1-x","summary":"SSH session recording ended",'
        '"details":{"durationSeconds":0.25,"sessionId":"bob-root-script-1-x"},"severity":"info",'
        '"raw":{"sessionId":"bob-root-script-1-x"}}]'
    )


def test_prompt_only_recording_has_no_events() -> None:
    """TestAppendAuditEventsToSudoshExportSkipsSyntheticLifecycleWithoutCommands."""
    script = "\r\n".join(["\x1b]0;alice@host: ~\x07alice@host:~$", "\x1b]0;alice@host: ~\x07alice@host:~$"])
    assert audit_events_json("alice-alice-script-1710000000-t", "alice", script.encode(), b"1.0 10\n") == "[]"


def test_extract_commands_sanitizes_prompt_noise() -> None:
    """TestExtractCommandLinesSanitizesPromptNoise."""
    script = "\n".join(
        [
            "\x1b]0;aaron-keisler_p0@ip-172-31-31-167: ~\x07aaron-keisler_p0@ip-172-31-31-167:~$",
            "\x1b]0;aaron-keisler_p0@ip-172-31-31-167: ~\x07aaron-keisler_p0@ip-172-31-31-167:~$ echo hello",
            "root@ip-172-31-31-167:/#   df -h",
            "\x1b[01;36mbin\x1b[0m",
        ]
    )
    assert command_lines(script) == ["echo hello", "df -h"]


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("ab\bc", "ac"),
        ("\b\bx", "x"),
        ("lss\b -l", "ls -l"),
        ("\x1b[1;32mgreen\x1b[0m text", "green text"),
        ("\x1b[?2004hbracketed\x1b[?2004l", "bracketed"),
        ("\x1b]0;title\x1b\\after", "after"),  # OSC ended by ST
        ("\x1b]0;title\x07after", "after"),  # OSC ended by BEL
        ("a\tb", "a b"),
        ("del\x7fete\x00d\x01", "deleted"),
        ("  padded  ", "padded"),
        ("\x1b[Kclear", "clear"),
    ],
)
def test_sanitize_terminal_line(raw: str, clean: str) -> None:
    assert sanitize_terminal_line(raw) == clean


@pytest.mark.parametrize(
    ("line", "command"),
    [
        ("alice@h:~$ sudo   ls    -la", "sudo ls -la"),
        ("root@h:/# systemctl restart ssh", "systemctl restart ssh"),
        ("alice@h:~$ echo a$ b", "b"),  # upstream takes the text after the LAST "$ "
        ("alice@h:~$ ", None),
        ("no prompt here", None),
        ("alice@h:~$ alice@h:~$", None),  # only a prompt after the prompt
        ("$ user@host#", None),
        ("prompt$ echo 50$", "echo 50$"),  # ends in $ but has no @: a command
        ("alice@h:~$ vii\bm notes", "vim notes"),
    ],
)
def test_command_from_prompt_lines(line: str, command: str | None) -> None:
    assert command_lines(line) == ([] if command is None else [command])


def test_looks_like_prompt() -> None:
    assert looks_like_prompt("user@host:~$")
    assert looks_like_prompt("root@host:/#")
    assert looks_like_prompt("   ")
    assert not looks_like_prompt("echo $")
    assert not looks_like_prompt("mail user@example.com")


def test_session_duration() -> None:
    assert session_duration_ns("1.0 10\n1.0 10") == 2_000_000_000
    assert session_duration_ns("0.000001 1\n") == 1000
    assert session_duration_ns("1e-3 5\n.5 1\n2. 1\n") == 2_501_000_000
    # Lines with one field, words, infinities and NaN are skipped (upstream skipped what ParseFloat refused).
    assert session_duration_ns("5\nabc 1\nnan 1\ninf 1\n1_0 1\n0x10 1\n\n 3 9\n") == 3_000_000_000
    assert session_duration_ns("") == 0
    assert session_duration_ns("1e300 1") == 2**63 - 1  # saturates instead of overflowing


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (2.0, "2"),
        (1.5, "1.5"),
        (0.1, "0.1"),
        (123456789.125, "123456789.125"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (0.000001, "0.000001"),
        (-3.25, "-3.25"),
    ],
)
def test_go_float(value: float, text: str) -> None:
    assert go_float(value) == text


def test_negative_duration_ends_before_it_starts() -> None:
    events = json.loads(audit_events_json("a-root-script-100-x", "a", b"a@h:~$ ls\n", b"-10 1\n"))
    assert events[1]["timestamp"] == "1970-01-01T00:01:40Z"  # no spread when the duration is not positive
    assert events[2]["timestamp"] == "1970-01-01T00:01:30Z"
    assert events[2]["details"]["durationSeconds"] == -10


# --- the request's time bounds (parsed in core.requests, used here) ---------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2026-03-11T17:41:21.035Z", 1773250881),  # the Go agent's own test value
        ("1710000000", 1710000000),
        ("2024-01-01T00:00:00Z", 1704067200),
        ("2024-01-01T02:00:00+02:00", 1704067200),
        ("2023-12-31T19:00:00-05:00", 1704067200),
        ("2024-02-29T12:00:00.999999999Z", 1709208000),
    ],
)
def test_time_bounds_accepted(value: str, seconds: int) -> None:
    request = parse_request("collectSudoshRecordings", {"userName": "alice", "startTime": value, "endTime": value})
    assert isinstance(request, SudoshRequest)
    assert (request.start, request.end) == (seconds, seconds)


@pytest.mark.parametrize(
    "value",
    ["2024-01-01", "2024-01-01T00:00:00", "2024-13-01T00:00:00Z", "2024-02-30T00:00:00Z", "yesterday", "-5", "1e9"],
)
def test_time_bounds_refused(value: str) -> None:
    with pytest.raises(RequestInvalid) as info:
        parse_request("collectSudoshRecordings", {"userName": "alice", "startTime": value})
    assert "startTime" in str(info.value)


# --- trust and bounds -------------------------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="gives files to other owners: needs root")
def test_only_files_of_trusted_owners_with_safe_modes_are_exported(tmp_path: Path, log_dir: Path) -> None:
    mine = record(log_dir, "alice-root", 1710000000, "good", b"alice$ id\n")
    planted = record(log_dir, "alice-root", 1710000001, "planted", b"alice$ rm -rf /\n")
    os.chown(log_dir / planted, 4321, 4321)
    timing_planted = record(log_dir, "alice-root", 1710000002, "tplanted", b"alice$ ls\n")
    os.chown(log_dir / timing_planted.replace("-script-", "-time-"), 4321, -1)
    loose = record(log_dir, "alice-root", 1710000003, "loose", b"alice$ ls\n")
    (log_dir / loose).chmod(0o664)
    (tmp_path / "shadow").write_bytes(b"root:$6$VERY-SECRET:19000::::::\n")
    linked = "alice-root-script-1710000004-link"
    (log_dir / linked).hardlink_to(tmp_path / "shadow")
    (log_dir / "alice-root-time-1710000004-link").write_bytes(b"1 1\n")

    text = collect_sudosh("alice", log_dir=str(log_dir), owners={0})
    assert blocks(text) == [mine]
    assert "rm -rf" not in text and "VERY-SECRET" not in text
    assert f"WARNING: {planted} is owned by uid 4321, not root or alice: not a recording of alice, skipping" in text
    assert f"WARNING: {timing_planted.replace('-script-', '-time-')} is owned by uid 4321" in text
    assert f"WARNING: {loose} is writable by group or others (mode 0664)" in text
    assert f"WARNING: {linked} is a file with 2 hard links" in text
    assert "Found 1 matching session(s)" in text
    # The same files, trusted as the named user's own (sudosh as alice's login shell writes them as alice):
    assert blocks(collect_sudosh("alice", log_dir=str(log_dir), owners={0, 4321})) == [mine, planted, timing_planted]


@pytest.mark.parametrize("limit", [200, 700, 1500, 4096, 20000])
def test_the_capped_export_is_the_whole_export_capped(log_dir: Path, limit: int) -> None:
    """Text is produced only until the cap; what is kept must be exactly what capping the whole text keeps."""
    record(log_dir, "alice-root", 1710000000, "a", b"alice$ ls\n" * 40, timing=b"0.5 1\n" * 40)
    record(log_dir, "alice-root", 1710000001, "b", "alice$ \u00e9cho \U0001f600\n".encode() * 300)
    record(log_dir, "alice-root", 1710000002, "nolog", b"x", timing=None)
    whole = export("alice", log_dir=str(log_dir), limit=10 * MAX_OUTPUT_BYTES)
    assert TRUNCATION_MARKER not in whole
    assert export("alice", log_dir=str(log_dir), limit=limit) == cap_output(whole, limit)


def test_many_planted_names_are_listed_within_the_cap(log_dir: Path) -> None:
    """Files without a timing file each print a warning: only the first ones fit, and only they are kept."""
    for stamp in range(3000):
        (log_dir / f"alice-root-script-{stamp}-x").write_bytes(b"")
    text = export("alice", log_dir=str(log_dir), limit=4096)
    assert text.endswith(TRUNCATION_MARKER + "\n")
    first = sorted(f"alice-root-time-{stamp}-x" for stamp in range(3000))[:5]
    assert all(f"Timing file missing for {name}, skipping" in text for name in first)
