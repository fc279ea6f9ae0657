"""Managed pairs in authorized_keys: the Go agent's failures (§12.6) fixed, and byte-exact properties."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from p0_ssh_agent.core.authorized_keys_format import MARKER_PREFIX, add_block, blocks, ca_line, key_line, remove_block
from p0_ssh_agent.core.sshkeys import SshPublicKey, parse_public_key

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
KEY_A = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAABAgMEBQYHCAkKCwwNDg8QERITFBUWFxgZGhscHR4f a@x"
KEY_B = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB8eHRwbGhkYFxYVFBMSERAPDg0MCwoJCAcGBQQDAgEA b@x"
USER_KEY = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEB mine"


def marker(request_id: str) -> bytes:
    return f"{MARKER_PREFIX}{request_id}".encode()


def add(content: bytes, request_id: str, line: bytes) -> bytes:
    return add_block(content, request_id, line.decode())


# --- add_block ------------------------------------------------------------------------------------------------


def test_add_to_an_empty_file() -> None:
    assert add(b"", "r1", KEY_A) == b"# RequestID: r1\n" + KEY_A + b"\n"


def test_add_appends_after_a_final_newline_and_keeps_every_byte() -> None:
    before = USER_KEY + b"\n\xff\xfe not utf-8 \x00 junk\r\n"
    assert add(before, "r1", KEY_A) == before + b"# RequestID: r1\n" + KEY_A + b"\n"


def test_add_never_glues_the_marker_to_a_last_line_without_newline() -> None:
    # The Go agent wrote "<user key># RequestID: r1" here, and then never found the marker again (§12.6).
    after = add(USER_KEY, "r1", KEY_A)
    assert after == USER_KEY + b"\n# RequestID: r1\n" + KEY_A
    assert blocks(after) == {"r1": [KEY_A]}
    assert remove_block(after, "r1") == USER_KEY


def test_add_is_idempotent_for_the_exact_pair() -> None:
    once = add(USER_KEY + b"\n", "r1", KEY_A)
    assert add(once, "r1", KEY_A) == once


def test_add_with_the_same_id_and_another_line_appends_a_second_pair() -> None:
    # provisionCAKeys and provisionAuthorizedKeys share one requestId (§6.9): neither may replace the other.
    ca = b'cert-authority,principals="alice" ' + KEY_B
    content = add(add(b"", "r1", ca), "r1", KEY_A)
    assert content == b"# RequestID: r1\n" + ca + b"\n# RequestID: r1\n" + KEY_A + b"\n"
    assert blocks(content) == {"r1": [ca, KEY_A]}
    assert remove_block(content, "r1") == b""


def test_a_key_present_without_our_marker_still_gets_a_pair() -> None:
    # Otherwise the revoke could not take the access away again; the user's own line stays untouched.
    after = add(KEY_A + b"\n", "r1", KEY_A)
    assert after == KEY_A + b"\n# RequestID: r1\n" + KEY_A + b"\n"
    assert remove_block(after, "r1") == KEY_A + b"\n"


@pytest.mark.parametrize("request_id", ["", "1/2", "x\n", "a b", "r" * 129, "é"])
def test_add_and_remove_refuse_ids_that_are_not_request_ids(request_id: str) -> None:
    with pytest.raises(ValueError, match="request id"):
        add_block(b"", request_id, KEY_A.decode())
    with pytest.raises(ValueError, match="request id"):
        remove_block(b"", request_id)


@pytest.mark.parametrize("line", ["", " ssh-ed25519 AAAA", "# comment", "a\nb", "a\rb", "a\0b", "a\u2028b"])
def test_add_refuses_lines_remove_could_not_find(line: str) -> None:
    with pytest.raises(ValueError, match="managed line"):
        add_block(b"", "r1", line)


# --- remove_block: the Go agent's failure cases (§12.6) -------------------------------------------------------


def test_request_1_never_matches_request_12() -> None:
    content = b"# RequestID: 12\n" + KEY_B + b"\n# RequestID: 1\n" + KEY_A + b"\n"
    assert remove_block(content, "1") == b"# RequestID: 12\n" + KEY_B + b"\n"
    assert remove_block(content, "12") == b"# RequestID: 1\n" + KEY_A + b"\n"
    assert remove_block(content, "2") == content


def test_removal_stops_after_one_content_line() -> None:
    # sed "/^marker$/,/^$/d" deleted everything up to a blank line: later grants and the user's own keys.
    content = b"# RequestID: r1\n" + KEY_A + b"\n" + USER_KEY + b"\n# RequestID: r2\n" + KEY_B + b"\n"
    assert remove_block(content, "r1") == USER_KEY + b"\n# RequestID: r2\n" + KEY_B + b"\n"


def test_legacy_block_up_to_a_blank_line_loses_only_its_first_line() -> None:
    # The Go agent wrote exactly one line per marker; the lines after it up to the blank are the user's own.
    content = b"# RequestID: r1\n" + KEY_A + b"\n" + USER_KEY + b"\n" + KEY_B + b"\n\n" + USER_KEY + b"\n"
    assert remove_block(content, "r1") == USER_KEY + b"\n" + KEY_B + b"\n\n" + USER_KEY + b"\n"


def test_marker_that_landed_mid_line_is_found_and_the_users_line_restored() -> None:
    go_agent_wrote = USER_KEY + b"# RequestID: r1\n" + KEY_A + b"\n"
    assert blocks(go_agent_wrote) == {"r1": [KEY_A]}
    assert remove_block(go_agent_wrote, "r1") == USER_KEY + b"\n"
    assert remove_block(go_agent_wrote, "1") == go_agent_wrote  # still exact: "r1" is not "1"


def test_every_duplicate_pair_is_removed() -> None:
    pair = b"# RequestID: r1\n" + KEY_A + b"\n"
    content = pair + USER_KEY + b"\n" + pair + pair
    assert remove_block(content, "r1") == USER_KEY + b"\n"


def test_marker_at_end_of_file_is_removed_alone() -> None:
    assert remove_block(USER_KEY + b"\n# RequestID: r1\n", "r1") == USER_KEY + b"\n"
    assert remove_block(USER_KEY + b"\n# RequestID: r1", "r1") == USER_KEY


@pytest.mark.parametrize("following", [b"\n", b"   \n", b"# my laptop\n", b"# RequestID: r2\n"])
def test_a_line_sshd_would_not_read_as_a_key_is_not_taken(following: bytes) -> None:
    content = b"# RequestID: r1\n" + following + KEY_B + b"\n"
    assert remove_block(content, "r1") == following + KEY_B + b"\n"


def test_crlf_lines_are_matched() -> None:
    content = USER_KEY + b"\r\n# RequestID: r1\r\n" + KEY_A + b"\r\n# RequestID: r2\r\n" + KEY_B + b"\r\n"
    assert blocks(content) == {"r1": [KEY_A], "r2": [KEY_B]}
    assert remove_block(content, "r1") == USER_KEY + b"\r\n# RequestID: r2\r\n" + KEY_B + b"\r\n"
    assert add(content, "r2", KEY_B) == content


def test_marker_lines_match_exactly() -> None:
    near_misses = [b"# RequestID: r1 ", b"#RequestID: r1", b"# requestid: r1", b" # RequestID: r1"]
    for near in near_misses:
        content = near + b"\n" + KEY_A + b"\n"
        assert remove_block(content, "r1") == content, near


def test_blocks_lists_every_marker_in_file_order() -> None:
    content = (
        USER_KEY + b"\n# RequestID: b\n" + KEY_B + b"\n# RequestID: a\n# RequestID: legacy id with spaces\n" + KEY_A
    )
    assert blocks(content) == {"b": [KEY_B], "a": [], "legacy id with spaces": [KEY_A]}
    assert blocks(b"") == {}


# --- lines ----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_key(tmp_path_factory: pytest.TempPathFactory) -> SshPublicKey:
    private = tmp_path_factory.mktemp("key") / "id"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", "ca@p0", "-f", str(private)], check=True)
    return parse_public_key(private.with_suffix(".pub").read_text().strip(), field="caPublicKey")


def test_key_and_ca_lines(real_key: SshPublicKey) -> None:
    assert key_line(real_key) == real_key.line()
    assert ca_line("alice", real_key) == f'cert-authority,principals="alice" {real_key.line()}'
    with pytest.raises(ValueError, match="user name"):
        ca_line('alice",command="sh', real_key)
    assert key_line(real_key, expiry="20300101120000Z") == f'expiry-time="20300101120000Z" {real_key.line()}'
    assert ca_line("alice", real_key, expiry="20300101120000") == (
        f'cert-authority,principals="alice",expiry-time="20300101120000" {real_key.line()}'
    )
    with pytest.raises(ValueError, match="YYYYMMDDHHMMSS"):
        key_line(real_key, expiry='20300101",command="sh')


def test_a_file_we_edit_is_read_by_ssh_keygen_as_exactly_our_keys(real_key: SshPublicKey, tmp_path: Path) -> None:
    user_key = tmp_path / "user"
    subprocess.run([SSH_KEYGEN, "-q", "-t", "ecdsa", "-N", "", "-C", "user", "-f", str(user_key)], check=True)
    user_line = user_key.with_suffix(".pub").read_bytes().rstrip(b"\n")
    content = add_block(user_line, "r1", ca_line("alice", real_key))  # the user's file lacked a final newline
    content = add_block(content, "r1", key_line(real_key))
    authorized_keys = tmp_path / "authorized_keys"

    def fingerprints(data: bytes) -> list[str]:
        authorized_keys.write_bytes(data)
        done = subprocess.run(
            [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(authorized_keys)], capture_output=True, text=True, check=True
        )
        return [line.split()[1] for line in done.stdout.splitlines()]

    user_fingerprint = fingerprints(user_line)[0]
    assert fingerprints(content) == [user_fingerprint, real_key.fingerprint(), real_key.fingerprint()]
    assert fingerprints(remove_block(content, "r1")) == [user_fingerprint]


# --- properties -----------------------------------------------------------------------------------------------

REQUEST_IDS = st.sampled_from(["1", "12", "r1", "A_b-9"]) | st.from_regex(r"[A-Za-z0-9_-]{1,12}", fullmatch=True)
MANAGED_LINES = st.sampled_from([KEY_A, KEY_B, b'cert-authority,principals="a" ' + KEY_A]).map(bytes.decode) | (
    st.from_regex(r"[A-Za-z0-9][ -~]{0,30}", fullmatch=True)
)
FOREIGN_BODIES = st.sampled_from(
    [
        b"",
        b"   ",
        b"\r",
        b"# RequestID: 1",
        b"# RequestID: 12",
        b"# RequestID: r1",
        b"# RequestID: other",
        b"ssh-ed25519 AAAA# RequestID: 12",
        b"# comment",
        USER_KEY,
        KEY_A,
        b"\xff\xfe\x00",
    ]
) | st.binary(max_size=24).map(lambda raw: raw.replace(b"\n", b""))
ENDINGS = st.sampled_from([b"\n", b"\r\n"])


@st.composite
def files(draw: st.DrawFn) -> bytes:
    """Any file: arbitrary lines, foreign markers, CRLF, with or without a final newline."""
    lines = draw(st.lists(st.tuples(FOREIGN_BODIES, ENDINGS), max_size=8))
    content = b"".join(body + ending for body, ending in lines)
    return content.removesuffix(b"\n") if draw(st.booleans()) else content


def holds_marker_of(content: bytes, request_id: str) -> bool:
    """Whether any line ends with this id's marker (whole-line or glued mid-line), as the scanner would see it."""
    return any(line.removesuffix(b"\r").endswith(marker(request_id)) for line in content.split(b"\n"))


@given(files(), REQUEST_IDS, MANAGED_LINES)
def test_add_then_remove_restores_the_file_byte_for_byte(content: bytes, request_id: str, line: str) -> None:
    assume(not holds_marker_of(content, request_id))
    added = add_block(content, request_id, line)
    assert added.startswith(content)
    assert added.endswith(b"\n") == (content.endswith(b"\n") or content == b"")
    assert remove_block(added, request_id) == content


@given(files(), REQUEST_IDS, MANAGED_LINES)
def test_add_is_idempotent(content: bytes, request_id: str, line: str) -> None:
    once = add_block(content, request_id, line)
    assert add_block(once, request_id, line) == once
    assert line.encode() in blocks(once)[request_id]


@st.composite
def files_with_pairs(draw: st.DrawFn, request_id: str) -> tuple[bytes, bytes]:
    """A file built from foreign lines and pairs of `request_id`, and the same file without those pairs."""
    segments = draw(
        st.lists(
            st.one_of(
                st.tuples(st.just(False), FOREIGN_BODIES, ENDINGS),
                st.tuples(st.just(True), MANAGED_LINES.map(str.encode), ENDINGS),
            ),
            max_size=10,
        )
    )
    whole, expected = b"", b""
    for is_pair, body, ending in segments:
        if is_pair:
            whole += marker(request_id) + ending + body + ending
        else:
            assume(not body.removesuffix(b"\r").endswith(marker(request_id)))
            whole += body + ending
            expected += body + ending
    if draw(st.booleans()) and whole.endswith(b"\n"):
        # Without a final newline. If the last line is foreign, it simply loses its "\n". If it belongs to a pair,
        # the documented rule applies: the result keeps lacking a final newline, so the kept last line loses its own.
        whole = whole[:-1]
        expected = expected.removesuffix(b"\n")
    return whole, expected


@given(st.data(), REQUEST_IDS)
def test_remove_takes_exactly_the_pairs_and_nothing_else(data: st.DataObject, request_id: str) -> None:
    whole, expected = data.draw(files_with_pairs(request_id))
    assert remove_block(whole, request_id) == expected


@given(files_with_pairs("12"), st.sampled_from(["1", "2", "r1", "other"]))
def test_removing_one_id_keeps_every_pair_of_the_others(built: tuple[bytes, bytes], other: str) -> None:
    whole, _expected = built
    before = blocks(whole)
    after = blocks(remove_block(whole, other))
    for request_id, lines in before.items():
        if request_id != other:
            kept = after.get(request_id, [])
            assert all(kept.count(line) >= lines.count(line) for line in lines), request_id
    assert other not in after
