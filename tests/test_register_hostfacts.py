"""Host facts for registration: fingerprints checked against the real `ssh-keygen -l -E sha256` for generated
keys of each type, the ed25519 > rsa > ecdsa preference, malformed keys skipped, the MAC-based fallback from a
/sys/class/net-shaped tree, and public-IP detection against real HTTP servers on 127.0.0.1."""

from __future__ import annotations

import base64
import hashlib
import http.server
import shutil
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from p0_ssh_agent.identity.hostfacts import (
    HostKey,
    detect_public_ip,
    fallback_host_key,
    fingerprint_of_line,
    hostname,
    interface_macs,
    read_host_key,
)

SSH_KEYGEN = shutil.which("ssh-keygen", path="/usr/bin:/bin")
needs_ssh_keygen = pytest.mark.skipif(SSH_KEYGEN is None, reason="ssh-keygen (openssh-client) is not installed")


def make_host_key(ssh_dir: Path, key_type: str) -> Path:
    assert SSH_KEYGEN is not None
    ssh_dir.mkdir(exist_ok=True)
    private = ssh_dir / f"ssh_host_{key_type}_key"
    argv = [SSH_KEYGEN, "-q", "-t", key_type, "-N", "", "-C", f"root@test-{key_type}", "-f", str(private)]
    if key_type == "rsa":
        argv[1:1] = ["-b", "1024"]  # the fingerprint rule does not depend on the size; 1024 bits is fast
    subprocess.run(argv, check=True, capture_output=True)
    return private.with_name(private.name + ".pub")


def ssh_keygen_fingerprint(pub: Path) -> str:
    assert SSH_KEYGEN is not None
    out = subprocess.run([SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(pub)], check=True, capture_output=True)
    return out.stdout.decode().split()[1]  # "256 SHA256:... comment (ED25519)"


@needs_ssh_keygen
@pytest.mark.parametrize("key_type", ["ed25519", "rsa", "ecdsa"])
def test_fingerprint_matches_ssh_keygen(tmp_path: Path, key_type: str) -> None:
    pub = make_host_key(tmp_path, key_type)
    expected = ssh_keygen_fingerprint(pub)
    assert expected.startswith("SHA256:")
    host_key = read_host_key(tmp_path)
    assert host_key == HostKey(expected, pub.read_text().strip())


@needs_ssh_keygen
def test_preference_is_ed25519_then_rsa_then_ecdsa(tmp_path: Path) -> None:
    ecdsa = make_host_key(tmp_path, "ecdsa")
    rsa = make_host_key(tmp_path, "rsa")
    found = read_host_key(tmp_path)
    assert found is not None and found.public_key.startswith("ssh-rsa ")
    ed25519 = make_host_key(tmp_path, "ed25519")
    found = read_host_key(tmp_path)
    assert found is not None and found.fingerprint == ssh_keygen_fingerprint(ed25519)
    # A broken first choice is skipped, not fatal.
    ed25519.write_text("ssh-ed25519 not-base64!!\n")
    found = read_host_key(tmp_path)
    assert found is not None and found.fingerprint == ssh_keygen_fingerprint(rsa)
    rsa.write_text("")
    found = read_host_key(tmp_path)
    assert found is not None and found.fingerprint == ssh_keygen_fingerprint(ecdsa)


@needs_ssh_keygen
def test_a_key_whose_blob_has_another_type_is_rejected(tmp_path: Path) -> None:
    pub = make_host_key(tmp_path, "rsa")
    blob = pub.read_text().split()[1]
    assert fingerprint_of_line(f"ssh-rsa {blob}") is not None
    assert fingerprint_of_line(f"ssh-ed25519 {blob}") is None  # the line lies about the type
    pub.rename(tmp_path / "ssh_host_ed25519_key.pub")
    (tmp_path / "ssh_host_ed25519_key.pub").write_text(f"ssh-ed25519 {blob} liar\n")
    assert read_host_key(tmp_path) is None


def test_malformed_lines_have_no_fingerprint() -> None:
    truncated = base64.b64encode(b"\x00\x00\x00\x0bssh-ed").decode()
    for line in ("", "ssh-ed25519", "ssh-ed25519 ====", "ssh-ed25519 AAAA", f"ssh-ed25519 {truncated}", "é é"):
        assert fingerprint_of_line(line) is None


def test_no_host_keys_at_all(tmp_path: Path) -> None:
    assert read_host_key(tmp_path / "missing") is None


def interface(net: Path, name: str, index: int, flags: str, address: str) -> None:
    entry = net / name
    entry.mkdir(parents=True)
    (entry / "ifindex").write_text(f"{index}\n")
    (entry / "flags").write_text(f"{flags}\n")
    (entry / "address").write_text(f"{address}\n")


def test_fallback_uses_the_macs_go_would_see(tmp_path: Path) -> None:
    net = tmp_path / "net"
    interface(net, "lo", 1, "0x9", "00:00:00:00:00:00")  # loopback: left out
    interface(net, "wlan0", 3, "0x1003", "aa:bb:cc:dd:ee:02")
    interface(net, "eth0", 2, "0x1003", "AA:BB:CC:DD:EE:01")  # index 2: comes before wlan0 despite its name
    interface(net, "docker0", 4, "0x1003", "02:42:00:00:00:09")  # docker*: left out
    interface(net, "tunl0", 5, "0x80", "00:00:00:00")  # all-zero: Go reports no address
    assert interface_macs(net) == ["aa:bb:cc:dd:ee:01", "aa:bb:cc:dd:ee:02", ""]
    key = fallback_host_key("web-1", net)
    material = b"web-1aa:bb:cc:dd:ee:01aa:bb:cc:dd:ee:02"
    assert key.fingerprint == "SHA256:" + hashlib.sha256(material).hexdigest()[:32]
    assert key.public_key == base64.b64encode(hashlib.sha256(b"machine-public-key-web-1").digest()).decode()


def test_fallback_without_sysfs_is_the_hostname_alone(tmp_path: Path) -> None:
    key = fallback_host_key("web-1", tmp_path / "none")
    assert key.fingerprint == "SHA256:" + hashlib.sha256(b"web-1").hexdigest()[:32]


def test_hostname_is_the_systems() -> None:
    assert hostname() == socket.gethostname()


# --- public IP ---------------------------------------------------------------------------------------------------


@contextmanager
def answering(body: bytes, status: int = 200) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(status)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def test_public_ip_from_the_first_service_that_answers_with_an_ip() -> None:
    with (
        answering(b"<html>not an ip</html>") as garbage,
        answering(b"oops", status=500) as failing,
        answering(b"203.0.113.7\n") as good,
        answering(b"198.51.100.1\n") as later,
    ):
        closed = "http://127.0.0.1:1/"  # nothing listens on port 1
        assert detect_public_ip([closed, garbage, failing, good, later], timeout=5) == "203.0.113.7"
        assert detect_public_ip([later, good], timeout=5) == "198.51.100.1"


def test_public_ip_accepts_ipv6_and_reads_at_most_64_bytes() -> None:
    with answering(b"2001:db8::1\r\n") as v6, answering(b"203.0.113.7" + b" " * 100) as long:
        assert detect_public_ip([v6], timeout=5) == "2001:db8::1"
        assert detect_public_ip([long], timeout=5) == "203.0.113.7"  # the padding after 64 bytes is never read
    with answering(b" " * 64 + b"203.0.113.7") as hidden:
        assert detect_public_ip([hidden], timeout=5) is None


def test_no_public_ip_when_no_service_answers() -> None:
    assert detect_public_ip(["http://127.0.0.1:1/", "not a url"], timeout=5) is None
