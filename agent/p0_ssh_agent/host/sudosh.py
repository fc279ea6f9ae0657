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

How they are read. The log directory is writable by every user (sudosh2's package makes it 0733 root, and sudosh
writes into it with the rights of the account the shell runs as), so a file's name there proves nothing:

* Only recordings whose owner could have made them are trusted. sudosh creates both files (O_CREAT|O_EXCL, mode
  0600) while its effective user is the run-as user <to>, and <from> is the owner of the terminal. So a genuine
  `alice-root-...` is root's (alice ran `sudo sudosh`) and a genuine `alice-alice-...` is alice's (sudosh as her
  login shell). The rule, tolerant but safe: both files must be owned by root or by <user> itself. A file of
  another owner is skipped with a warning: otherwise mallory could plant `alice-root-script-...` and have it
  exported as alice's session. A file alice owns is hers to say anything in, whatever run-as user its name claims
  (she types her own recordings anyway). Not exported, by this rule: sessions alice ran as a third account (`sudo
  -u bob sudosh`, owned by bob), because bob could equally have written them.
* They must not be writable by group or others (sudosh writes 0600, so 0644 is tolerated), and have one link (a
  hard link to a root-owned file is not a recording, even where fs.protected_hardlinks is off).
* Each file is opened relative to the directory fd with O_NOFOLLOW|O_NONBLOCK, must be a regular file, and the
  checks are repeated on the open fd, so a planted symlink to /etc/shadow, a FIFO, or a file swapped after the
  listing is skipped rather than exported as root.

Memory is bounded by the output cap (1 MiB), whatever the directory holds: text is produced only until the cap is
reached (cap_output of that prefix is cap_output of the whole text), the audit events are rendered one by one
(core.sudosh_events), each file is read to at most cap + 1 bytes, and the listing keeps only the first names
that could still appear within the cap, however many files an attacker plants.
"""

from __future__ import annotations

import base64
import os
import pwd
import re
import stat
from collections.abc import Collection, Iterator
from dataclasses import dataclass

from p0_ssh_agent.core.requests import USER_NAME_RE, is_user_name
from p0_ssh_agent.core.sudosh_events import audit_event_pieces
from p0_ssh_agent.errors import AgentError, DataError
from p0_ssh_agent.host.inventory import MAX_OUTPUT_BYTES, cap_output

DEFAULT_LOG_DIR = "/var/log/sudosh"
DEFAULT_END = 9999999999
_RUN_AS = r"[a-z_][a-z0-9_]{0,31}"
_STAMP = r"[0-9]{1,10}"
_TAG = r"[A-Za-z0-9_]{1,64}"
# Every listed item (a warning or a session block) prints more than this many bytes, so only the first
# MAX_OUTPUT_BYTES // _MIN_ITEM_BYTES + 1 items of each kind can ever be seen under the cap.
_MIN_ITEM_BYTES = 40


class SudoshLogMissing(AgentError):
    """The sudosh log directory does not exist (the upstream message, word for word)."""


@dataclass(frozen=True)
class SessionFiles:
    script_name: str
    timing_name: str
    timestamp: int


def _session_pattern(user: str) -> re.Pattern[str]:
    return re.compile(rf"{re.escape(user)}-(?P<to>{_RUN_AS})-script-(?P<stamp>{_STAMP})(?:-(?P<tag>{_TAG}))?", re.ASCII)


def _session_of(user: str, pattern: re.Pattern[str], name: str) -> SessionFiles | None:
    match = pattern.fullmatch(name)
    if match is None:
        return None
    tag = f"-{match['tag']}" if match["tag"] else ""
    return SessionFiles(name, f"{user}-{match['to']}-time-{match['stamp']}{tag}", int(match["stamp"]))


def session_files(user: str, names: list[str]) -> list[SessionFiles]:
    """The recordings of `user` among directory entry `names`, by the strict rule above, in name order."""
    pattern = _session_pattern(user)
    found = (_session_of(user, pattern, name) for name in sorted(names))
    return [session for session in found if session is not None]


def wrap_base64(data: bytes) -> str:
    """`base64` (coreutils) output: 76-column lines, each ending in a newline; nothing at all for empty input."""
    return base64.encodebytes(data).decode("ascii")


def trusted_owners(user: str) -> frozenset[int]:
    """Root and `user` itself: the owners a genuine recording of `user` can have (see the module docstring)."""
    try:
        return frozenset({0, pwd.getpwnam(user).pw_uid})
    except KeyError:
        return frozenset({0})  # the account is gone: only what root wrote is still believed


def recording_refusal(info: os.stat_result, owners: Collection[int]) -> str | None:
    """Why a file with this status is not a recording to export, or None if it may be one."""
    if not stat.S_ISREG(info.st_mode):
        return "not a regular file"
    if info.st_uid not in owners:
        return f"owned by uid {info.st_uid}"
    if info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return f"writable by group or others (mode {stat.S_IMODE(info.st_mode):04o})"
    if info.st_nlink != 1:
        return f"a file with {info.st_nlink} hard links"
    return None


class _CappedText:
    """The export text, kept only until it is longer than `limit` bytes.

    cap_output reads no further than `limit` bytes of a longer text, so capping what was kept gives exactly what
    capping the whole text would: nothing past the cap is ever built. Sizes count characters, which never exceed
    UTF-8 bytes, so "full" is only ever declared late, never early.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.parts: list[str] = []
        self.size = 0

    @property
    def full(self) -> bool:
        return self.size > self.limit

    def add(self, text: str) -> None:
        if not self.full:
            self.parts.append(text)
            self.size += len(text)

    def extend(self, pieces: Iterator[str]) -> None:
        """Add pieces until the text is full; the rest are never produced."""
        for piece in pieces:
            if self.full:
                return
            self.add(piece)

    def text(self) -> str:
        return cap_output("".join(self.parts), self.limit)


class _Smallest:
    """The `keep` smallest of a stream of items and how many there were, in O(keep) memory."""

    def __init__(self, keep: int) -> None:
        self.keep = keep
        self.items: list[tuple[str, str]] = []
        self.count = 0

    def add(self, item: tuple[str, str]) -> None:
        self.count += 1
        self.items.append(item)
        if len(self.items) >= 2 * self.keep:
            self._cut()

    def _cut(self) -> None:
        self.items.sort()
        del self.items[self.keep :]

    def sorted(self) -> list[tuple[str, str]]:
        self._cut()
        return self.items


def _status(name: str, dir_fd: int) -> os.stat_result | None:
    try:
        return os.lstat(name, dir_fd=dir_fd)
    except OSError:
        return None


def _read_recording(name: str, dir_fd: int, owners: Collection[int], limit: int) -> bytes | None:
    """At most `limit` bytes of a trusted recording in dir_fd, never through a symlink; None if it is not one."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        if recording_refusal(os.fstat(fd), owners) is not None:  # the file opened, not what the listing saw
            return None
        chunks: list[bytes] = []
        remaining = limit
        while remaining > 0:
            chunk = os.read(fd, min(remaining, 1 << 16))
            if not chunk:
                break
            chunks.append(chunk)
            remaining -= len(chunk)
        return b"".join(chunks)
    except OSError:
        return None
    finally:
        os.close(fd)


def _open_log_dir(log_dir: str) -> int:
    try:
        return os.open(log_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except (FileNotFoundError, NotADirectoryError):
        raise SudoshLogMissing(f"ERROR: Log directory {log_dir} does not exist") from None
    except OSError as exc:
        raise AgentError(f"cannot open the sudosh log directory {log_dir}: {exc.strerror}") from None


@dataclass
class _Selection:
    warnings: _Smallest  # (script name, warning line), for the files skipped with a word
    sessions: _Smallest  # (script name, timing name), for the sessions to export


def _select(user: str, start: int, end: int, dir_fd: int, *, owners: Collection[int], keep: int) -> _Selection:
    """The user's sessions in range, and the warnings upstream prints (no timing file) plus ours (untrusted files).

    Upstream checks the timing file before the time range, so that warning appears for sessions out of range too.
    """
    pattern = _session_pattern(user)
    selection = _Selection(_Smallest(keep), _Smallest(keep))
    with os.scandir(dir_fd) as entries:
        for entry in entries:
            session = _session_of(user, pattern, entry.name)
            if session is None:
                continue
            script = _status(session.script_name, dir_fd)
            if script is None or not stat.S_ISREG(script.st_mode):
                continue
            timing = _status(session.timing_name, dir_fd)
            if timing is None or not stat.S_ISREG(timing.st_mode):
                warning = f"WARNING: Timing file missing for {session.timing_name}, skipping\n"
                selection.warnings.add((session.script_name, warning))
                continue
            if not start <= session.timestamp <= end:
                continue
            for name, info in ((session.script_name, script), (session.timing_name, timing)):
                refusal = recording_refusal(info, owners)
                if refusal is not None:
                    warning = f"WARNING: {name} is {refusal}, not root or {user}: not a recording of {user}, skipping\n"
                    selection.warnings.add((session.script_name, warning))
                    break
            else:
                selection.sessions.add((session.script_name, session.timing_name))
    return selection


def _export(user: str, selection: _Selection, dir_fd: int, owners: Collection[int], out: _CappedText) -> None:
    out.add(f"=== EXPORT_START ===\nSESSIONS_COUNT: {selection.sessions.count}\n\n")
    for script_name, timing_name in selection.sessions.sorted():
        if out.full:
            break  # the cap cuts here anyway: stop reading recordings nobody will see
        script = _read_recording(script_name, dir_fd, owners, out.limit + 1)
        timing = _read_recording(timing_name, dir_fd, owners, out.limit + 1)
        if script is None or timing is None:
            # Replaced (by a symlink or another owner's file, say) or removed since the listing: say so.
            out.add(f"WARNING: {script_name} changed while reading, skipping\n")
            continue
        out.add(f"=== SESSION_START ===\nSESSION_ID: {script_name}\nSCRIPT_BASE64:\n")
        out.add(wrap_base64(script))
        out.add("TIMING_BASE64:\n")
        out.add(wrap_base64(timing))
        out.add("AUDIT_EVENTS_JSON:\n")
        out.extend(audit_event_pieces(script_name, user, script, timing))
        out.add("\n=== SESSION_END ===\n\n")
    out.add("=== EXPORT_END ===\n\n=== Export Complete ===\n")


def collect_sudosh(
    user: str,
    start: int = 0,
    end: int = DEFAULT_END,
    log_dir: str = DEFAULT_LOG_DIR,
    *,
    owners: Collection[int] | None = None,
    limit: int = MAX_OUTPUT_BYTES,
) -> str:
    """The export text for `user`'s sessions that started in [start, end] (unix seconds), capped at `limit` bytes.

    `owners`: the UIDs whose files are trusted (default trusted_owners(user): root and the user). Raises
    SudoshLogMissing when `log_dir` does not exist, DataError for a user name that is not one.
    """
    if not is_user_name(user):
        raise DataError(f"invalid userName {user[:40]!r}: must match {USER_NAME_RE}")
    trusted = trusted_owners(user) if owners is None else owners
    out = _CappedText(limit)
    out.add(
        "=== Exporting sudosh session recordings ===\n"
        "Searching for recordings:\n"
        f"  Username: {user}\n"
        f"  Start time: {start} (timestamp: {start})\n"
        f"  End time: {end} (timestamp: {end})\n"
        "\n"
    )
    dir_fd = _open_log_dir(log_dir)
    try:
        selection = _select(user, start, end, dir_fd, owners=trusted, keep=limit // _MIN_ITEM_BYTES + 1)
        for _name, warning in selection.warnings.sorted():
            out.add(warning)
        out.add(f"Found {selection.sessions.count} matching session(s)\n\n")
        if selection.sessions.count:
            _export(user, selection, dir_fd, trusted, out)
        else:
            out.add("No recordings found matching criteria\n")
    finally:
        os.close(dir_fd)
    return out.text()
