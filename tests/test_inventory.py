"""host.inventory: listUsers and runAudit on fake trees in tmp_path, checked against the real tools where they exist
(ssh-keygen -lf for fingerprints, lastlog for the last-login table) and against upstream's exact text layout."""

from __future__ import annotations

import base64
import grp
import os
import pwd
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.core import audit_text
from p0_ssh_agent.host import inventory
from p0_ssh_agent.host.inventory import (
    MAX_OUTPUT_BYTES,
    TRUNCATION_MARKER,
    cap_output,
    fingerprint_lines,
    key_bits,
    list_users,
    read_lastlog,
    run_audit,
)
from p0_ssh_agent.host.plainfile import MAX_FILE_BYTES, FileTooLarge

SSH_KEYGEN = shutil.which("ssh-keygen")
UNSHARE = shutil.which("unshare")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen is not installed")


def passwd(name: str, uid: int, shell: str, home: str = "") -> pwd.struct_passwd:
    return pwd.struct_passwd((name, "x", uid, uid, f"{name} gecos", home or f"/home/{name}", shell))


def group(name: str, gid: int, members: list[str]) -> grp.struct_group:
    return grp.struct_group((name, "x", gid, members))


# --- listUsers ------------------------------------------------------------------------------------------------------


def test_list_users_keeps_login_shells_in_order() -> None:
    entries = [
        passwd("root", 0, "/bin/bash"),
        passwd("daemon", 1, "/usr/sbin/nologin"),
        passwd("sync", 4, "/bin/sync"),
        passwd("svc", 100, "/sbin/nologin"),
        passwd("ghost", 101, "/bin/false"),
        passwd("ghost2", 102, "/usr/bin/false"),
        passwd("empty", 103, ""),
        passwd("blank", 104, "   "),
        passwd("alice", 65536, "/bin/bash"),
        passwd("zed", 1000, "/usr/bin/zsh"),
    ]
    assert list_users(entries) == ["root", "sync", "alice", "zed"]


def test_list_users_reads_this_host_through_nss() -> None:
    expected = [e.pw_name for e in pwd.getpwall() if e.pw_shell.strip() not in ("", *inventory.NOLOGIN_SHELLS)]
    assert list_users() == expected
    assert "root" in list_users()  # Debian's root has /bin/bash


# --- the 1 MiB cap --------------------------------------------------------------------------------------------------


def test_cap_output_leaves_small_text_alone() -> None:
    text = "a\n" * 100
    assert cap_output(text) is text
    exactly = "x" * (MAX_OUTPUT_BYTES - 1) + "\n"
    assert cap_output(exactly) == exactly


def test_cap_output_cuts_at_a_line_and_appends_the_marker() -> None:
    line = "0123456789" * 10 + "\n"
    text = line * (MAX_OUTPUT_BYTES // len(line) + 50)
    capped = cap_output(text)
    assert len(capped.encode()) <= MAX_OUTPUT_BYTES
    body, marker_line = capped[: -len(TRUNCATION_MARKER) - 1], capped[-len(TRUNCATION_MARKER) - 1 :]
    assert marker_line == TRUNCATION_MARKER + "\n"
    assert body and set(body.split("\n")[:-1]) == {line.rstrip("\n")}  # only whole lines kept
    assert text.startswith(body)


def test_cap_output_on_one_huge_multibyte_line_keeps_valid_utf8() -> None:
    text = "é" * MAX_OUTPUT_BYTES  # 2 bytes each, no newline anywhere
    capped = cap_output(text)
    data = capped.encode()
    assert len(data) <= MAX_OUTPUT_BYTES
    assert capped.endswith("\n" + TRUNCATION_MARKER + "\n")
    assert set(capped.split("\n")[0]) == {"é"}


def test_cap_output_with_a_small_limit() -> None:
    capped = cap_output("line one\nline two\nline three\n" * 10, limit=60)
    assert capped == "line one\nline two\n" + TRUNCATION_MARKER + "\n"  # 57 bytes: the next line would not fit


# --- host key fingerprints ------------------------------------------------------------------------------------------


def keygen(tmp_path: Path, name: str, *args: str, comment: str = "host@example") -> Path:
    assert SSH_KEYGEN is not None
    path = tmp_path / name
    subprocess.run([SSH_KEYGEN, "-q", "-N", "", "-C", comment, "-f", str(path), *args], check=True)
    return path.with_name(name + ".pub")


def ssh_keygen_lf(path: Path) -> bytes:
    assert SSH_KEYGEN is not None
    return subprocess.run([SSH_KEYGEN, "-lf", str(path)], capture_output=True, check=False).stdout


@needs_ssh_keygen
@pytest.mark.parametrize(
    ("name", "args", "bits"),
    [
        ("ed25519", ("-t", "ed25519"), 256),
        ("rsa1024", ("-t", "rsa", "-b", "1024"), 1024),
        ("rsa2048", ("-t", "rsa", "-b", "2048"), 2048),
        ("ecdsa256", ("-t", "ecdsa", "-b", "256"), 256),
        ("ecdsa384", ("-t", "ecdsa", "-b", "384"), 384),
        ("ecdsa521", ("-t", "ecdsa", "-b", "521"), 521),
    ],
)
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, name: str, args: tuple[str, ...], bits: int) -> None:
    pub = keygen(tmp_path, name, *args, comment=f"root@{name}  two  spaces ")
    mine = "".join(line + "\n" for line in fingerprint_lines(pub.read_text()))
    assert mine.encode() == ssh_keygen_lf(pub)
    assert mine.startswith(f"{bits} SHA256:")


@needs_ssh_keygen
@pytest.mark.parametrize(
    "layout",
    [
        "{key} \n",  # only whitespace after the blob: "no comment"
        "{key}\t\tfoo bar\n",  # tabs before the comment are skipped
        "   {key}   two  \r\n",  # leading blanks skipped; trailing blanks and CR kept, as ssh-keygen does
        "# a comment\n\n{key}  c\n",
        "{key} first\n{key} second\n",  # every key line is printed
        'from="10.0.0.1,::1",no-pty {key} with options\n',
        "garbage line\n{key} after garbage\n",
        "ssh-ed25519 !!!notbase64 x\n",
        "",
    ],
)
def test_fingerprint_edge_lines_match_ssh_keygen(tmp_path: Path, layout: str) -> None:
    pub = keygen(tmp_path, "k", "-t", "ed25519", comment="")
    key = " ".join(pub.read_text().split()[:2])
    pub.write_bytes(layout.format(key=key).encode())
    mine = "".join(line + "\n" for line in fingerprint_lines(pub.read_bytes().decode()))
    assert mine.encode() == ssh_keygen_lf(pub)


def test_key_bits_refuses_a_blob_of_another_type() -> None:
    blob = struct.pack(">I", 11) + b"ssh-ed25519" + struct.pack(">I", 32) + b"\1" * 32
    assert key_bits("ssh-ed25519", blob) == 256
    with pytest.raises(ValueError, match="does not match"):
        key_bits("ssh-rsa", blob)
    with pytest.raises(ValueError, match="truncated"):
        key_bits("ssh-ed25519", blob[:10])
    line = "ssh-rsa " + base64.b64encode(blob).decode() + " liar"
    assert fingerprint_lines(line) == []


# --- last login -----------------------------------------------------------------------------------------------------


@pytest.fixture
def utc(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """lastlog prints local time: pin the zone (tzset makes the C library notice) and restore it afterwards."""
    monkeypatch.setenv("TZ", "UTC")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


def lastlog_record(when: int, line: str, host: str) -> bytes:
    return struct.pack("=i32s256s", when, line.encode(), host.encode())


def write_lastlog(path: Path, records: dict[int, bytes]) -> None:
    with path.open("wb") as f:
        for uid, record in sorted(records.items()):
            f.seek(uid * len(record))
            f.write(record)


@pytest.mark.usefixtures("utc")
def test_read_lastlog_renders_like_lastlog(tmp_path: Path) -> None:
    path = tmp_path / "lastlog"
    write_lastlog(path, {0: lastlog_record(1710000000, "pts/0", "192.0.2.7"), 2: lastlog_record(0, "", "")})
    entries = [passwd("root", 0, "/bin/bash"), passwd("a-very-long-user-name", 1, "/bin/sh"), passwd("x", 5000, "")]
    assert read_lastlog(path, entries) == (
        "Username         Port     From" + " " * 39 + "Latest\n"
        "root             pts/0    192.0.2.7" + " " * 33 + "Sat Mar  9 16:00:00 +0000 2024\n"
        "a-very-long-user-name          " + " " * 42 + "**Never logged in**\n"
        "x                         " + " " * 42 + "**Never logged in**\n"
    )
    assert read_lastlog(tmp_path / "missing", entries) == ""


@pytest.mark.skipif(
    os.geteuid() != 0 or not Path("/usr/bin/lastlog").exists() or UNSHARE is None,
    reason="needs root, unshare and shadow's lastlog to compare with the real tool",
)
@pytest.mark.usefixtures("utc")
def test_read_lastlog_matches_the_real_tool(tmp_path: Path) -> None:
    """Bind our file over /var/log/lastlog in a private mount namespace and let shadow's lastlog read it."""
    path = tmp_path / "lastlog"
    root_uid = 0
    write_lastlog(path, {root_uid: lastlog_record(1710000000, "pts/3", "2001:db8::1")})
    entries = [pwd.getpwuid(0)]
    script = 'mount --bind "$1" /var/log/lastlog && exec /usr/bin/lastlog -u root'
    assert UNSHARE is not None
    real = subprocess.run(
        [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", script, "sh", str(path)],
        capture_output=True,
        text=True,
        env={"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "TZ": "UTC"},
        check=False,
    )
    if real.returncode != 0:
        pytest.skip(f"cannot make a private mount namespace here: {real.stderr.strip()}")
    assert read_lastlog(path, entries) == real.stdout


# --- runAudit -------------------------------------------------------------------------------------------------------


def make_tree(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    (root / "etc" / "ssh").mkdir(parents=True)
    (root / "etc" / "ssh" / "sshd_config").write_text("PermitRootLogin no\nUsePAM yes")  # no final newline
    (root / "etc" / "sudoers").write_text("root ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n")
    (root / "etc" / "sudoers.d").mkdir()
    (root / "etc" / "sudoers.d" / "b-rule").write_text("bob ALL=(ALL) NOPASSWD: ALL\n")
    (root / "etc" / "sudoers.d" / "a-rule").write_text("alice ALL=(ALL) ALL\n")
    (root / "etc" / "sudoers.d" / ".hidden").write_text("never shown\n")
    (root / "etc" / "sudoers.d" / "subdir").mkdir()  # cat of a directory fails silently upstream
    (root / "etc" / "sudoers-p0").write_text("not in the audit\n")  # upstream's audit does not read it either
    secret = root / "etc" / "shadow"
    secret.write_text("root:$6$SECRET-HASH:19000:0:99999:7:::\n")
    home = root / "home"
    for user, keys in (("alice", "ssh-ed25519 AAAAalice alice@laptop\n"), ("carol", "ssh-ed25519 AAAAcarol c\n")):
        (home / user / ".ssh").mkdir(parents=True)
        (home / user / ".ssh" / "authorized_keys").write_text(keys)
    (home / "bob" / ".ssh").mkdir(parents=True)
    (home / "bob" / ".ssh" / "authorized_keys").symlink_to(secret)  # the Go agent would dump /etc/shadow here
    (home / "dave").mkdir()  # no .ssh: no USER line
    (home / "eve").mkdir()
    (home / "eve" / ".ssh").symlink_to(root / "etc")  # .ssh itself redirected
    (home / "frank" / ".ssh").mkdir(parents=True)
    os.mkfifo(home / "frank" / ".ssh" / "authorized_keys")  # would hang a naive reader
    (home / ".skel").mkdir()
    (root / "root" / ".ssh").mkdir(parents=True)
    (root / "root" / ".ssh" / "authorized_keys").write_text("ssh-ed25519 AAAAroot root@admin")
    return root


def test_run_audit_full_text(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    text = run_audit(
        root=root,
        passwd=[passwd("root", 0, "/bin/bash", "/root"), passwd("alice", 65536, "/bin/bash")],
        groups=[group("root", 0, []), group("p0", 65536, ["alice", "bob"])],
        last_login=lambda: "LASTLOG TEXT\n",
    )
    assert text == (
        "===SSHD_CONFIG===\n"
        "PermitRootLogin no\nUsePAM yes\n"
        "===AUTHORIZED_KEYS===\n"
        "USER:alice\nssh-ed25519 AAAAalice alice@laptop\n"
        "USER:bob\n# p0-ssh-agent: skipped: .ssh/authorized_keys is a symbolic link\n"
        "USER:carol\nssh-ed25519 AAAAcarol c\n"
        "USER:eve\n# p0-ssh-agent: skipped: .ssh is a symbolic link\n"
        f"USER:frank\n# p0-ssh-agent: skipped: refusing {root}/home/frank/.ssh/authorized_keys: it is a FIFO, "
        "not a regular file\n"
        "USER:root\nssh-ed25519 AAAAroot root@admin\n"
        "===PASSWD===\n"
        "root:x:0:0:root gecos:/root:/bin/bash\n"
        "alice:x:65536:65536:alice gecos:/home/alice:/bin/bash\n"
        "===GROUPS===\n"
        "root:x:0:\n"
        "p0:x:65536:alice,bob\n"
        "===SUDOERS===\n"
        "root ALL=(ALL:ALL) ALL\n@includedir /etc/sudoers.d\n"
        "alice ALL=(ALL) ALL\n"
        "bob ALL=(ALL) NOPASSWD: ALL\n"
        "===HOST_KEYS===\n"
        "===LAST_LOGIN===\n"
        "LASTLOG TEXT\n"
    )
    assert "SECRET-HASH" not in text


@needs_ssh_keygen
def test_run_audit_host_keys_match_ssh_keygen(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    ssh_dir = root / "etc" / "ssh"
    pubs = [
        keygen(ssh_dir, "ssh_host_ed25519_key", "-t", "ed25519"),
        keygen(ssh_dir, "ssh_host_ecdsa_key", "-t", "ecdsa"),
        keygen(ssh_dir, "ssh_host_rsa_key", "-t", "rsa", "-b", "2048"),
    ]
    (ssh_dir / "ssh_host_key.pub").write_text(pubs[0].read_text())  # not matched by ssh_host_*_key.pub
    (ssh_dir / "ssh_host_broken_key.pub").write_text("not a key\n")
    text = run_audit(root=root, passwd=[], groups=[], last_login=lambda: "")
    section = text.split("===HOST_KEYS===\n", 1)[1].split("===LAST_LOGIN===", 1)[0]
    expected = b"".join(ssh_keygen_lf(pub) for pub in sorted(pubs))
    assert section.encode() == expected
    assert len(section.splitlines()) == 3


def test_run_audit_on_an_empty_root(tmp_path: Path) -> None:
    text = run_audit(root=tmp_path, passwd=[], groups=[], last_login=lambda: "")
    assert text == (
        "===SSHD_CONFIG===\n===AUTHORIZED_KEYS===\n===PASSWD===\n===GROUPS===\n===SUDOERS===\n"
        "===HOST_KEYS===\n===LAST_LOGIN===\n"
    )


def test_run_audit_caps_huge_inputs(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    many = [passwd(f"user{i:06d}", 70000 + i, "/bin/bash") for i in range(40000)]
    text = run_audit(root=root, passwd=many, groups=[], last_login=lambda: "")
    assert len(text.encode()) <= MAX_OUTPUT_BYTES
    assert text.endswith(TRUNCATION_MARKER + "\n")
    assert text.startswith("===SSHD_CONFIG===\n")


def test_read_capped_refuses_a_file_above_the_limit_whole(tmp_path: Path) -> None:
    exact = tmp_path / "exact"
    exact.write_bytes(b"x" * MAX_FILE_BYTES)
    assert inventory.read_capped(exact) == b"x" * MAX_FILE_BYTES
    big = tmp_path / "big"
    big.write_bytes(b"x" * (MAX_FILE_BYTES + 1))
    with pytest.raises(FileTooLarge, match=f"more than {MAX_FILE_BYTES} bytes"):
        inventory.read_capped(big)
    link = tmp_path / "link"
    link.symlink_to(exact)
    assert inventory.read_capped(link) == b"x" * MAX_FILE_BYTES  # a root-owned file may be a symlink
    assert inventory.read_capped(link, user_file="link") is None  # a user's may not
    assert inventory.read_capped(tmp_path) is None  # a directory is not a file
    assert inventory.read_capped(tmp_path / "nope") is None


def test_run_audit_notes_files_too_big_to_read_instead_of_cutting_them(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    os.truncate(root / "home" / "alice" / ".ssh" / "authorized_keys", 64 << 30)  # sparse: no disk used
    (root / "etc" / "sudoers.d" / "a-rule").write_bytes(b"# big\n" * MAX_FILE_BYTES)
    text = run_audit(root=root, passwd=[], groups=[], last_login=lambda: "")
    keys = f"refusing {root}/home/alice/.ssh/authorized_keys: it holds more than {MAX_FILE_BYTES} bytes"
    assert f"USER:alice\n# p0-ssh-agent: skipped: {keys}, the most the agent reads; shrink it\nUSER:bob\n" in text
    rule = f"# p0-ssh-agent: skipped: refusing {root}/etc/sudoers.d/a-rule: it holds more than {MAX_FILE_BYTES}"
    assert rule in text and "# big" not in text and "\0" not in text


def test_run_audit_refuses_a_hard_linked_authorized_keys(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    keys = root / "home" / "carol" / ".ssh" / "authorized_keys"
    keys.unlink()
    os.link(root / "etc" / "shadow", keys)  # what fs.protected_hardlinks=0 lets any user do
    text = run_audit(root=root, passwd=[], groups=[], last_login=lambda: "")
    assert "SECRET-HASH" not in text
    assert f"USER:carol\n# p0-ssh-agent: skipped: refusing {keys}: it has 2 hard links" in text


FORGED = (
    "ssh-ed25519 AAAAmine me@laptop\n"
    "===SUDOERS===\n"
    "mallory ALL=(ALL) NOPASSWD: ALL\n"
    "USER:root\n"
    "ssh-ed25519 AAAAforged root@forged\n"
    "  === PASSWD ===\n"
    "user:admin\n"
    ">===HOST_KEYS===\n"
    "a comment\r===GROUPS===\n"
    "x\u2028===LAST_LOGIN==="
)
SECTIONS = ["SSHD_CONFIG", "AUTHORIZED_KEYS", "PASSWD", "GROUPS", "SUDOERS", "HOST_KEYS", "LAST_LOGIN"]


def markers(text: str) -> list[str]:
    """What a lenient parser takes for markers: any line (split at every line break str.splitlines knows),
    stripped, that starts with === or USER:."""
    found = []
    for line in text.splitlines():
        stripped = line.strip()
        if stripped.startswith("===") or stripped.upper().startswith("USER:"):
            found.append(stripped)
    return found


def test_run_audit_content_cannot_fake_a_section_or_a_user(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    (root / "home" / "alice" / ".ssh" / "authorized_keys").write_text(FORGED)
    (root / "etc" / "ssh" / "sshd_config").write_text("===AUTHORIZED_KEYS===\nUSER:alice\n")
    gecos = passwd("mallory", 70000, "/bin/bash")
    text = run_audit(
        root=root,
        passwd=[pwd.struct_passwd((*gecos[:4], "x\r===SUDOERS===", *gecos[5:]))],
        groups=[],
        last_login=lambda: "USER:root\n",
    )
    assert markers(text) == [
        "===SSHD_CONFIG===",
        "===AUTHORIZED_KEYS===",
        "USER:alice",
        "USER:bob",
        "USER:carol",
        "USER:eve",
        "USER:frank",
        "USER:root",
        *(f"==={name}===" for name in SECTIONS[2:]),
    ]
    alice = text.split("\nUSER:alice\n", 1)[1].split("\nUSER:bob\n", 1)[0] + "\n"
    assert audit_text.unescape(alice) == FORGED + "\n"  # reversible: the file comes back byte for byte
    assert alice.startswith("ssh-ed25519 AAAAmine me@laptop\n>===SUDOERS===\nmallory ALL")


def test_run_audit_of_ordinary_content_is_unchanged(tmp_path: Path) -> None:
    root = make_tree(tmp_path)
    text = run_audit(root=root, passwd=[], groups=[], last_login=lambda: "")
    assert audit_text.unescape(text) == text  # nothing in the ordinary tree looks like a marker
    assert "\n>" not in text


def test_run_audit_on_this_host_has_every_section_once() -> None:
    text = run_audit()
    headers = [line for line in text.splitlines() if line.startswith("===") and line.endswith("===")]
    assert headers == [
        "===SSHD_CONFIG===",
        "===AUTHORIZED_KEYS===",
        "===PASSWD===",
        "===GROUPS===",
        "===SUDOERS===",
        "===HOST_KEYS===",
        "===LAST_LOGIN===",
    ]
    passwd_section = text.split("===PASSWD===\n", 1)[1].split("===GROUPS===", 1)[0]
    assert passwd_section.startswith("root:x:0:0:")


def test_run_audit_shows_the_key_stores_lines_in_the_users_section(tmp_path: Path) -> None:
    """Issue 14 item 6: with keyStore store sshd reads the agent's accounts' keys from the store, so what grants
    access is in the audit: under the user's one USER section, after their ~/.ssh/authorized_keys; a store file
    with no home of that name gets a section of its own."""
    root = make_tree(tmp_path)
    key_dir = tmp_path / "keys"
    key_dir.mkdir()
    (key_dir / "alice").write_text("# RequestID: r1\nssh-ed25519 AAAAstored p0\n")
    (key_dir / "zed").write_text("# RequestID: r2\nssh-ed25519 AAAAzed p0")
    (key_dir / ".zed.tmp.0123456789abcdef").write_text("ssh-ed25519 AAAAtemp half-written")
    text = run_audit(root=root, passwd=[], groups=[], last_login=lambda: "", key_dir=key_dir)
    keys = text.split("===AUTHORIZED_KEYS===\n", 1)[1].split("===PASSWD===", 1)[0]
    assert keys.startswith(
        "USER:alice\nssh-ed25519 AAAAalice alice@laptop\n# RequestID: r1\nssh-ed25519 AAAAstored p0\nUSER:bob\n"
    )
    assert keys.endswith(
        "USER:root\nssh-ed25519 AAAAroot root@admin\nUSER:zed\n# RequestID: r2\nssh-ed25519 AAAAzed p0\n"
    )
    assert keys.count("USER:alice") == 1 and "AAAAtemp" not in text
    assert run_audit(root=root, passwd=[], groups=[], last_login=lambda: "") == run_audit(
        root=root, passwd=[], groups=[], last_login=lambda: "", key_dir=tmp_path / "missing"
    )
