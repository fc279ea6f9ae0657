"""`collectSudoshRecordings`: export a user's sudosh recordings in upstream's text format (upstream-protocol.md §6.8).

The text is byte-compatible with the Go agent's: banner and search lines, "No recordings found matching criteria" or
an EXPORT_START ... EXPORT_END block with one SESSION_START ... SESSION_END block per session (base64 wrapped at 76
columns like coreutils `base64`), an AUDIT_EVENTS_JSON line derived from each recording, and "=== Export Complete
===". What differs is how recordings are chosen and read.

Which files belong to a user. sudosh2 names a session `<from>-<to>-script-<unix time>-<random>` (and `-time-` for
the timing file), where <from> is the user who logged in and <to> the user the shell runs as. Upstream globbed
`<user>-*-script-*`, so user "a" also received every recording of user "a-b" (§12 item 15). The rule here: a file
belongs to <user> only if its whole name is

    <user>-<to>-script-<digits>[-<tag>]      <to>  = [a-z_][a-z0-9_]{0,31}   (no "-")
                                             <tag> = [A-Za-z0-9_]{1,64}      (no "-")

Because neither <to> nor <tag> may contain "-", the split of a name is unique: "a-b-root-script-1-x" can only be
<from> "a-b", <to> "root", so it never reaches "a". The cost: a recording whose run-as user has a "-" in its name is
not exported for anyone (such a name is ambiguous by construction; sudosh is normally run as root or as oneself).

How they are read. The log directory is typically writable by every user (sudosh writes into it as them), so a file
name there proves nothing: each file is opened relative to the directory fd with O_NOFOLLOW|O_NONBLOCK and must be a
regular file, so a planted symlink to /etc/shadow or a FIFO is skipped rather than exported as root.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from decimal import Decimal

from p0_ssh_agent.core.requests import USER_NAME_RE, is_user_name
from p0_ssh_agent.errors import AgentError, DataError
from p0_ssh_agent.host.inventory import MAX_OUTPUT_BYTES, cap_output

DEFAULT_LOG_DIR = "/var/log/sudosh"
DEFAULT_END = 9999999999
_RUN_AS = r"[a-z_][a-z0-9_]{0,31}"
_STAMP = r"[0-9]{1,10}"
_TAG = r"[A-Za-z0-9_]{1,64}"


class SudoshLogMissing(AgentError):
    """The sudosh log directory does not exist (the upstream message, word for word)."""


@dataclass(frozen=True)
class SessionFiles:
    script_name: str
    timing_name: str
    timestamp: int


def session_files(user: str, names: list[str]) -> list[SessionFiles]:
    """The recordings of `user` among directory entry `names`, by the strict rule above, in name order."""
    pattern = re.compile(
        rf"{re.escape(user)}-(?P<to>{_RUN_AS})-script-(?P<stamp>{_STAMP})(?:-(?P<tag>{_TAG}))?", re.ASCII
    )
    found = []
    for name in sorted(names):
        match = pattern.fullmatch(name)
        if match is None:
            continue
        tag = f"-{match['tag']}" if match["tag"] else ""
        found.append(SessionFiles(name, f"{user}-{match['to']}-time-{match['stamp']}{tag}", int(match["stamp"])))
    return found


def wrap_base64(data: bytes) -> str:
    """`base64` (coreutils) output: 76-column lines, each ending in a newline; nothing at all for empty input."""
    return base64.encodebytes(data).decode("ascii")


# --- AUDIT_EVENTS_JSON: what the Go agent derives from each recording ------------------------------------------------

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


def command_lines(script: str) -> list[str]:
    found = (command_from_line(line) for line in script.replace("\r", "").split("\n"))
    return [command for command in found if command is not None]


def session_duration_ns(timing: str) -> int:
    """The sum of the timing file's delay column, in nanoseconds (truncated, as Go's time.Duration does)."""
    total = 0.0
    for line in timing.split("\n"):
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


def audit_events_json(session_id: str, user: str, script: bytes, timing: bytes) -> str:
    """The AUDIT_EVENTS_JSON line for one recording; "[]" when no command was typed (§6.8).

    Commands are spread evenly over the session's duration, as upstream does: the recording has no per-command
    clock. `session_id` must carry "-script-<unix seconds>" (session_files guarantees it).
    """
    commands = command_lines(script.decode("utf-8", "replace"))
    if not commands:
        return "[]"
    start_ns = int(session_id.rsplit("-script-", 1)[1].split("-", 1)[0]) * _NS_PER_SECOND
    duration_ns = session_duration_ns(timing.decode("utf-8", "replace"))
    events = [
        _event(
            session_id,
            user,
            "start",
            at_ns=start_ns,
            action="session.started",
            summary="SSH session recording started",
            details={"sessionId": session_id},
        )
    ]
    for index, command in enumerate(commands):
        offset = int(float(duration_ns) * float(index + 1) / float(len(commands) + 1)) if duration_ns > 0 else 0
        events.append(
            _event(
                session_id,
                user,
                f"command-{index}",
                at_ns=start_ns + offset,
                action="terminal.command",
                summary=f"Command executed: {command}",
                details={"command": command, "index": index, "sessionId": session_id},
            )
        )
    events.append(
        _event(
            session_id,
            user,
            "end",
            at_ns=start_ns + duration_ns,
            action="session.ended",
            summary="SSH session recording ended",
            details={"durationSeconds": _Number(go_float(_go_seconds(duration_ns))), "sessionId": session_id},
        )
    )
    return _go_json(events)


def _open_regular(name: str, dir_fd: int) -> int | None:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if stat.S_ISREG(os.fstat(fd).st_mode):
            return fd
    except OSError:
        pass
    os.close(fd)
    return None


def _read_regular(name: str, dir_fd: int, limit: int) -> bytes | None:
    """At most `limit` bytes of a regular file in dir_fd, never through a symlink; None if it is anything else."""
    fd = _open_regular(name, dir_fd)
    if fd is None:
        return None
    chunks: list[bytes] = []
    remaining = limit
    try:
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    return b"".join(chunks)


def _is_regular(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISREG(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


def _session_block(user: str, session: SessionFiles, script: bytes, timing: bytes) -> str:
    return (
        "=== SESSION_START ===\n"
        f"SESSION_ID: {session.script_name}\n"
        "SCRIPT_BASE64:\n"
        f"{wrap_base64(script)}"
        "TIMING_BASE64:\n"
        f"{wrap_base64(timing)}"
        "AUDIT_EVENTS_JSON:\n"
        f"{audit_events_json(session.script_name, user, script, timing)}\n"
        "=== SESSION_END ===\n"
        "\n"
    )


def _open_log_dir(log_dir: str) -> int:
    try:
        return os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise SudoshLogMissing(f"ERROR: Log directory {log_dir} does not exist") from None
    except OSError as exc:
        raise AgentError(f"cannot open the sudosh log directory {log_dir}: {exc.strerror}") from None


def _select(user: str, start: int, end: int, dir_fd: int, out: list[str]) -> list[SessionFiles]:
    """The user's complete sessions in range, warning (as upstream) about those without a timing file."""
    with os.scandir(dir_fd) as entries:
        names = [entry.name for entry in entries]
    matching = []
    for session in session_files(user, names):
        if not _is_regular(session.script_name, dir_fd):
            continue
        if not _is_regular(session.timing_name, dir_fd):
            out.append(f"WARNING: Timing file missing for {session.timing_name}, skipping\n")
            continue
        if start <= session.timestamp <= end:
            matching.append(session)
    return matching


def _export(user: str, sessions: list[SessionFiles], dir_fd: int, out: list[str]) -> None:
    out.append(f"=== EXPORT_START ===\nSESSIONS_COUNT: {len(sessions)}\n\n")
    size = sum(map(len, out))
    for session in sessions:
        if size > MAX_OUTPUT_BYTES:
            break  # the cap cuts here anyway: stop reading recordings nobody will see
        script = _read_regular(session.script_name, dir_fd, MAX_OUTPUT_BYTES + 1)
        timing = _read_regular(session.timing_name, dir_fd, MAX_OUTPUT_BYTES + 1)
        if script is None or timing is None:
            # Replaced (by a symlink, say) or removed since the listing: say so rather than export it.
            out.append(f"WARNING: {session.script_name} changed while reading, skipping\n")
            continue
        block = _session_block(user, session, script, timing)
        out.append(block)
        size += len(block)
    out.append("=== EXPORT_END ===\n\n=== Export Complete ===\n")


def collect_sudosh(user: str, start: int = 0, end: int = DEFAULT_END, log_dir: str = DEFAULT_LOG_DIR) -> str:
    """The export text for `user`'s sessions that started in [start, end] (unix seconds), capped at 1 MiB.

    Raises SudoshLogMissing when `log_dir` does not exist, DataError for a user name that is not one.
    """
    if not is_user_name(user):
        raise DataError(f"invalid userName {user[:40]!r}: must match {USER_NAME_RE}")
    out = [
        "=== Exporting sudosh session recordings ===\n",
        "Searching for recordings:\n",
        f"  Username: {user}\n",
        f"  Start time: {start} (timestamp: {start})\n",
        f"  End time: {end} (timestamp: {end})\n",
        "\n",
    ]
    dir_fd = _open_log_dir(log_dir)
    try:
        sessions = _select(user, start, end, dir_fd, out)
        out.append(f"Found {len(sessions)} matching session(s)\n\n")
        if sessions:
            _export(user, sessions, dir_fd, out)
        else:
            out.append("No recordings found matching criteria\n")
    finally:
        os.close(dir_fd)
    return cap_output("".join(out))
