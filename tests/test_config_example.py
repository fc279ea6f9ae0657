"""packaging/config.example.yaml lists every configuration key (issue 15: it said it did, and missed 7 of 23), each
under a comment, with its default: compared against the configuration model itself, so a new key without an
entry fails here."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

from p0_ssh_agent.config import AgentConfig, parse_config_text
from p0_ssh_agent.config.model import KEYS

EXAMPLE = Path(__file__).resolve().parents[1] / "packaging" / "config.example.yaml"
# Keys whose value in the example is an illustration, not the default: they have no default (identity), or
# their default is "unset" and the example shows what a value looks like.
EXAMPLES_NOT_DEFAULTS = {"orgId", "hostId"}
KEY_LINE = re.compile(r"^(#?)([A-Za-z]+):")


def entries() -> dict[str, int]:
    """Key name -> line index, for lines `key: ...` or `#key: ...` at column 0."""
    found: dict[str, int] = {}
    for index, line in enumerate(EXAMPLE.read_text().splitlines()):
        match = KEY_LINE.match(line)
        if match:
            found.setdefault(match.group(2), index)
    return found


def test_every_key_of_the_model_is_in_the_example_under_a_comment() -> None:
    lines = EXAMPLE.read_text().splitlines()
    found = entries()
    wanted = [key.name for key in KEYS if key.kind != "ignored"]
    assert [name for name in wanted if name not in found] == []
    assert [name for name in found if name not in wanted] == []
    for name, index in found.items():
        above = lines[index - 1]
        assert above.startswith("# ") or KEY_LINE.match(above) or above.startswith("#  "), (name, above)
    for key in KEYS:
        if key.kind == "ignored":  # accepted, never used: named in a comment rather than shown as a setting
            assert all(spelling in EXAMPLE.read_text() for spelling in (key.name, *key.aliases))


def test_every_value_shown_is_the_default_and_parses() -> None:
    """Uncomment every single-line `#key: value`, load the file with the real loader, and compare each key whose
    default is a value (not unset) with AgentConfig's own default."""
    text = "\n".join(
        line[1:] if KEY_LINE.match(line) and line.startswith("#") and not line.rstrip().endswith(":") else line
        for line in EXAMPLE.read_text().splitlines()
    )
    values = {name: value for name, (value, _where) in parse_config_text(text, source=str(EXAMPLE)).items()}
    defaults = {f.name: f.default for f in dataclasses.fields(AgentConfig)}
    checked = []
    for key in KEYS:
        if key.kind == "ignored" or key.name in EXAMPLES_NOT_DEFAULTS or defaults[key.field] in (None, ()):
            continue
        default = defaults[key.field]
        shown = values[key.name]
        assert str(shown) == str(default), (key.name, shown, default)
        checked.append(key.name)
    assert {"tunnelHost", "heartbeatIntervalSeconds", "policyFile", "reconcile", "reconcileIntervalSeconds"} <= set(
        checked
    )


def test_the_audit_file_entry_gives_rotation_advice() -> None:
    text = EXAMPLE.read_text()
    block = text[: text.index("#auditFile:")].rsplit("\n\n", 1)[-1]
    assert "logrotate" in block and "create 0600 root root" in block
