"""AUDIT_EVENTS_JSON: the audit events the Go agent derives from one sudosh recording (pure; upstream-protocol.md §6.8).

    audit_event_pieces(session_id, user, script, timing) -> the JSON array, piece by piece (one event per piece)
    audit_events_json(...)                               -> the same, joined

The text is byte for byte what Go's encoding/json writes (member order, HTML-safe escapes, float format). A recording
of N typed commands gives N + 2 events of about 400 bytes each, far more than the recording itself (a 1 MiB file of
"$ a" lines is 262,144 commands, about 100 MiB of JSON): host.sudosh reads the pieces only until its output cap is
reached, so nothing here may build the whole array or a list of every command. Commands are therefore counted in
one pass and rendered in a second, and lines are walked without splitting the text into a list.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

_OSC = re.compile("\x1b\\][^\x07\x1b]*(?:\x07|\x1b\\\\)")
_CSI = re.compile("\x1b\\[[0-9;?]*[ -/]*[@-~]")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")
_NS_PER_SECOND = 1_000_000_000
_INT64 = (-(2**63), 2**63 - 1)


def sanitize_terminal_line(line: str) -> str:
    """A recorded line as a reader would see it: escapes removed, backspaces applied, controls dropped, trimmed."""
    line = _CSI.sub("", _OSC.sub("", line))
    kept: list[str] = []
    for char in line:
        if char == "\b":
            if kept:
                kept.pop()
        else:
            kept.append(char)
    visible = "".join(" " if c == "\t" else c for c in kept if c == "\t" or not (c < " " or c == "\x7f"))
    return visible.strip()


def looks_like_prompt(value: str) -> bool:
    trimmed = value.strip()
    return not trimmed or (trimmed.endswith(("$", "#")) and "@" in trimmed)


def command_from_line(line: str) -> str | None:
    """The command typed on a prompt line: the text after the last "$ " (else "# "), whitespace collapsed."""
    cleaned = sanitize_terminal_line(line)
    for marker in ("$ ", "# "):
        index = cleaned.rfind(marker)
        if index == -1:
            continue
        command = " ".join(cleaned[index + len(marker) :].split())
        if not command or looks_like_prompt(command):
            return None
        return command
    return None


def _lines(text: str) -> Iterator[str]:
    """text.split("\n"), one line at a time (a list of every line of a 1 MiB recording is a few dozen MiB)."""
    start = 0
    while (end := text.find("\n", start)) != -1:
        yield text[start:end]
        start = end + 1
    yield text[start:]


def _commands(script: str) -> Iterator[str]:
    """The commands typed in a recording (its text with "\r" already removed), in order."""
    for line in _lines(script):
        command = command_from_line(line)
        if command is not None:
            yield command


def command_lines(script: str) -> list[str]:
    return list(_commands(script.replace("\r", "")))


def session_duration_ns(timing: str) -> int:
    """The sum of the timing file's delay column, in nanoseconds (truncated, as Go's time.Duration does)."""
    total = 0.0
    for line in _lines(timing):
        fields = line.split()
        if len(fields) >= 2 and _DECIMAL.fullmatch(fields[0]):
            delay = float(fields[0])
            if math.isfinite(delay):
                total += delay
    nanoseconds = total * _NS_PER_SECOND
    if not math.isfinite(nanoseconds):
        return _INT64[1] if nanoseconds > 0 else _INT64[0]
    return max(_INT64[0], min(_INT64[1], int(nanoseconds)))


def _rfc3339(unix_ns: int) -> str:
    moment = datetime.fromtimestamp(unix_ns // _NS_PER_SECOND, UTC)
    return f"{moment.year:04d}-{moment:%m-%dT%H:%M:%S}Z"


def go_float(value: float) -> str:
    """A float64 as Go's encoding/json writes it (shortest digits; exponent only below 1e-6 or from 1e21 up)."""
    if value == 0:
        return "0"
    if abs(value) < 1e-6 or abs(value) >= 1e21:
        text = repr(value)
        if len(text) >= 4 and text[-4] == "e" and text[-3] == "-" and text[-2] == "0":
            text = text[:-2] + text[-1]
        return text
    text = format(Decimal(repr(value)), "f")
    return text.rstrip("0").rstrip(".") if "." in text else text


def _go_seconds(duration_ns: int) -> float:
    """time.Duration.Seconds(): whole seconds plus the remainder, both truncated toward zero like Go's / and %."""
    whole = abs(duration_ns) // _NS_PER_SECOND * (1 if duration_ns >= 0 else -1)
    return float(whole) + float(duration_ns - whole * _NS_PER_SECOND) / 1e9


@dataclass(frozen=True)
class _Number:
    """A JSON number already written out (Go's float format differs from Python's)."""

    text: str


_HTML_SAFE = (("<", "\\u003c"), (">", "\\u003e"), ("&", "\\u0026"), ("\u2028", "\\u2028"), ("\u2029", "\\u2029"))


def _go_string(text: str) -> str:
    encoded = json.dumps(text, ensure_ascii=False)
    for char, escaped in _HTML_SAFE:  # Go's encoding/json escapes these by default; Python's does not
        encoded = encoded.replace(char, escaped)
    return encoded


def _go_json(value: object) -> str:
    """Compact JSON the way Go's encoding/json writes it; objects keep the order they were built in."""
    if isinstance(value, _Number):
        return value.text
    if isinstance(value, dict):
        return "{" + ",".join(f"{_go_string(str(k))}:{_go_json(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ",".join(_go_json(v) for v in value) + "]"
    if isinstance(value, str):
        return _go_string(value)
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    raise TypeError(f"no Go JSON form for {type(value).__name__}")


def _event(
    session_id: str, user: str, suffix: str, *, at_ns: int, action: str, summary: str, details: dict[str, object]
) -> dict[str, object]:
    """One auditEventRow, members in Go's struct order; `details` keys sorted as Go sorts map keys."""
    raw: dict[str, object] = {"line": details["command"]} if "command" in details else {"sessionId": session_id}
    return {
        "id": f"{session_id}-{suffix}",
        "timestamp": _rfc3339(at_ns),
        "action": action,
        "actor": user,
        "target": session_id,
        "summary": summary,
        "details": dict(sorted(details.items())),
        "severity": "info",
        "raw": raw,
    }


def audit_event_pieces(session_id: str, user: str, script: bytes, timing: bytes) -> Iterator[str]:
    """The AUDIT_EVENTS_JSON line for one recording, in pieces that join to it; "[]" when no command was typed.

    Commands are spread evenly over the session's duration, as upstream does: the recording has no per-command
    clock. `session_id` must carry "-script-<unix seconds>" (host.sudosh.session_files guarantees it).
    """
    text = script.decode("utf-8", "replace").replace("\r", "")
    count = sum(1 for _ in _commands(text))
    if not count:
        yield "[]"
        return
    start_ns = int(session_id.rsplit("-script-", 1)[1].split("-", 1)[0]) * _NS_PER_SECOND
    duration_ns = session_duration_ns(timing.decode("utf-8", "replace"))
    started = _event(
        session_id,
        user,
        "start",
        at_ns=start_ns,
        action="session.started",
        summary="SSH session recording started",
        details={"sessionId": session_id},
    )
    yield "[" + _go_json(started)
    for index, command in enumerate(_commands(text)):
        offset = int(float(duration_ns) * float(index + 1) / float(count + 1)) if duration_ns > 0 else 0
        typed = _event(
            session_id,
            user,
            f"command-{index}",
            at_ns=start_ns + offset,
            action="terminal.command",
            summary=f"Command executed: {command}",
            details={"command": command, "index": index, "sessionId": session_id},
        )
        yield "," + _go_json(typed)
    ended = _event(
        session_id,
        user,
        "end",
        at_ns=start_ns + duration_ns,
        action="session.ended",
        summary="SSH session recording ended",
        details={"durationSeconds": _Number(go_float(_go_seconds(duration_ns))), "sessionId": session_id},
    )
    yield "," + _go_json(ended) + "]"


def audit_events_json(session_id: str, user: str, script: bytes, timing: bytes) -> str:
    """audit_event_pieces, joined (small recordings and tests)."""
    return "".join(audit_event_pieces(session_id, user, script, timing))
