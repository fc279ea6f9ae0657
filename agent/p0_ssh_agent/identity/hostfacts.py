"""Host facts for registration, gathered natively (upstream-protocol.md §9.2): the hostname, the SSH host key and
its fingerprint, the MAC-based fallback when there is no host key, and the optional public-IP lookup.

No subprocess: the fingerprint is computed exactly as `ssh-keygen -l -E sha256` prints it, from the key blob.
Every directory is a parameter, so tests point them at tmp_path.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import ipaddress
import socket
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass
from http.client import HTTPException
from pathlib import Path

SSH_DIR = Path("/etc/ssh")
SYS_NET_DIR = Path("/sys/class/net")
# The Go agent's order of preference.
HOST_KEY_NAMES = ("ssh_host_ed25519_key.pub", "ssh_host_rsa_key.pub", "ssh_host_ecdsa_key.pub")
MAX_PUBLIC_KEY_BYTES = 65536
IFF_LOOPBACK = 0x8
# The Go agent's services, tried in order; each answers with the caller's address as plain text.
PUBLIC_IP_SERVICES = ("https://api.ipify.org", "https://checkip.amazonaws.com", "https://icanhazip.com")
PUBLIC_IP_TIMEOUT_SECONDS = 5.0
MAX_PUBLIC_IP_BYTES = 64


@dataclass(frozen=True, slots=True)
class HostKey:
    fingerprint: str  # SHA256:<unpadded base64>, exactly as `ssh-keygen -l -E sha256` prints it
    public_key: str  # the trimmed .pub line: "<type> <base64 blob> [comment]"


def hostname() -> str:
    return socket.gethostname() or "unknown-host"


def fingerprint_of_line(line: str) -> str | None:
    """The SHA256 fingerprint of one OpenSSH public key line, or None if the line is not a well-formed key
    (the blob must be base64 and must start with the same key type the line names)."""
    parts = line.split()
    if len(parts) < 2:
        return None
    key_type, encoded = parts[0], parts[1]
    try:
        blob = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return None
    if len(blob) < 4:
        return None
    type_length = int.from_bytes(blob[:4], "big")
    if len(blob) < 4 + type_length or blob[4 : 4 + type_length] != key_type.encode("ascii", "replace"):
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    return f"SHA256:{digest}"


def read_host_key(ssh_dir: Path = SSH_DIR) -> HostKey | None:
    """The first readable, well-formed host key of ed25519, rsa, ecdsa, in that order; None if there is none.
    A broken file is skipped, as the Go agent skipped a key ssh-keygen could not read."""
    for name in HOST_KEY_NAMES:
        try:
            with (ssh_dir / name).open("rb") as handle:
                raw = handle.read(MAX_PUBLIC_KEY_BYTES)
            text = raw.decode("ascii")
        except (OSError, UnicodeDecodeError):
            continue
        line = next((candidate.strip() for candidate in text.splitlines() if candidate.strip()), "")
        fingerprint = fingerprint_of_line(line)
        if fingerprint is not None:
            return HostKey(fingerprint, line)
    return None


def _read_small(path: Path) -> str:
    try:
        return path.read_text(encoding="ascii", errors="replace").strip()
    except OSError:
        return ""


def interface_macs(net_dir: Path = SYS_NET_DIR) -> list[str]:
    """MAC addresses as Go's net.Interfaces() reports them, in interface-index order: loopback and docker*
    interfaces left out; an all-zero address (tunnels) is no address, as Go drops it."""
    found: list[tuple[int, str]] = []
    try:
        entries = sorted(net_dir.iterdir())
    except OSError:
        return []
    for entry in entries:
        if entry.name.startswith("docker"):
            continue
        try:
            flags = int(_read_small(entry / "flags") or "0", 16)
            index = int(_read_small(entry / "ifindex") or "0")
        except ValueError:
            continue
        if flags & IFF_LOOPBACK:
            continue
        address = _read_small(entry / "address").lower()
        if not address.replace(":", "").strip("0"):
            address = ""
        found.append((index, address))
    return [address for _, address in sorted(found)]


def fallback_host_key(host: str, net_dir: Path = SYS_NET_DIR) -> HostKey:
    """The Go agent's stand-in when the host has no SSH host key (§9.2), so the request still has both fields:
    fingerprint "SHA256:" + the first 32 hex digits of sha256(hostname + the MACs concatenated), and public key
    base64(sha256("machine-public-key-" + hostname))."""
    material = host + "".join(interface_macs(net_dir))
    fingerprint = "SHA256:" + hashlib.sha256(material.encode()).hexdigest()[:32]
    public_key = base64.b64encode(hashlib.sha256(f"machine-public-key-{host}".encode()).digest()).decode("ascii")
    return HostKey(fingerprint, public_key)


def detect_public_ip(
    services: Sequence[str] = PUBLIC_IP_SERVICES, *, timeout: float = PUBLIC_IP_TIMEOUT_SECONDS
) -> str | None:
    """The first valid IP address one of `services` answers with (at most 64 bytes read, `timeout` seconds
    each), or None if none does. The caller decides whether None is an error."""
    for url in services:
        try:
            # The URLs are the constants above (https://), or loopback servers in tests.
            with urllib.request.urlopen(url, timeout=timeout) as response:  # noqa: S310
                raw = response.read(MAX_PUBLIC_IP_BYTES)
        except (urllib.error.URLError, HTTPException, OSError, ValueError):
            continue
        try:
            return str(ipaddress.ip_address(raw.decode("ascii").strip()))
        except (UnicodeDecodeError, ValueError):
            continue
    return None
