"""The agent's sudoers drop-in as text: rules, a whole-file render, its strict inverse, and the include check (pure).

The Go agent appended rules to /etc/sudoers-p0 and `#include sudoers-p0` to /etc/sudoers, never ran visudo, and
built rules from unvalidated names (upstream-protocol.md §6.4, §12 items 2 and 3). We instead render the whole
drop-in /etc/sudoers.d/p0-ssh-agent from the grants we hold. Every rule is one fixed shape with names checked
against USER_NAME_RE, so no request can add any other sudoers syntax. host/ checks the rendered file with
`visudo -cf` before renaming it into place.

Each rule keeps upstream's marker line, so the legacy file can be revoked with the same tool:
authorized_keys.remove_block works on /etc/sudoers-p0's bytes unchanged.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from p0_ssh_agent.core.authorized_keys_format import MARKER_PREFIX
from p0_ssh_agent.core.requests import REQUEST_ID_RE, USER_NAME_RE, is_user_name

DROPIN_DIR = "/etc/sudoers.d"
DROPIN_NAME = "p0-ssh-agent"  # sudo's #includedir skips names containing '.' or ending in '~'
LEGACY_FILE = "/etc/sudoers-p0"

HEADER = (
    "# Managed by p0-ssh-agent. Do not edit: the agent rewrites this whole file on every grant and revoke,\n"
    "# so edits made here are lost. Each rule is tagged with the P0 access request that granted it.\n"
)
_REQUEST_ID = re.compile(REQUEST_ID_RE.strip("^$"), re.ASCII)
_NAME = USER_NAME_RE.strip("^$")
_MARKER_LINE = re.compile(re.escape(MARKER_PREFIX) + r"(?P<request_id>[A-Za-z0-9_-]{1,128})", re.ASCII)
_RULE_LINE = re.compile(rf"(?P<user>{_NAME}) ALL=\((?P<run_as>ALL|{_NAME})\) NOPASSWD: ALL", re.ASCII)

# The forms sudo 1.9 reads as an include of /etc/sudoers.d (checked against visudo in the tests). `#includedir`
# only counts at the start of a line: indented, sudo reads it as a comment. `@includedir` may be indented.
_INCLUDEDIR = re.compile(
    r'(?:#|[ \t]*@)includedir[ \t]+(?P<quote>"?)/etc/sudoers\.d/?(?P=quote)[ \t]*(?:#.*)?', re.ASCII
)


def _check_name(value: str, what: str) -> None:
    if not is_user_name(value):
        raise ValueError(f"{what} must match {USER_NAME_RE}: {value!r}")


def rule(user: str, run_as: str | None) -> str:
    """`<user> ALL=(<run_as or ALL>) NOPASSWD: ALL`, upstream's rule, with both names checked."""
    _check_name(user, "user")
    if run_as is not None:
        _check_name(run_as, "run_as (None means ALL)")
    return f"{user} ALL=({run_as or 'ALL'}) NOPASSWD: ALL"


@dataclass(frozen=True, slots=True)
class SudoGrant:
    """One rule owned by one request; checked on construction, so a rendered file can only hold valid rules."""

    request_id: str
    user: str
    run_as: str | None  # None means ALL

    def __post_init__(self) -> None:
        if not _REQUEST_ID.fullmatch(self.request_id):
            raise ValueError(f"request_id must match {REQUEST_ID_RE}: {self.request_id!r}")
        _check_name(self.user, "user")
        if self.run_as is not None:
            _check_name(self.run_as, "run_as (None means ALL)")

    @property
    def rule(self) -> str:
        return rule(self.user, self.run_as)


def _order(grant: SudoGrant) -> tuple[str, str, str]:
    return grant.request_id, grant.user, grant.run_as or ""


def render_dropin(grants: Iterable[SudoGrant]) -> str:
    """The whole drop-in: HEADER, then a marker and a rule per distinct grant, sorted. No grants: HEADER only."""
    body = "".join(f"{MARKER_PREFIX}{g.request_id}\n{g.rule}\n" for g in sorted(set(grants), key=_order))
    return HEADER + body


def parse_dropin(text: str) -> list[SudoGrant]:
    """The grants in a drop-in written by render_dropin; ValueError (with the line number) on anything else."""
    if not text.startswith(HEADER):
        raise ValueError(f"{DROPIN_DIR}/{DROPIN_NAME}: the p0-ssh-agent header is missing, so this file is not ours")
    if not text.endswith("\n"):
        raise ValueError(f"{DROPIN_DIR}/{DROPIN_NAME}: the last line has no newline, so this file was edited")
    header_lines = HEADER.count("\n")
    lines = text[len(HEADER) :].split("\n")[:-1]
    grants: list[SudoGrant] = []
    for offset in range(0, len(lines), 2):
        number = header_lines + offset + 1
        marker = _MARKER_LINE.fullmatch(lines[offset])
        if marker is None:
            raise ValueError(f"{DROPIN_DIR}/{DROPIN_NAME}:{number}: expected '{MARKER_PREFIX}<id>'")
        if offset + 1 >= len(lines):
            raise ValueError(f"{DROPIN_DIR}/{DROPIN_NAME}:{number}: the marker has no rule after it")
        found = _RULE_LINE.fullmatch(lines[offset + 1])
        if found is None:
            raise ValueError(f"{DROPIN_DIR}/{DROPIN_NAME}:{number + 1}: not a rule this agent writes")
        run_as = None if found["run_as"] == "ALL" else found["run_as"]
        grants.append(SudoGrant(marker["request_id"], found["user"], run_as))
    return grants


def includes_sudoers_d(sudoers_text: str) -> bool:
    """Whether this sudoers text includes /etc/sudoers.d, read the way sudo reads it.

    Only an include directive on a line of its own counts. "# includedir ..." is a comment, and so is an indented
    "#includedir". A line that a previous rule continues with a trailing backslash is part of that rule, not a
    directive. When in doubt the answer is False: the caller then adds an include it may not strictly need. It
    never assumes one that sudo would not read.
    """
    continued = False
    for raw_line in sudoers_text.split("\n"):
        line = raw_line.removesuffix("\r")  # sudo treats a CR before the newline as blank space
        if not continued and _INCLUDEDIR.fullmatch(line):
            return True
        # A trailing backslash joins the next line to a rule, but not to a comment: sudo ends a comment at the
        # newline. A rule with a trailing comment is counted as continuing, which only errs towards False.
        continued = line.endswith("\\") and not line.lstrip(" \t").startswith("#")
    return False
