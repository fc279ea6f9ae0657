"""OpenSSH public keys: parse exactly one `type base64 [comment]` line, nothing else (pure).

A key from the network is written into a file sshd trusts, so anything that could change its meaning is refused:
options (`command=`, `from=`), more than one line, control characters, a type the blob does not carry, and
certificates (which are not keys). upstream-protocol.md §12 item 11.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import struct
from dataclasses import dataclass

from p0_ssh_agent.core.errors import RequestInvalid

# ssh-dss is refused: OpenSSH disabled DSA by default in 7.0 and removed it in 9.8.
KNOWN_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "ssh-rsa",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ssh-ed25519@openssh.com",
        "sk-ecdsa-sha2-nistp256@openssh.com",
    }
)
MAX_KEY_LINE = 16384
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")
_COMMENT_FORBIDDEN = re.compile(r"[\x00-\x1f\x7f]")
_OPTION_LIKE = re.compile(r"^[a-zA-Z-]+(=|,|$)")


@dataclass(frozen=True, slots=True)
class SshPublicKey:
    key_type: str
    blob: bytes
    comment: str

    def line(self) -> str:
        encoded = base64.b64encode(self.blob).decode("ascii")
        return f"{self.key_type} {encoded} {self.comment}" if self.comment else f"{self.key_type} {encoded}"

    def fingerprint(self) -> str:
        """The form `ssh-keygen -l -E sha256` prints: SHA256: + unpadded base64 of the blob's digest."""
        return "SHA256:" + base64.b64encode(hashlib.sha256(self.blob).digest()).decode("ascii").rstrip("=")


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated")
    return blob[offset + 4 : end], end


def _check_blob(key_type: str, blob: bytes) -> None:
    embedded, offset = _ssh_string(blob, 0)
    if embedded != key_type.encode():
        raise ValueError(f"the key data says {embedded[:40]!r}, the line says {key_type}")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        point, offset = _ssh_string(blob, offset)
        if len(point) != 32:
            raise ValueError("an ed25519 key must carry 32 bytes")
    elif key_type == "ssh-rsa":
        exponent, offset = _ssh_string(blob, offset)
        modulus, offset = _ssh_string(blob, offset)
        if not exponent or len(modulus.lstrip(b"\0")) * 8 < 1024:
            raise ValueError("an RSA key must have a modulus of at least 1024 bits")
    else:
        curve, offset = _ssh_string(blob, offset)
        point, offset = _ssh_string(blob, offset)
        if not point or point[0] != 4:
            raise ValueError("an ECDSA key must carry an uncompressed point")
        if not key_type.endswith(curve.decode("ascii", "replace")) and "sk-" not in key_type:
            raise ValueError("the curve does not match the key type")
    if key_type.startswith("sk-"):
        _application, offset = _ssh_string(blob, offset)
    if offset != len(blob):
        raise ValueError("unexpected bytes after the key")


def parse_public_key(text: str, *, field: str) -> SshPublicKey:
    if len(text) > MAX_KEY_LINE:
        raise RequestInvalid(field, f"{field} is longer than {MAX_KEY_LINE} characters")
    if "\n" in text or "\r" in text or "\0" in text:
        raise RequestInvalid(field, f"{field} must be exactly one line (no newlines or NUL)")
    parts = text.strip(" ").split(" ", 2)
    key_type = parts[0]
    if key_type not in KNOWN_KEY_TYPES:
        if key_type.endswith("-cert-v01@openssh.com"):
            raise RequestInvalid(field, f"{field} is a certificate, not a public key")
        if key_type == "ssh-dss":
            raise RequestInvalid(field, f"{field}: DSA keys are not accepted (OpenSSH removed them)")
        if _OPTION_LIKE.match(key_type) and ("=" in key_type or "," in key_type):
            raise RequestInvalid(field, f"{field}: key options (like command= or from=) are not allowed")
        shown = "".join(c if c.isprintable() else "?" for c in key_type[:40])
        raise RequestInvalid(field, f"{field}: unknown key type {shown!r}")
    if len(parts) < 2 or not _BASE64.fullmatch(parts[1]):
        raise RequestInvalid(field, f"{field}: the key data is missing or not base64")
    try:
        blob = base64.b64decode(parts[1], validate=True)
        _check_blob(key_type, blob)
    except (binascii.Error, ValueError, UnicodeDecodeError) as exc:
        raise RequestInvalid(field, f"{field}: invalid {key_type} key: {exc}") from None
    comment = parts[2].strip() if len(parts) > 2 else ""
    if _COMMENT_FORBIDDEN.search(comment):
        raise RequestInvalid(field, f"{field}: control characters in the key comment")
    return SshPublicKey(key_type, blob, comment)
