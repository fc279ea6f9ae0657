"""The sudoers drop-in text, checked by the real visudo, and the include check, checked against real sudo."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p0_ssh_agent.core.authorized_keys_format import remove_block
from p0_ssh_agent.core.sudoers import (
    DROPIN_NAME,
    HEADER,
    SudoGrant,
    includes_sudoers_d,
    parse_dropin,
    render_dropin,
    rule,
)

VISUDO = "/usr/sbin/visudo"
needs_visudo = pytest.mark.skipif(not Path(VISUDO).exists(), reason="visudo is not installed")


def visudo_accepts(tmp_path: Path, text: str) -> tuple[bool, str]:
    """`visudo -cf` on a copy in tmp_path: it reads only that file (and what it includes)."""
    candidate = tmp_path / "candidate"
    candidate.write_text(text)
    candidate.chmod(0o440)
    done = subprocess.run([VISUDO, "-cf", str(candidate)], capture_output=True, text=True, check=False)
    candidate.unlink()
    return done.returncode == 0, done.stdout + done.stderr


def test_rule_is_upstreams_shape() -> None:
    assert rule("alice", None) == "alice ALL=(ALL) NOPASSWD: ALL"
    assert rule("bob", "postgres") == "bob ALL=(postgres) NOPASSWD: ALL"


@pytest.mark.parametrize(
    ("user", "run_as"),
    [
        ("alice\nALL", None),
        ("alice,bob", None),
        ("ALL", None),
        ("%sudo", None),
        ("#0", None),
        ("alice", "ALL"),  # ALL is spelled None, so there is one way to write it
        ("alice", "root) ALL, (ALL"),
        ("alice", "a,b"),
        ("alice", ""),
    ],
)
def test_rule_and_grant_refuse_anything_but_user_names(user: str, run_as: str | None) -> None:
    with pytest.raises(ValueError, match="must match"):
        rule(user, run_as)
    with pytest.raises(ValueError, match="must match"):
        SudoGrant("r1", user, run_as)


@pytest.mark.parametrize("request_id", ["", "a b", "x\nalice ALL=(ALL) NOPASSWD: ALL", "r" * 129])
def test_grant_refuses_bad_request_ids(request_id: str) -> None:
    with pytest.raises(ValueError, match="request_id"):
        SudoGrant(request_id, "alice", None)


def test_drop_in_name_is_one_sudo_reads() -> None:
    assert "." not in DROPIN_NAME
    assert not DROPIN_NAME.endswith("~")


def test_render_is_sorted_deduplicated_and_parses_back() -> None:
    grants = [SudoGrant("XyZ789", "bob", "postgres"), SudoGrant("AbC123", "alice", None)]
    text = render_dropin([*grants, grants[0]])
    assert text == (
        HEADER
        + "# RequestID: AbC123\nalice ALL=(ALL) NOPASSWD: ALL\n# RequestID: XyZ789\nbob ALL=(postgres) NOPASSWD: ALL\n"
    )
    assert render_dropin(reversed(grants)) == text
    assert parse_dropin(text) == sorted(grants, key=lambda g: g.request_id)


def test_no_grants_render_the_header_only() -> None:
    assert render_dropin([]) == HEADER
    assert parse_dropin(HEADER) == []
    assert HEADER.startswith("# Managed by p0-ssh-agent")
    assert "edits made here are lost" in HEADER


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("", "header"),
        ("alice ALL=(ALL) NOPASSWD: ALL\n", "header"),
        (HEADER + "# RequestID: r1\nalice ALL=(ALL) ALL\n", ":4: not a rule"),
        (HEADER + "# RequestID: r1\nalice ALL=(ALL) NOPASSWD: ALL\nbob ALL=(ALL) NOPASSWD: ALL\n", ":5: expected"),
        (HEADER + "# RequestID: r1\n", ":3: the marker has no rule"),
        (HEADER + "\n# RequestID: r1\nalice ALL=(ALL) NOPASSWD: ALL\n", ":3: expected"),
        (HEADER + "# RequestID: r1\nalice ALL=(ALL) NOPASSWD: ALL", "no newline"),
        (HEADER + "# RequestID: r1\nalice ALL=(ALL) NOPASSWD: ALL \n", "not a rule"),
        (HEADER + "# RequestID: r 1\nalice ALL=(ALL) NOPASSWD: ALL\n", "expected"),
        (HEADER + "# RequestID: r1\nalice ALL=(ALL:ALL) NOPASSWD: ALL\n", "not a rule"),
        (HEADER + "# RequestID: r1\nalice ALL=(ALL) NOPASSWD: ALL\r\n", "not a rule"),
        (HEADER + "#includedir /tmp/evil\n", "expected"),
    ],
)
def test_parse_refuses_anything_render_would_not_write(text: str, complaint: str) -> None:
    with pytest.raises(ValueError, match=complaint.replace("(", r"\(")):
        parse_dropin(text)


NAMES = st.from_regex(r"[a-z_][a-z0-9_-]{0,31}", fullmatch=True)
GRANTS = st.builds(SudoGrant, st.from_regex(r"[A-Za-z0-9_-]{1,128}", fullmatch=True), NAMES, st.none() | NAMES)


@given(st.lists(GRANTS, max_size=8))
def test_parse_inverts_render(grants: list[SudoGrant]) -> None:
    text = render_dropin(grants)
    assert set(parse_dropin(text)) == set(grants)
    assert render_dropin(parse_dropin(text)) == text
    assert render_dropin(reversed(grants)) == text


@needs_visudo
def test_visudo_accepts_what_we_render(tmp_path: Path) -> None:
    grants = [
        SudoGrant("AbC123", "alice", None),
        SudoGrant("XyZ789", "bob", "postgres"),
        SudoGrant("cmd-001", "_svc", "a-b_c"),
        SudoGrant("r" * 128, "p" * 32, "root"),
    ]
    for text in (render_dropin(grants), render_dropin([])):
        accepted, output = visudo_accepts(tmp_path, text)
        assert accepted, output


@needs_visudo
@settings(max_examples=25, deadline=None)
@given(grants=st.lists(GRANTS, min_size=1, max_size=4))
def test_visudo_accepts_any_rendered_grants(tmp_path_factory: pytest.TempPathFactory, grants: list[SudoGrant]) -> None:
    accepted, output = visudo_accepts(tmp_path_factory.mktemp("visudo"), render_dropin(grants))
    assert accepted, output


@needs_visudo
def test_visudo_would_have_refused_the_injections_we_refuse(tmp_path: Path) -> None:
    # What the Go agent would have written for userName "x\nALL" (§12 item 2): proof the check above can fail.
    accepted, _ = visudo_accepts(tmp_path, "x ALL=(ALL,) NOPASSWD: ALL\n")
    assert not accepted


@needs_visudo
def test_legacy_sudoers_p0_revokes_with_remove_block(tmp_path: Path) -> None:
    legacy = (
        b"# RequestID: AbC123\nalice ALL=(ALL) NOPASSWD: ALL\n# RequestID: XyZ789\nbob ALL=(postgres) NOPASSWD: ALL\n"
    )
    after = remove_block(legacy, "AbC123")
    assert after == b"# RequestID: XyZ789\nbob ALL=(postgres) NOPASSWD: ALL\n"
    assert remove_block(after, "XyZ789") == b""
    accepted, output = visudo_accepts(tmp_path, after.decode())
    assert accepted, output


# (text, our answer, whether real sudo 1.9 includes /etc/sudoers.d). Where the last two differ we answer False on
# purpose: a redundant include is harmless, and assuming an include that sudo does not read would lose grants.
INCLUDE_CASES: list[tuple[str, bool, bool]] = [
    ("#includedir /etc/sudoers.d\n", True, True),
    ("@includedir /etc/sudoers.d\n", True, True),
    ("root ALL=(ALL) ALL\n\n@includedir /etc/sudoers.d\n", True, True),
    ("#includedir /etc/sudoers.d", True, True),
    ("#includedir /etc/sudoers.d\r\n", True, True),
    ("#includedir\t/etc/sudoers.d\n", True, True),
    ("#includedir  /etc/sudoers.d  \n", True, True),
    ("#includedir /etc/sudoers.d/\n", True, True),
    ('@includedir "/etc/sudoers.d"\n', True, True),
    ("#includedir /etc/sudoers.d # the drop-ins\n", True, True),
    ("  @includedir /etc/sudoers.d\n", True, True),
    ("# comment ending in a backslash \\\n#includedir /etc/sudoers.d\n", True, True),
    ("", False, False),
    ("root ALL=(ALL) ALL\n", False, False),
    ("# includedir /etc/sudoers.d\n", False, False),
    ("## includedir /etc/sudoers.d\n", False, False),
    ("  #includedir /etc/sudoers.d\n", False, False),
    ("#includedir /etc/sudoers.d.bak\n", False, False),
    ("#includedir /etc/sudoers.dx\n", False, False),
    ("#includedir /etc/sudoers\n", False, False),
    ("Defaults env_reset \\\n#includedir /etc/sudoers.d\n", False, False),
    ("#includedir /etc/sudoers.d/./\n", False, True),
    ("root ALL=(ALL) ALL # note \\\n#includedir /etc/sudoers.d\n", False, True),
]


@pytest.mark.parametrize(("text", "ours", "_sudo"), INCLUDE_CASES)
def test_includes_sudoers_d_truth_table(text: str, ours: bool, _sudo: bool) -> None:
    assert includes_sudoers_d(text) is ours


UNSHARE_MOUNT = ["/usr/bin/unshare", "--mount", "--propagation", "private", "--"]
# Runs inside a private mount namespace: bind a directory over /etc/sudoers.d there (never on the host), run visudo.
_PROBE = """
import json, subprocess, sys
good, broken, *cases = sys.argv[1:]
verdicts = {}
for label, directory in (("good", good), ("broken", broken)):
    subprocess.run(["/usr/bin/mount", "--bind", directory, "/etc/sudoers.d"], check=True)
    verdicts[label] = [
        subprocess.run(["/usr/sbin/visudo", "-cf", case], capture_output=True).returncode == 0 for case in cases
    ]
    subprocess.run(["/usr/bin/umount", "/etc/sudoers.d"], check=True)
print(json.dumps(verdicts))
"""


@pytest.mark.sandbox
@needs_visudo
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("unshare"), reason="needs root and unshare")
def test_truth_table_agrees_with_real_sudo(tmp_path: Path) -> None:
    """sudo reads /etc/sudoers.d iff a syntactically fine file fails once a broken drop-in sits in that directory."""
    good, broken = tmp_path / "good", tmp_path / "broken"
    for directory, body in ((good, "nobody ALL=(ALL) NOPASSWD: /bin/true\n"), (broken, "this is not sudoers(\n")):
        directory.mkdir()
        (directory / "dropin").write_text(body)
        (directory / "dropin").chmod(0o440)
    cases = []
    for number, (text, _ours, _sudo) in enumerate(INCLUDE_CASES):
        case = tmp_path / f"case{number}"
        case.write_text(text)
        case.chmod(0o440)
        cases.append(str(case))
    done = subprocess.run(
        [*UNSHARE_MOUNT, sys.executable, "-c", _PROBE, str(good), str(broken), *cases],
        capture_output=True,
        text=True,
        check=True,
    )
    verdicts = json.loads(done.stdout)
    for (text, ours, sudo_reads_it), parses, survives_broken in zip(
        INCLUDE_CASES, verdicts["good"], verdicts["broken"], strict=True
    ):
        assert parses, f"not even valid sudoers: {text!r}"
        assert (not survives_broken) is sudo_reads_it, text
        assert ours is False or sudo_reads_it, f"we claim an include sudo does not read: {text!r}"
