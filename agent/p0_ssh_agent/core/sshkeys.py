"""OpenSSH public keys: parse exactly one `type base64 [comment]` line, nothing else (pure).

A key from the network ends up in a file that sshd trusts, so anything that could change what the line means is
refused (upstream-protocol.md §12 item 11, where the Go agent wrote the value verbatim):

* more than one line, NUL or any other control character, and anything over 16 KiB;
* key options (`command="..."`, `from=`, `restrict`, ...): the agent decides the options, never the caller;
* a type we do not know, DSA, and certificates (`*-cert-v01@openssh.com` are not keys sshd can trust by value);
* base64 that is not strict and canonical, and a blob whose own type or structure does not match the line
  (bytes after the last field included);
* a blob that is not in the one encoding OpenSSH writes (issue 11 item 4): a zero-padded RSA exponent or modulus
  (a non-minimal mpint), a NUL in a security key's application. OpenSSH *reads* some of these: it strips the
  zeroes and a final NUL, then fingerprints the key as it would write it. A fingerprint over the bytes as sent
  would differ from the one `ssh-keygen -l` prints and sshd logs, so a policy that forbids the real fingerprint
  would let the padded copy through. Refusing them keeps one blob per key, and the hash of that blob is the
  fingerprint everyone else computes;
* an ECDSA point that is not on its curve, or that OpenSSH's sshkey_ec_validate_public() would refuse.

`SshPublicKey.line()` renders the key back in one canonical form, and `fingerprint()` gives what
`ssh-keygen -l -E sha256` prints, which is what we log in place of key material.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
import unicodedata
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec

from p0_ssh_agent.core.messages import shown
from p0_ssh_agent.core.request_errors import RequestInvalid

# ssh-dss is refused on purpose: OpenSSH disabled DSA by default in 7.0 and removed it in 9.8, so a DSA line would
# be dead weight on new hosts and a 1024-bit key on old ones.
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
MAX_KEY_TEXT = 16 * 1024
CERTIFICATE_SUFFIX = "-cert-v01@openssh.com"

# The authorized_keys options of sshd(8), so that a bare option word such as `restrict` is reported as an
# option rather than as an unknown key type.
_OPTION_WORDS = frozenset(
    {
        "agent-forwarding",
        "cert-authority",
        "command",
        "environment",
        "expiry-time",
        "from",
        "no-agent-forwarding",
        "no-port-forwarding",
        "no-pty",
        "no-touch-required",
        "no-user-rc",
        "no-x11-forwarding",
        "permitlisten",
        "permitopen",
        "port-forwarding",
        "principals",
        "pty",
        "restrict",
        "tunnel",
        "user-rc",
        "verify-required",
        "x11-forwarding",
    }
)
_SEPARATOR = re.compile(r"[ \t]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}", re.ASCII)
_ED25519_KEY_BYTES = 32
_ECDSA_COORDINATE_BYTES = {"nistp256": 32, "nistp384": 48, "nistp521": 66}
_ECDSA_CURVES: dict[str, ec.EllipticCurve] = {
    "nistp256": ec.SECP256R1(),
    "nistp384": ec.SECP384R1(),
    "nistp521": ec.SECP521R1(),
}
# The group orders (FIPS 186-4 D.1.2), which sshkey_ec_validate_public() bounds the coordinates by. cryptography only
# exposes them (EllipticCurve.group_order) from version 45 on; the tests compare these with it.
_ECDSA_GROUP_ORDERS = {
    "nistp256": 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551,
    "nistp384": int(
        "FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFC7634D81F4372DDF581A0DB248B0A77AECEC196ACCC52973", 16
    ),
    "nistp521": int(
        "1FFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFFF"
        "A51868783BF2F966B7FCC0148F709A5D03BB5C9B8899C47AEBB6FB71E91386409",
        16,
    ),
}
_RSA_MIN_BITS = 1024  # OpenSSH's SSH_RSA_MINIMUM_MODULUS_SIZE: sshd refuses smaller keys
_RSA_MAX_BITS = 16384  # OpenSSL's OPENSSL_RSA_MAX_MODULUS_BITS


@dataclass(frozen=True, slots=True)
class SshPublicKey:
    """A checked public key. Build it with parse_public_key(); the constructor re-checks the invariants."""

    key_type: str
    blob: bytes
    comment: str

    def __post_init__(self) -> None:
        # A key built by hand must not be able to smuggle options or a second line into line().
        if self.key_type not in KNOWN_KEY_TYPES:
            raise ValueError(f"unknown key type {shown(self.key_type)}")
        check_blob(self.key_type, self.blob)
        if self.comment != _normalise_comment(self.comment) or _bad_comment_character(self.comment) is not None:
            raise ValueError("the comment must be printable text with single spaces")

    def line(self) -> str:
        """`type base64 [comment]`, single spaces, never any options."""
        encoded = base64.b64encode(self.blob).decode("ascii")
        return f"{self.key_type} {encoded} {self.comment}" if self.comment else f"{self.key_type} {encoded}"

    def fingerprint(self) -> str:
        """What `ssh-keygen -l -E sha256` prints: "SHA256:" + unpadded base64 of the blob's SHA-256.

        ssh-keygen hashes the key as it would write it; check_blob() only lets that one encoding through, so the
        blob as sent is that encoding and the two hashes agree (tests/test_core_sshkeys_canonical.py)."""
        digest = hashlib.sha256(self.blob).digest()
        return "SHA256:" + base64.b64encode(digest).decode("ascii").rstrip("=")


class _BlobReader:
    """Reads the SSH wire encoding (RFC 4251 §5): uint32 big-endian length, then that many bytes."""

    def __init__(self, blob: bytes) -> None:
        self._blob = blob
        self._offset = 0

    def string(self, what: str) -> bytes:
        start = self._offset + 4
        if start > len(self._blob):
            raise ValueError(f"the key data ends before the {what}")
        length = int.from_bytes(self._blob[self._offset : start], "big")
        end = start + length
        if end > len(self._blob):
            raise ValueError(f"the key data ends inside the {what}")
        self._offset = end
        return self._blob[start:end]

    def positive_mpint(self, what: str) -> int:
        """A non-negative mpint in its one minimal form (RFC 4251 §5): a leading zero byte only to clear the sign bit.

        OpenSSH's sshbuf_get_bignum2() skips any number of leading zeroes, so a padded copy is the same key to sshd
        under another blob, hence another fingerprint: refused, never re-encoded (see the module docstring)."""
        raw = self.string(what)
        if raw and raw[0] & 0x80:
            raise ValueError(f"the {what} is negative")
        if raw and raw[0] == 0 and (len(raw) == 1 or not raw[1] & 0x80):
            raise ValueError(f"the {what} is zero-padded (a non-minimal mpint); send the key as ssh-keygen writes it")
        return int.from_bytes(raw, "big")

    def finish(self) -> None:
        if self._offset != len(self._blob):
            raise ValueError(f"{len(self._blob) - self._offset} unexpected bytes after the key")


def check_blob(key_type: str, blob: bytes) -> None:
    """Raise ValueError unless `blob` is a structurally sound public key of `key_type`."""
    reader = _BlobReader(blob)
    embedded = reader.string("key type")
    if embedded != key_type.encode("ascii"):
        raise ValueError(f"the key data is a {shown(embedded.decode('latin-1'), limit=40)} key, not {key_type}")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        if len(reader.string("ed25519 key")) != _ED25519_KEY_BYTES:
            raise ValueError("an ed25519 key must be 32 bytes")
    elif key_type == "ssh-rsa":
        exponent = reader.positive_mpint("RSA exponent")
        modulus = reader.positive_mpint("RSA modulus")
        if exponent < 3 or exponent % 2 == 0:
            raise ValueError("the RSA exponent must be odd and at least 3")
        if not _RSA_MIN_BITS <= modulus.bit_length() <= _RSA_MAX_BITS:
            raise ValueError(f"the RSA modulus must have {_RSA_MIN_BITS} to {_RSA_MAX_BITS} bits")
    else:
        expected_curve = "nistp256" if key_type.startswith("sk-") else key_type.removeprefix("ecdsa-sha2-")
        curve = reader.string("curve name")
        if curve != expected_curve.encode("ascii"):
            raise ValueError(f"the curve name must be {expected_curve}")
        _check_ecdsa_point(expected_curve, reader.string("ECDSA point"))
    if key_type.startswith("sk-"):
        application = reader.string("security key application")
        if not application:
            raise ValueError("a security key must name its application (e.g. ssh:)")
        # OpenSSH reads the application as a C string: "ssh:\0" is "ssh:" to it, with the fingerprint of "ssh:".
        if b"\0" in application:
            raise ValueError("the security key application contains a NUL byte")
    reader.finish()


def _check_ecdsa_point(curve: str, point: bytes) -> None:
    """An uncompressed point that OpenSSL loads (on the curve, coordinates below p) and that OpenSSH's
    sshkey_ec_validate_public() accepts: both coordinates longer than half the order's bits and below order - 1."""
    if len(point) != 1 + 2 * _ECDSA_COORDINATE_BYTES[curve] or point[0] != 0x04:
        raise ValueError(f"the ECDSA point must be an uncompressed {curve} point")
    try:
        numbers = ec.EllipticCurvePublicKey.from_encoded_point(_ECDSA_CURVES[curve], point).public_numbers()
    except ValueError:
        raise ValueError(f"the ECDSA point is not on the {curve} curve") from None
    order = _ECDSA_GROUP_ORDERS[curve]
    for name, coordinate in (("x", numbers.x), ("y", numbers.y)):
        if coordinate.bit_length() <= order.bit_length() // 2 or coordinate >= order - 1:
            raise ValueError(f"the ECDSA point's {name} coordinate is out of the range OpenSSH accepts")


def _bad_comment_character(comment: str) -> str | None:
    """The first character sshd or a terminal could misread: controls, invisibles, line and paragraph breaks."""
    for character in comment:
        category = unicodedata.category(character)
        # C*: control, format (bidi overrides, zero-width), surrogate, private use, unassigned.
        # Z* other than a plain space: NBSP look-alike separators and the Unicode line/paragraph separators.
        if category[0] == "C" or (category[0] == "Z" and character != " "):
            return character
    return None


def _normalise_comment(comment: str) -> str:
    return " ".join(part for part in comment.split(" ") if part)


def _looks_like_options(first: str) -> bool:
    return any(c in first for c in '=,"') or first.lower() in _OPTION_WORDS


def _refuse_first_token(first: str, field: str) -> RequestInvalid:
    if first.endswith(CERTIFICATE_SUFFIX):
        return RequestInvalid(field, f"invalid {field}: a certificate is not a public key; send the plain key")
    if first == "ssh-dss":
        return RequestInvalid(field, f"invalid {field}: DSA (ssh-dss) keys are refused; OpenSSH removed them")
    if _looks_like_options(first):
        return RequestInvalid(
            field, f"invalid {field}: key options are not allowed (got {shown(first, limit=40)}); send a bare key"
        )
    known = ", ".join(sorted(KNOWN_KEY_TYPES))
    return RequestInvalid(field, f"invalid {field}: unknown key type {shown(first, limit=40)}; expected one of {known}")


def _check_characters(text: str, field: str) -> None:
    if len(text) > MAX_KEY_TEXT or len(text.encode("utf-8", "surrogatepass")) > MAX_KEY_TEXT:
        raise RequestInvalid(field, f"invalid {field}: longer than {MAX_KEY_TEXT} bytes")
    if "\n" in text or "\r" in text:
        raise RequestInvalid(field, f"invalid {field}: must be exactly one line (it contains a line break)")
    if "\0" in text:
        raise RequestInvalid(field, f"invalid {field}: contains a NUL character")
    if text.isascii() and text.replace("\t", " ").isprintable():
        return  # the usual key: in ASCII only the C0 controls and DEL are Cc, and isprintable() refuses exactly those
    for position, character in enumerate(text):
        if character != "\t" and unicodedata.category(character) == "Cc":
            raise RequestInvalid(field, f"invalid {field}: control character {shown(character)} at {position}")


def _decode_blob(encoded: str, key_type: str, field: str) -> bytes:
    if not _BASE64.fullmatch(encoded):
        raise RequestInvalid(field, f"invalid {field}: the key data is not base64")
    try:
        blob = base64.b64decode(encoded, validate=True)
    except binascii.Error as exc:
        raise RequestInvalid(field, f"invalid {field}: the key data is not valid base64 ({exc})") from None
    # Python accepts stray bits in the last base64 character; OpenSSH's decoder does not. Demanding the canonical
    # encoding also makes line() give back exactly the text that was sent.
    if base64.b64encode(blob).decode("ascii") != encoded:
        raise RequestInvalid(field, f"invalid {field}: the key data is not canonical base64")
    try:
        check_blob(key_type, blob)
    except ValueError as exc:
        raise RequestInvalid(field, f"invalid {field}: not a valid {key_type} key: {exc}") from None
    return blob


def parse_public_key(text: str, *, field: str) -> SshPublicKey:
    """Parse one OpenSSH public key line; every failure is a RequestInvalid naming `field`."""
    _check_characters(text, field)
    parts = _SEPARATOR.split(text.strip(" \t"), maxsplit=2)
    key_type = parts[0]
    if not key_type:
        raise RequestInvalid(field, f"invalid {field}: empty")
    if key_type not in KNOWN_KEY_TYPES:
        raise _refuse_first_token(key_type, field)
    if len(parts) < 2:
        raise RequestInvalid(field, f"invalid {field}: the base64 key data after {key_type} is missing")
    blob = _decode_blob(parts[1], key_type, field)
    comment = parts[2] if len(parts) == 3 else ""
    bad = _bad_comment_character(comment)
    if bad is not None:
        raise RequestInvalid(
            field, f"invalid {field}: the comment contains {shown(bad)} (U+{ord(bad):04X}); use printable text"
        )
    return SshPublicKey(key_type, blob, _normalise_comment(comment))
