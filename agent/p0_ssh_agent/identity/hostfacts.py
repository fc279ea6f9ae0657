"""Host facts for registration, gathered natively: hostname and the SSH host key (upstream-protocol.md §9.2)."""

from __future__ import annotations

import base64
import hashlib
import socket
from dataclasses import dataclass
from pathlib import Path

HOST_KEY_NAMES = ("ssh_host_ed25519_key.pub", "ssh_host_rsa_key.pub", "ssh_host_ecdsa_key.pub")


@dataclass(frozen=True)
class HostKey:
    fingerprint: str  # SHA256:..., exactly as `ssh-keygen -l -E sha256` prints it
    public_key: str  # the trimmed .pub line


def hostname() -> str:
    return socket.gethostname() or "unknown-host"


def read_host_key(ssh_dir: Path = Path("/etc/ssh")) -> HostKey | None:
    """The first readable, well-formed host key of ed25519, rsa, ecdsa, in that order (as the Go agent)."""
    for name in HOST_KEY_NAMES:
        try:
            line = (ssh_dir / name).read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            continue
        parts = line.split()
        if len(parts) < 2:
            continue
        try:
            blob = base64.b64decode(parts[1], validate=True)
        except ValueError:
            continue
        if len(blob) < 4 or blob[4 : 4 + int.from_bytes(blob[:4], "big")] != parts[0].encode():
            continue
        digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
        return HostKey(f"SHA256:{digest}", line)
    return None


def fallback_host_key(host: str) -> HostKey:
    """The Go agent's fallback when the host has no SSH host key (§9.2), so the request still has both fields."""
    digest = hashlib.sha256(f"machine-public-key-{host}".encode()).digest()
    fingerprint = "SHA256:" + hashlib.sha256(host.encode()).hexdigest()[:32]
    return HostKey(fingerprint, base64.b64encode(digest).decode())
