"""Managed pairs in authorized_keys-style files: add, remove and list them as pure byte edits.

The on-disk format is upstream's (upstream-protocol.md §6.1), so hosts provisioned by the Go agent or the SSM
document keep working:

    # RequestID: <requestId>\\n
    <one content line>\\n

The functions take and return the whole file as bytes: a user's file may hold anything, including bytes that are
not UTF-8, and every byte we do not own is kept. Compared with the Go agent (§12 item 6):

* The marker is matched on the whole line (ignoring one trailing CR), never as a substring, so request 1 never
  matches request 12.
* Removal takes the marker and the single line after it, and only if that line is one sshd would read as a key
  (not blank, not a comment or another marker). The Go agent's sed deleted up to the next blank line. Its blocks
  hold exactly one content line, so any later lines are the user's own or other grants, and we keep them.
* A marker that landed mid-line (the Go agent appended to a file with no final newline) is still found: the text
  before it is kept as the user's line, and the key after it is removed, instead of silently staying.
* One request may own several pairs in one file: provisionCAKeys and provisionAuthorizedKeys share a requestId
  (§6.9). So add_block never replaces another line under the same marker; it appends a pair unless this exact
  pair is already there, and remove_block removes every pair of the request, duplicates included.
* With maxGrantSeconds (issue 6) our lines carry OpenSSH's `expiry-time="YYYYMMDDHHMMSS[Z]"` option (a key line:
  as its only option; a CA line: after principals=). Markers and pairs are line based, so nothing above changes;
  parse_own_line takes such a line apart again for reconciliation.
* Appending to a file without a final newline puts the separating newline before our pair and leaves the file
  still without a final newline; removal undoes that. add then remove therefore restores the file byte for byte,
  and neither ever changes whether the file ends with a newline.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Callable
from dataclasses import dataclass

from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.requests import REQUEST_ID_RE, USER_NAME_RE, is_user_name
from p0_ssh_agent.core.sshkeys import SshPublicKey, parse_public_key

MARKER_PREFIX = "# RequestID: "
_MARKER_PREFIX_BYTES = MARKER_PREFIX.encode("ascii")
_REQUEST_ID = re.compile(REQUEST_ID_RE.strip("^$"), re.ASCII)
# Only ids we could have written are recognised mid-line; a whole-line marker is taken with any id (upstream never
# validated ids), so that listing shows what is really in the file.
_MARKER_AT_LINE_END = re.compile(rb"# RequestID: ([A-Za-z0-9_-]{1,128})\Z")
# sshd's expiry-time timespec, in the one form we write: seconds precision, Z for UTC (OpenSSH >= 9.1) or none
# for the system time zone (7.7 - 9.0, which know no Z).
EXPIRY_STAMP = re.compile(r"[0-9]{14}Z?", re.ASCII)


def _expiry_option(expiry: str) -> str:
    """`expiry-time="<stamp>"`; the stamp is sshd's YYYYMMDDHHMMSS, with a trailing Z when it is UTC."""
    if not EXPIRY_STAMP.fullmatch(expiry):
        raise ValueError(f"expiry must be YYYYMMDDHHMMSS with an optional Z: {expiry!r}")
    return f'expiry-time="{expiry}"'


def key_line(key: SshPublicKey, *, expiry: str | None = None) -> str:
    """The authorized_keys line for a user key: the bare key, or with `expiry-time=` as its only option."""
    if expiry is None:
        return key.line()
    return f"{_expiry_option(expiry)} {key.line()}"


def ca_line(user: str, ca_key: SshPublicKey, *, expiry: str | None = None) -> str:
    """Trust certificates from `ca_key` for exactly this user: upstream's line, with the user name checked, and
    `expiry-time=` appended to its options when given."""
    if not is_user_name(user):
        raise ValueError(f"not a valid user name for principals=: {user!r}")
    options = f'cert-authority,principals="{user}"'
    if expiry is not None:
        options += "," + _expiry_option(expiry)
    return f"{options} {ca_key.line()}"


def _marker(request_id: str) -> bytes:
    if not _REQUEST_ID.fullmatch(request_id):
        raise ValueError(f"request id must match {REQUEST_ID_RE}: {request_id!r}")
    return _MARKER_PREFIX_BYTES + request_id.encode("ascii")


def _content_bytes(line: str) -> bytes:
    """Check that `line` is one line that remove_block will recognise as the pair's content."""
    if not line or line[0] in " \t#":
        raise ValueError("a managed line must not be empty or start with whitespace or '#'")
    if line.isascii():  # the usual key line: in ASCII only the C0 controls and DEL are of those categories
        if not line.isprintable():
            raise ValueError("a managed line must be a single line without control characters")
    elif any(unicodedata.category(c) in ("Cc", "Cs", "Zl", "Zp") for c in line):
        raise ValueError("a managed line must be a single line without control characters")
    return line.encode("utf-8")


def _split_lines(content: bytes) -> list[bytes]:
    """Lines with their "\\n" kept; only "\\n" ends a line (as for sshd), and the last line may lack it."""
    pieces = content.split(b"\n")
    lines = [piece + b"\n" for piece in pieces[:-1]]
    if pieces[-1]:
        lines.append(pieces[-1])
    return lines


def _body(line: bytes) -> bytes:
    """A line without its ending: the "\\n" and one CR before it."""
    line = line.removesuffix(b"\n")
    return line.removesuffix(b"\r")


def _is_content(line: bytes) -> bool:
    """Whether sshd would read this line as a key: it skips blank lines and '#' comments (auth2-pubkeyfile.c)."""
    stripped = _body(line).lstrip(b" \t")
    return bool(stripped) and not stripped.startswith(b"#")


@dataclass(frozen=True, slots=True)
class _Pair:
    marker_index: int
    request_id: str
    prefix: bytes | None  # the user's text before a marker that landed mid-line; None for a whole-line marker
    content_index: int | None  # None: the marker has no content line after it (dangling)


def _pairs(lines: list[bytes]) -> list[_Pair]:
    pairs: list[_Pair] = []
    index = 0
    while index < len(lines):
        # Both marker forms below contain the prefix, and it holds no CR or LF: a line without it is skipped at the
        # cost of one substring search (a 10,000-line file spent most of a grant in the checks below otherwise).
        if _MARKER_PREFIX_BYTES not in lines[index]:
            index += 1
            continue
        body = _body(lines[index])
        if body.startswith(_MARKER_PREFIX_BYTES):
            request_id, prefix = body[len(_MARKER_PREFIX_BYTES) :].decode("utf-8", "surrogateescape"), None
        elif (match := _MARKER_AT_LINE_END.search(body)) is not None and body[: match.start()].strip(b" \t"):
            # Glued to an unterminated line of the user's; only blanks before it is an indented comment instead.
            request_id, prefix = match[1].decode("ascii"), body[: match.start()]
        else:
            index += 1
            continue
        following = index + 1
        content_index = following if following < len(lines) and _is_content(lines[following]) else None
        pairs.append(_Pair(index, request_id, prefix, content_index))
        index = following + 1 if content_index is not None else following
    return pairs


def add_block(content: bytes, request_id: str, line: str) -> bytes:
    """Append the pair (marker, line), unless exactly this pair is already in the file (then: unchanged)."""
    marker = _marker(request_id)
    wanted = _content_bytes(line)
    # A pair of this request always contains its marker text: without it in the file, nothing to look for.
    lines = _split_lines(content) if marker in content else []
    for pair in _pairs(lines):
        content_index = pair.content_index
        if pair.request_id == request_id and content_index is not None and _body(lines[content_index]) == wanted:
            return content
    block = marker + b"\n" + wanted
    if not content or content.endswith(b"\n"):
        return content + block + b"\n"
    # No final newline: separate our pair with one and, like the file we found, end without one. remove_block
    # takes that separator away again, so the user's last line comes back exactly as it was.
    return content + b"\n" + block


def is_ca_line(line: bytes) -> bool:
    """A `cert-authority` line (provisionCAKeys) rather than a user key line (provisionAuthorizedKeys)."""
    return line.startswith(b"cert-authority")


def remove_block(content: bytes, request_id: str, *, select: Callable[[bytes], bool] | None = None) -> bytes:
    """Remove every pair of `request_id`: the marker and the one key line after it. Nothing else changes.

    select(content line) narrows the removal to some of the request's pairs (e.g. only its CA line, since
    provisionCAKeys and provisionAuthorizedKeys share a requestId); a marker with no line after it always goes.
    """
    if _marker(request_id) not in content:  # no pair of this request can be in the file (see add_block)
        return content
    lines = _split_lines(content)
    dropped: set[int] = set()
    rewritten: dict[int, bytes] = {}
    for pair in _pairs(lines):
        if pair.request_id != request_id:
            continue
        if select is not None and pair.content_index is not None and not select(_body(lines[pair.content_index])):
            continue
        if pair.prefix is None:
            dropped.add(pair.marker_index)
        else:
            line = lines[pair.marker_index]
            rewritten[pair.marker_index] = pair.prefix + line[len(_body(line)) :]
        if pair.content_index is not None:
            dropped.add(pair.content_index)
    if not dropped and not rewritten:
        return content
    result = b"".join(rewritten.get(i, line) for i, line in enumerate(lines) if i not in dropped)
    if not content.endswith(b"\n") and result.endswith(b"\n"):
        # The file ended without a newline and its last pair is gone: drop the separator add_block put before it.
        result = result[:-1]
    return result


@dataclass(frozen=True, slots=True)
class OwnLine:
    """A content line in exactly one of the shapes key_line and ca_line write, taken apart."""

    is_ca: bool
    principal: str | None  # the CA line's principals="..." (one user); None for a key line
    expiry: str | None  # the expiry-time stamp, when the line has one
    key: SshPublicKey


_OWN_KEY_LINE = re.compile(r'(?:expiry-time="(?P<expiry>[0-9]{14}Z?)" )?(?P<key>[a-z0-9@.-]+ .+)', re.ASCII)
_OWN_CA_LINE = re.compile(
    rf'cert-authority,principals="(?P<principal>{USER_NAME_RE.strip("^$")})"'
    r'(?:,expiry-time="(?P<expiry>[0-9]{14}Z?)")? (?P<key>[a-z0-9@.-]+ .+)',
    re.ASCII,
)


def parse_own_line(line: bytes) -> OwnLine | None:
    """Take apart a line this agent could have written; None for anything else (options added, a bad key, ...).

    Reconciliation uses it to tell our line from one changed by hand: the key's fingerprint, the CA principal
    and the expiry must all still be what the ledger and the configuration say.
    """
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return None
    is_ca = text.startswith("cert-authority")
    found = (_OWN_CA_LINE if is_ca else _OWN_KEY_LINE).fullmatch(text)
    if found is None:
        return None
    try:
        key = parse_public_key(found["key"], field="authorized_keys line")
    except RequestInvalid:
        return None
    return OwnLine(is_ca, found["principal"] if is_ca else None, found["expiry"], key)


def blocks(content: bytes) -> dict[str, list[bytes]]:
    """Request id -> its content lines (without line endings), in file order; [] for a dangling marker."""
    lines = _split_lines(content)
    found: dict[str, list[bytes]] = {}
    for pair in _pairs(lines):
        owned = found.setdefault(pair.request_id, [])
        if pair.content_index is not None:
            owned.append(_body(lines[pair.content_index]))
    return found
