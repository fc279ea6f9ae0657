"""OpenSSH public key parsing, checked against the real ssh-keygen (upstream-protocol.md §12 item 11)."""

from __future__ import annotations

import base64
import shutil
import subprocess
import unicodedata
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.sshkeys import KNOWN_KEY_TYPES, MAX_KEY_TEXT, SshPublicKey, parse_public_key

SSH_KEYGEN = shutil.which("ssh-keygen") or "/usr/bin/ssh-keygen"
GENERATED_TYPES = {
    "ssh-ed25519": ["-t", "ed25519"],
    "ssh-rsa": ["-t", "rsa", "-b", "2048"],
    "ecdsa-sha2-nistp256": ["-t", "ecdsa", "-b", "256"],
    "ecdsa-sha2-nistp384": ["-t", "ecdsa", "-b", "384"],
    "ecdsa-sha2-nistp521": ["-t", "ecdsa", "-b", "521"],
}


def ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def keygen_fingerprint(pub_file: Path) -> str | None:
    """`ssh-keygen -l -E sha256` of a .pub file; None when ssh-keygen refuses the file."""
    done = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(pub_file)], capture_output=True, text=True, check=False
    )
    return done.stdout.split()[1] if done.returncode == 0 else None


@pytest.fixture(scope="module")
def real_keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One real key per generatable type, made by ssh-keygen, as .pub files."""
    directory = tmp_path_factory.mktemp("keys")
    made: dict[str, Path] = {}
    for key_type, options in GENERATED_TYPES.items():
        private = directory / key_type
        subprocess.run(
            [SSH_KEYGEN, "-q", *options, "-N", "", "-C", f"alice@laptop {key_type}", "-f", str(private)], check=True
        )
        made[key_type] = directory / f"{key_type}.pub"
    return made


def blob_of(pub_file: Path) -> bytes:
    return base64.b64decode(pub_file.read_text().split()[1])


@pytest.mark.parametrize("key_type", sorted(GENERATED_TYPES))
def test_real_keys_parse_and_fingerprint_like_ssh_keygen(real_keys: dict[str, Path], key_type: str) -> None:
    text = real_keys[key_type].read_text().strip()
    key = parse_public_key(text, field="publicKey")
    assert key.key_type == key_type
    assert key.comment == f"alice@laptop {key_type}"
    assert key.line() == text
    assert key.fingerprint() == keygen_fingerprint(real_keys[key_type])


def security_key_line(key_type: str, real_keys: dict[str, Path]) -> str:
    """A FIDO key line built by hand from a real key's point (generating one needs a token)."""
    if key_type == "sk-ssh-ed25519@openssh.com":
        point = blob_of(real_keys["ssh-ed25519"])[4 + len("ssh-ed25519") + 4 :]
        blob = ssh_string(key_type.encode()) + ssh_string(point) + ssh_string(b"ssh:")
    else:
        rest = blob_of(real_keys["ecdsa-sha2-nistp256"])[4 + len("ecdsa-sha2-nistp256") :]
        blob = ssh_string(key_type.encode()) + rest + ssh_string(b"ssh:")
    return f"{key_type} {base64.b64encode(blob).decode()} fido"


@pytest.mark.parametrize("key_type", ["sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"])
def test_security_keys_fingerprint_like_ssh_keygen(real_keys: dict[str, Path], key_type: str, tmp_path: Path) -> None:
    text = security_key_line(key_type, real_keys)
    pub = tmp_path / "sk.pub"
    pub.write_text(text + "\n")
    key = parse_public_key(text, field="publicKey")
    assert key.line() == text
    assert key.fingerprint() == keygen_fingerprint(pub)


def test_every_known_type_is_covered() -> None:
    assert set(GENERATED_TYPES) | {"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com"} == set(
        KNOWN_KEY_TYPES
    )


def test_separators_are_normalised_to_single_spaces(real_keys: dict[str, Path]) -> None:
    key_type, data, *_ = real_keys["ssh-ed25519"].read_text().split()
    key = parse_public_key(f"  {key_type} \t {data}   my   laptop  ", field="publicKey")
    assert key.line() == f"{key_type} {data} my laptop"
    assert parse_public_key(f"{key_type} {data}", field="publicKey").line() == f"{key_type} {data}"


def test_comment_may_be_printable_utf8(real_keys: dict[str, Path]) -> None:
    key_type, data, *_ = real_keys["ssh-ed25519"].read_text().split()
    assert parse_public_key(f"{key_type} {data} jürgen@büro ключ", field="publicKey").comment == "jürgen@büro ключ"


def refused(text: str, field: str = "publicKey") -> str:
    with pytest.raises(RequestInvalid) as caught:
        parse_public_key(text, field=field)
    assert caught.value.field == field
    assert field in caught.value.message
    return caught.value.message


def test_hostile_lines_are_refused_naming_the_field(real_keys: dict[str, Path]) -> None:
    line = real_keys["ssh-ed25519"].read_text().strip()
    key_type, data, _comment = line.split(" ", 2)
    assert "one line" in refused(line + "\n")
    assert "one line" in refused(f"{line}\nssh-ed25519 {data} second")
    assert "one line" in refused(f"{line}\r")
    assert "NUL" in refused(f"{key_type} {data}\0 x")
    assert "control" in refused(f"{key_type} {data} a\x1b[31mred")
    assert "control" in refused(f"{key_type}\x0b{data}")
    assert "options" in refused(f'command="/bin/sh" {line}')
    assert "options" in refused(f'from="10.0.0.0/8",no-pty {line}')
    assert "options" in refused(f"restrict {line}")
    assert "options" in refused(f"cert-authority {line}", field="caPublicKey")
    assert "options" in refused(f"-oProxyCommand=x {line}")  # grep/ssh-keygen option injection (§12 item 10)
    assert "unknown key type" in refused(f"-o {line}")
    assert "unknown key type" in refused(f"--help {data}")
    assert "unknown key type" in refused(f"ssh\u2010ed25519 {data}")  # a Unicode hyphen look-alike
    assert "unknown key type" in refused(f"SSH-ED25519 {data}")
    assert "DSA" in refused(f"ssh-dss {data}")
    assert "certificate" in refused(f"ssh-ed25519-cert-v01@openssh.com {data}")
    assert "missing" in refused(key_type)
    assert "empty" in refused("   ")
    assert "longer than" in refused(f"{line} {'x' * MAX_KEY_TEXT}")
    assert "longer than" in refused(f"{key_type} {data} {'é' * (MAX_KEY_TEXT // 2)}")  # 16 KiB counted in bytes


def test_comment_characters_that_could_mislead_are_refused(real_keys: dict[str, Path]) -> None:
    key_type, data, *_ = real_keys["ssh-ed25519"].read_text().split()
    for sneaky in ("\u202e", "\u200b", "\u2028", "\u00a0", "\ud800", "\ue000", "\x7f", "\x85", "a\tb"):
        message = refused(f"{key_type} {data} x{sneaky}y")
        assert "comment contains" in message or "control character" in message, sneaky


def test_base64_must_be_strict_and_canonical(real_keys: dict[str, Path]) -> None:
    key_type, data, *_ = real_keys["ecdsa-sha2-nistp256"].read_text().split()
    assert data.endswith("=") and not data.endswith("==")  # 104 bytes: the last character carries 2 stray bits
    assert "base64" in refused(f"{key_type} {data[:-1]}")
    assert "base64" in refused(f"{key_type} {data}=")
    assert "base64" in refused(f"{key_type} {data[:10]}*{data[11:]}")
    assert "base64" in refused(f"{key_type} {data[:10]}\u0410{data[11:]}")  # Cyrillic A
    # The same bytes with stray bits in the final character: Python would decode it, OpenSSH would not.
    stray = data[:-2] + chr(ord(data[-2]) + 1) + data[-1]
    assert base64.b64decode(stray) == base64.b64decode(data)
    assert "canonical" in refused(f"{key_type} {stray}")


def test_a_key_of_another_type_under_a_line_type_is_refused(real_keys: dict[str, Path]) -> None:
    ed_data = real_keys["ssh-ed25519"].read_text().split()[1]
    rsa_data = real_keys["ssh-rsa"].read_text().split()[1]
    assert "not ssh-rsa" in refused(f"ssh-rsa {ed_data}")
    assert "not ssh-ed25519" in refused(f"ssh-ed25519 {rsa_data}")
    p384 = real_keys["ecdsa-sha2-nistp384"].read_text().split()[1]
    assert "not ecdsa-sha2-nistp256" in refused(f"ecdsa-sha2-nistp256 {p384}")


def broken_blobs(real_keys: dict[str, Path]) -> dict[str, tuple[str, bytes]]:
    ed = blob_of(real_keys["ssh-ed25519"])
    ed_type = ssh_string(b"ssh-ed25519")
    ed_point = ed[len(ed_type) + 4 :]
    ec = blob_of(real_keys["ecdsa-sha2-nistp256"])
    ec_type = ssh_string(b"ecdsa-sha2-nistp256")
    ec_point = ec[len(ec_type) + len(ssh_string(b"nistp256")) + 4 :]
    small_modulus = (1 << 511) | 1
    return {
        "ed25519 key of 31 bytes": ("ssh-ed25519", ed_type + ssh_string(ed_point[:31])),
        "ed25519 with trailing bytes": ("ssh-ed25519", ed + b"\0"),
        "truncated length": ("ssh-ed25519", ed[:-1]),
        "type string only": ("ssh-ed25519", ed_type),
        "ecdsa with a compressed point": (
            "ecdsa-sha2-nistp256",
            ec_type + ssh_string(b"nistp256") + ssh_string(b"\x02" + ec_point[1:33]),
        ),
        "ecdsa naming another curve": (
            "ecdsa-sha2-nistp256",
            ec_type + ssh_string(b"nistp384") + ssh_string(ec_point),
        ),
        "ecdsa with an empty curve": ("ecdsa-sha2-nistp256", ec_type + ssh_string(b"") + ssh_string(ec_point)),
        "rsa with a 512-bit modulus": (
            "ssh-rsa",
            ssh_string(b"ssh-rsa") + ssh_string(b"\x01\x00\x01") + ssh_string(small_modulus.to_bytes(64, "big")),
        ),
        "security key without application": (
            "sk-ssh-ed25519@openssh.com",
            ssh_string(b"sk-ssh-ed25519@openssh.com") + ssh_string(ed_point),
        ),
    }


def test_structurally_broken_blobs_are_refused_and_ssh_keygen_agrees(
    real_keys: dict[str, Path], tmp_path: Path
) -> None:
    for name, (key_type, blob) in broken_blobs(real_keys).items():
        text = f"{key_type} {base64.b64encode(blob).decode()}"
        assert "not a valid" in refused(text), name
        pub = tmp_path / "broken.pub"
        pub.write_text(text + "\n")
        assert keygen_fingerprint(pub) is None, f"ssh-keygen accepts {name}, so it is not a broken key"


def test_constructor_keeps_the_invariants(real_keys: dict[str, Path]) -> None:
    key = parse_public_key(real_keys["ssh-ed25519"].read_text().strip(), field="publicKey")
    with pytest.raises(ValueError, match="unknown key type"):
        SshPublicKey('command="x" ssh-ed25519', key.blob, "")
    with pytest.raises(ValueError, match="comment"):
        SshPublicKey(key.key_type, key.blob, "x\nssh-ed25519 AAAA")
    with pytest.raises(ValueError, match="ends"):
        SshPublicKey(key.key_type, key.blob[:-1], "")


@given(st.text(max_size=300))
def test_arbitrary_text_is_a_key_or_a_request_invalid(text: str) -> None:
    try:
        key = parse_public_key(text, field="publicKey")
    except RequestInvalid as exc:
        assert exc.field == "publicKey"
        assert "\n" not in exc.message
    else:
        assert parse_public_key(key.line(), field="publicKey") == key


ED25519_BLOB = ssh_string(b"ssh-ed25519") + ssh_string(bytes(range(32)))


def misleading(character: str) -> bool:
    """The oracle for comments: controls, invisibles and separators other than a plain space are refused."""
    category = unicodedata.category(character)
    return category.startswith("C") or (category.startswith("Z") and character != " ")


@given(st.text(max_size=60))
def test_comments_round_trip_or_are_refused(comment: str) -> None:
    text = f"ssh-ed25519 {base64.b64encode(ED25519_BLOB).decode()} {comment}"
    # Blanks around the whole line are not part of the comment: a trailing tab is stripped, not refused.
    if any(misleading(c) for c in comment.strip(" \t")):
        with pytest.raises(RequestInvalid) as caught:
            parse_public_key(text, field="publicKey")
        assert caught.value.field == "publicKey"
        return
    key = parse_public_key(text, field="publicKey")
    normalised = " ".join(comment.split())
    assert key.comment == normalised
    assert key.line() == f"ssh-ed25519 {base64.b64encode(ED25519_BLOB).decode()} {normalised}".rstrip(" ")
    assert parse_public_key(key.line(), field="publicKey") == key
