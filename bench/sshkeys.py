"""Fresh OpenSSH public key lines for grants, made in-process (no ssh-keygen per key)."""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey


def public_key_line(comment: str) -> str:
    """`ssh-ed25519 AAAA... <comment>` for a newly generated key."""
    public = Ed25519PrivateKey.generate().public_key()
    raw = public.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH).decode()
    return f"{raw} {comment}"
