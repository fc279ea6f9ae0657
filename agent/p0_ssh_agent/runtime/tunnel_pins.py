"""Pinning the tunnel server's key (`tunnelPins`, issue 17 item 8): the agent's analogue of SSH's known_hosts.

A pin is curl's --pinnedpubkey form, "sha256//" and the base64 of the SHA-256 of the leaf certificate's
SubjectPublicKeyInfo in DER: it names the key, not the certificate, so a renewed certificate for the same key keeps
matching. It is checked in addition to the CA verification (tunnelCaFile or the system store), never instead of it,
right after the TLS handshake and before the agent sends a byte of its own: the WebSocket request carrying the JWT
is written only to a server whose key is pinned (runtime/backend_dial.py). config/values.py checks the pins'
spelling and that there are at least two (the current key and the next, so a key change is not an outage).
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from p0_ssh_agent.config.values import PIN_PREFIX
from p0_ssh_agent.errors import AgentError


class PinMismatch(AgentError):
    """The tunnel server's key is none of tunnelPins. The message names the key seen (a pin is public)."""


def spki_pin(der_certificate: bytes) -> str:
    """The pin of a DER certificate's public key: what `openssl x509 -pubkey | openssl pkey -pubin -outform der |
    openssl dgst -sha256 -binary | base64` prints, after "sha256//"."""
    public_key = x509.load_der_x509_certificate(der_certificate).public_key()
    spki = public_key.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return PIN_PREFIX + base64.b64encode(hashlib.sha256(spki).digest()).decode("ascii")


def peer_pin(der_certificate: bytes | None) -> str:
    """The pin of the leaf certificate a finished handshake received (`getpeercert(binary_form=True)`)."""
    if not der_certificate:  # a verifying client context never finishes a handshake without one
        raise PinMismatch("the tunnel server presented no certificate, so it cannot match tunnelPins")
    return spki_pin(der_certificate)


def check_peer_pin(der_certificate: bytes | None, pins: Sequence[str]) -> str:
    """The peer's pin when it is one of `pins`; PinMismatch, naming the pin seen, when it is none of them."""
    seen = peer_pin(der_certificate)
    if seen not in pins:
        # Short: it becomes the STATUS= line and status's last error; what to do about it is doctor's `pin` fix.
        raise PinMismatch(
            f"the tunnel's certificate key {seen} matches none of tunnelPins ({len(pins)} set): connection refused "
            "before the token was sent"
        )
    return seen
