"""Logging: journald/terminal/plain output chosen from the real stream, redaction of every event, the
canonical request line. Output goes to real files and a real pseudo-terminal, then is read back."""

from __future__ import annotations

import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import TextIO

import pytest
import structlog

from p0_ssh_agent.adapters.logging import (
    MAX_VALUE_CHARS,
    configure_logging,
    get_logger,
    log_request_line,
    redact,
)

TIMESTAMP = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}")
# A syntactically valid JWT (header {"alg":"ES384","typ":"JWT"}); the signature part is filler.
JWT = "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhY21lOmhvc3Q6c3NoIn0.c2lnbmF0dXJlLWJ5dGVz"
PEM = "-----BEGIN EC PRIVATE KEY-----\nMIGkAgEBBDBsecretsecretsecret\nAAAA==\n-----END EC PRIVATE KEY-----\n"


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """Leave structlog and the root logger as other test modules expect them."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()
    structlog.contextvars.clear_contextvars()


def journal_env(stream: TextIO) -> dict[str, str]:
    stat = os.fstat(stream.fileno())
    return {"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"}


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def test_journald_lines_have_priority_prefix_and_no_timestamp(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        configure_logging(stream=out, env=journal_env(out))
        log = get_logger("p0_ssh_agent.test")
        log.info("connected", url="wss://api.p0.app", attempt=3)
        log.warning("disconnected", reason="connection closed by server (code 1006)")
        log.error("handshake_rejected", status=404)
        log.critical("giving_up")
        log.debug("not_shown")
    assert lines(path) == [
        "<6>connected url=wss://api.p0.app attempt=3",
        '<4>disconnected reason="connection closed by server (code 1006)"',
        "<3>handshake_rejected status=404",
        "<2>giving_up",
    ]


def test_journal_stream_of_another_file_means_plain_output(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    stat = other.stat()
    path = tmp_path / "log"
    with path.open("w") as out:
        configure_logging(stream=out, env={"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        get_logger("t").info("hello", n=1)
    [line] = lines(path)
    assert not line.startswith("<")
    assert TIMESTAMP.match(line)
    assert line.endswith(" info hello n=1")


@pytest.mark.parametrize("value", ["", "garbage", "1:", ":2", "x:y"])
def test_malformed_journal_stream_means_plain_output(tmp_path: Path, value: str) -> None:
    path = tmp_path / "log"
    with path.open("w") as out:
        configure_logging(stream=out, env={"JOURNAL_STREAM": value})
        get_logger("t").info("hello")
    assert TIMESTAMP.match(lines(path)[0])


def test_verbose_enables_debug(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        env = journal_env(out)
        configure_logging(stream=out, env=env, verbose=True)
        get_logger("t").debug("frame", size=12)
        configure_logging(stream=out, env=env, verbose=False)
        get_logger("t").debug("hidden")
        get_logger("t").info("shown")
    assert lines(path) == ["<7>frame size=12", "<6>shown"]


def test_stdlib_logging_goes_through_the_same_output(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        configure_logging(stream=out, env=journal_env(out), verbose=True)
        logging.getLogger("some.library").warning("retrying %s with %s", "x", f"Bearer {JWT}")
        logging.getLogger("some.library").debug("detail")
        # trio-websocket logs every ping: only its warnings get through, even with --verbose.
        logging.getLogger("trio-websocket").debug("ping")
        logging.getLogger("trio-websocket").info("pong")
        logging.getLogger("trio-websocket").warning("unknown event")
    assert lines(path) == [
        "<4>retrying x with Bearer [REDACTED] logger=some.library",
        "<7>detail logger=some.library",
        "<4>unknown event logger=trio-websocket",
    ]


def test_configuring_twice_replaces_the_first_output(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    with first.open("w") as out1, second.open("w") as out2:
        configure_logging(stream=out1, env={})
        get_logger("t").info("one")
        configure_logging(stream=out2, env={})
        get_logger("t").info("two")
        logging.getLogger("lib").info("three")
    assert [line.split(" ", 1)[1] for line in lines(first)] == ["info one"]
    assert [line.split(" ", 1)[1] for line in lines(second)] == ["info two", "info three logger=lib"]


def test_logger_made_before_configuration_follows_it(tmp_path: Path) -> None:
    early = get_logger("made.at.import")
    path = tmp_path / "journal"
    with path.open("w") as out:
        configure_logging(stream=out, env=journal_env(out))
        early.info("late", token="abc")
    assert lines(path) == ["<6>late token=[REDACTED]"]


def test_request_line_keeps_its_field_order(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        configure_logging(stream=out, env=journal_env(out))
        with structlog.contextvars.bound_contextvars(connection="c7"):
            log_request_line(
                request_id="REQ-1",
                command="provisionSudo",
                user="alice_p0",
                action="grant",
                outcome="ok",
                duration_ms=4.2,
                dry_run=False,
            )
        log_request_line(request_id="-", command="-", user="-", action="-", outcome="failed", duration_ms=0.0)
    assert lines(path) == [
        "<6>request request_id=REQ-1 command=provisionSudo user=alice_p0 action=grant outcome=ok "
        "duration_ms=4.2 dry_run=false connection=c7",
        "<6>request request_id=- command=- user=- action=- outcome=failed duration_ms=0.0",
    ]


def fail_with_token() -> None:
    raise RuntimeError(f"failed with {JWT}")


def test_values_are_quoted_and_kept_on_one_line(tmp_path: Path) -> None:
    path = tmp_path / "journal"
    with path.open("w") as out:
        configure_logging(stream=out, env=journal_env(out))
        get_logger("t").info(
            "multi\nline event",
            text="two\nlines",
            empty="",
            eq="a=b",
            none=None,
            raw=b"bytes\x00",
            items=["a b", 1],
            big="x" * (MAX_VALUE_CHARS + 10),
        )
        try:
            fail_with_token()
        except RuntimeError:
            get_logger("t").exception("crashed")
    first, second = lines(path)
    assert first.startswith('<6>multi\\nline event text="two\\nlines" empty="" eq="a=b" none=- ')
    assert 'raw="bytes\\u0000"' in first
    assert 'items="[\\"a b\\",1]"' in first
    assert first.endswith('…(10 more chars)"')
    assert second.startswith('<3>crashed exception="Traceback (most recent call last):\\n')
    assert "RuntimeError: failed with [REDACTED-JWT]" in second
    assert JWT not in second


def test_every_event_is_redacted(tmp_path: Path) -> None:
    class Holder:
        def __str__(self) -> str:
            return f"holder with Bearer {JWT}"

    path = tmp_path / "journal"
    with path.open("w") as out:
        configure_logging(stream=out, env=journal_env(out), verbose=True)
        get_logger("t").debug(
            "forwarded_request",
            headers={"Authorization": f"Bearer {JWT}", "content-type": "application/json"},
            data={"command": "provisionUser", "privateKey": PEM},
            jwt=JWT,
            obj=Holder(),
            note=f"token {JWT} seen",
        )
    text = path.read_text()
    assert JWT not in text
    assert "secretsecret" not in text
    assert "eyJ" not in text
    assert '\\"Authorization\\":\\"[REDACTED]\\"' in text
    assert '\\"content-type\\":\\"application/json\\"' in text
    assert "jwt=[REDACTED]" in text
    assert 'obj="holder with Bearer [REDACTED]"' in text
    assert 'note="token [REDACTED-JWT] seen"' in text


def test_console_mode_on_a_terminal_uses_colours() -> None:
    for env, coloured in (({}, True), ({"NO_COLOR": "1"}, False)):
        master, slave = os.openpty()
        try:
            with os.fdopen(slave, "w", closefd=False) as tty:
                configure_logging(stream=tty, env=env)
                get_logger("t").warning("tty_event", token=JWT, detail="x")
            output = os.read(master, 65536).decode()
        finally:
            os.close(master)
            os.close(slave)
        assert "tty_event" in output
        assert "[REDACTED]" in output
        assert JWT not in output
        assert not output.startswith("<")
        assert ("\x1b[" in output) is coloured


def test_stream_without_a_file_descriptor_gets_plain_lines() -> None:
    out = io.StringIO()
    configure_logging(stream=out, env={"JOURNAL_STREAM": "1:2"})
    get_logger("t").info("hello", a="b")
    line = out.getvalue()
    assert TIMESTAMP.match(line)
    assert line.endswith(" info hello a=b\n")


# --- redact() as a function ---------------------------------------------------------------------------------


def test_redact_nested_headers_in_every_shape() -> None:
    value = {
        "request": {
            "headers": {
                "Authorization": "Bearer abc",
                "Proxy-Authorization": "Basic dXNlcjpwYXNz",
                "Cookie": "session=1",
                "X-Request-Id": "r1",
            },
            "list_headers": [(b"authorization", b"Bearer abc"), (b"host", b"example.com")],
        },
        "items": [{"password": "hunter2"}, ("token", "t"), "plain"],
    }
    assert redact(value) == {
        "request": {
            "headers": {
                "Authorization": "[REDACTED]",
                "Proxy-Authorization": "[REDACTED]",
                "Cookie": "[REDACTED]",
                "X-Request-Id": "r1",
            },
            "list_headers": [(b"authorization", "[REDACTED]"), (b"host", b"example.com")],
        },
        "items": [{"password": "[REDACTED]"}, ("token", "[REDACTED]"), "plain"],
    }
    assert value["request"]["headers"]["Authorization"] == "Bearer abc"  # type: ignore[index]


@pytest.mark.parametrize(
    "key",
    ["authorization", "AUTHORIZATION", "proxy-authorization", "token", "jwt", "auth", "password",
     "private_key", "privateKey", "cookie", "secret", "registrationToken", "client_secret", "api-key"],
)  # fmt: skip
def test_redact_sensitive_keys(key: str) -> None:
    assert redact({key: "value", "other": "value"}) == {key: "[REDACTED]", "other": "value"}


def test_redact_jwk_private_member_only_inside_a_jwk() -> None:
    jwk = {"kty": "EC", "crv": "P-384", "x": "xx", "y": "yy", "d": "private"}
    assert redact({"key": jwk}) == {"key": {**jwk, "d": "[REDACTED]"}}
    assert redact({"d": "a day", "k": 3}) == {"d": "a day", "k": 3}


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Bearer abc.def-ghi", "Bearer [REDACTED]"),
        ("sent Authorization: bearer xyz, then waited", "sent Authorization: bearer [REDACTED], then waited"),
        ("Basic dXNlcjpwYXNz", "Basic [REDACTED]"),
        ("only the Basic scheme is supported", "only the Basic scheme is supported"),
        (JWT, "[REDACTED-JWT]"),
        (f"token={JWT};", "token=[REDACTED-JWT];"),
        (f"x {PEM} y", "x [REDACTED-PRIVATE-KEY]\n y"),
        ("-----BEGIN PRIVATE KEY-----\nMIIEvQ (truncated", "[REDACTED-PRIVATE-KEY]"),
        ("http://user:p%40ss@proxy:3128/", "http://[REDACTED]@proxy:3128/"),
        ('{"token": "abc", "user": "alice"}', '{"token": "[REDACTED]", "user": "alice"}'),
        ("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI alice", "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI alice"),
        ("eyJ alone is not a token", "eyJ alone is not a token"),
    ],
)
def test_redact_strings(text: str, expected: str) -> None:
    assert redact(text) == expected


def test_redact_leaves_other_values_alone() -> None:
    marker = object()
    assert redact(42) == 42
    assert redact(None) is None
    assert redact(marker) is marker
    assert redact(b"plain bytes") == b"plain bytes"
    assert redact(f"Bearer {JWT}".encode()) == "Bearer [REDACTED]"
