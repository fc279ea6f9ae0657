"""core.audit_text: the escaping that keeps runAudit's section markers the agent's own (issue 11 item 3)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p0_ssh_agent.core.audit_text import escape, unescape

# Text made of the pieces that matter (markers, quote characters, blanks, every line break) and a little else.
PIECES = ["===", "USER:", "user:", ">", " ", "\t", "\n", "\r", "\x0b", "\x0c", "\x1c", "\x85", "\u2028", "\u2029",
          "\xa0", "SUDOERS", "a", "=", "U"]  # fmt: skip
marker_soup = st.lists(st.sampled_from(PIECES), max_size=40).map("".join)
BREAKS = "\n\r\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029"


def lines(text: str) -> list[str]:
    """Every line under the broadest definition: split at each line-break character on its own."""
    for char in BREAKS[1:]:
        text = text.replace(char, "\n")
    return text.split("\n")


@given(st.one_of(marker_soup, st.text()))
def test_unescape_inverts_escape(text: str) -> None:
    assert unescape(escape(text)) == text


@given(st.one_of(marker_soup, st.text()))
def test_no_escaped_line_looks_like_a_marker_to_a_lenient_parser(text: str) -> None:
    for line in lines(escape(text)):
        stripped = line.strip()
        assert not stripped.startswith("===") and not stripped.upper().startswith("USER:"), repr(line)


@given(st.one_of(marker_soup, st.text()))
def test_only_marker_like_lines_change(text: str) -> None:
    before, after = lines(text), lines(escape(text))
    assert len(before) == len(after)
    for old, new in zip(before, after, strict=True):
        looks_like_a_marker = old.lstrip(">").lstrip().upper().startswith(("===", "USER:"))
        assert new == (">" + old if looks_like_a_marker else old), (old, new)


@pytest.mark.parametrize(
    ("text", "escaped"),
    [
        ("ssh-ed25519 AAAA me@host\n", "ssh-ed25519 AAAA me@host\n"),
        ("===SUDOERS===\n", ">===SUDOERS===\n"),
        ("USER:root\n", ">USER:root\n"),
        ("  user:root", ">  user:root"),
        (">===X===", ">>===X==="),
        ("> quoted text", "> quoted text"),
        ("comment\r===GROUPS===\r\n", "comment\r>===GROUPS===\r\n"),
        ("a === b\n", "a === b\n"),
    ],
)
def test_examples(text: str, escaped: str) -> None:
    assert escape(text) == escaped
    assert unescape(escaped) == text
