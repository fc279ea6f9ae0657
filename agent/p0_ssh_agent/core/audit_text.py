"""runAudit's text: section markers that only the agent can write (issue 11 item 3).

The output keeps upstream's format (upstream-protocol.md §6.6): `===NAME===` header lines in a fixed order, and in
the AUTHORIZED_KEYS section a `USER:<name>` line before each user's file. Everything else comes from files and
databases that users influence (their own authorized_keys, their GECOS field through chfn, ...), so a content line
that a parser could take for a marker is escaped, the way mboxrd quotes "From " lines:

    marker-like   a line that, after any number of ">" and then any spaces or tabs, starts with "===" or "USER:"
                  (in any case)
    escape        every marker-like content line gets one more ">" in front
    unescape      every line that starts with ">" and is marker-like loses that first ">"

So a line of the output that starts with "===" or "USER:" is always the agent's own; content that is not
marker-like is unchanged byte for byte (the common case: the output is exactly upstream's); and
unescape(escape(text)) == text for every text. A line starts at the start of the text and after any character that
some parser ends a line with: \\n, \\r, \\v, \\f, \\x1c-\\x1e, \\x85, U+2028 and U+2029 (str.splitlines' set, which
covers JavaScript's multiline ^ and a Go reader that keeps a bare \\r), so "x\\r===SUDOERS===" inside one \\n-line
is escaped too.

Pure: no os, no trio.
"""

from __future__ import annotations

import re

__all__ = ["escape", "unescape"]

_BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"
# The start of the text, or right after a line break: "not preceded by a character that is not a break".
_LINE_START = f"(?<![^{_BREAKS}])"
# Leading blanks a lenient parser would strip, but never a line break (that would join two lines).
_BLANKS = rf"[^\S{_BREAKS}]*"
_MARKER_LIKE = rf"(?=>*{_BLANKS}(?:===|user:))"
_ESCAPE = re.compile(_LINE_START + _MARKER_LIKE, re.IGNORECASE)
_UNESCAPE = re.compile(_LINE_START + ">" + _MARKER_LIKE, re.IGNORECASE)


def escape(text: str) -> str:
    """`text` with one ">" before each marker-like line (module docstring); other text is unchanged."""
    return _ESCAPE.sub(">", text)


def unescape(text: str) -> str:
    """The inverse of escape: what a consumer applies to a section's content to get the file back."""
    return _UNESCAPE.sub("", text)
