"""JSON text byte for byte as Go's `json.Marshal` writes it (pure), for outputs P0's Go agent produced that way.

`json.Marshal` differs from Python's `json.dumps` in three ways that matter for a list of strings: compact
separators (`["root","sync"]`, no spaces); non-ASCII stays UTF-8 (ensure_ascii=False); and HTML-safe escaping,
on by default in Go: `<`, `>`, `&` become `\\u003c`, `\\u003e`, `\\u0026`, and U+2028/U+2029 become `\\u2028` and
`\\u2029` (encoding/json encode.go, `htmlSafeSet` and the line-separator case).
"""

from __future__ import annotations

import json

_GO_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"}
_TABLE = str.maketrans(_GO_ESCAPES)


def marshal_strings(values: list[str]) -> str:
    """`json.Marshal([]string{...})`. The characters escaped here only ever occur inside strings, so replacing
    them in the whole text is the same as escaping them in each string."""
    text = json.dumps([_as_go_string(value) for value in values], separators=(",", ":"), ensure_ascii=False)
    return text.translate(_TABLE)


def _as_go_string(value: str) -> str:
    """Go writes each invalid UTF-8 byte as U+FFFD. Python's pwd hands such bytes over as surrogate escapes
    (\\udc80-\\udcff): turn them back into bytes and let the decoder replace them the same way."""
    try:
        return value.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
    except UnicodeEncodeError:  # a surrogate that is not an escaped byte: no Go string holds one
        return value.encode("utf-8", "replace").decode("utf-8")
