"""Conversion and validation of single configuration values (pure).

Errors are ValueProblem("problem; fix") without a location: only the loader knows whether a value came from
`file:line:col`, an environment variable or a flag, and it adds that. Values arrive as plain Python objects:
from YAML (str, int, float, bool, None, list) or, with from_text, as the strings of the environment and flags.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import unicodedata
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from p0_ssh_agent.config.model import CONFINEMENT_MODES, KEY_STORE_MODES, RECONCILE_MODES, USER_REVOKE_MODES, Key, Kind

USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
LABEL_RE = re.compile(r"[A-Za-z0-9._/-]{1,128}=[^\x00-\x1f\x7f]{0,256}")
MAX_ID_LENGTH = 256
MAX_TEXT_LENGTH = 4096
MAX_INT = 2**31 - 1  # the Go agent's fields were Go ints; anything larger is a typo, not a setting
_TRUE = frozenset({"true", "yes", "1"})
_FALSE = frozenset({"false", "no", "0"})
# Characters that end a line or hide in one: control characters, and the Unicode line and paragraph separators.
_BREAKING_CATEGORIES = frozenset({"Cc", "Zl", "Zp"})
# tunnelPins (runtime/tunnel_pins.py enforces them): curl's --pinnedpubkey form, a SHA-256 digest in base64.
PIN_PREFIX = "sha256//"
PIN_DIGEST_BYTES = 32
PIN_HOW = (
    "write sha256// and the base64 of the SHA-256 of the certificate's public key in DER "
    "(docs/connection.md shows the openssl commands; `p0-ssh-agent doctor` shows the live one)"
)
# A proxy host as it may appear in a CONNECT request line (runtime/http_connect.py applies the same rule).
_PROXY_HOST_RE = re.compile(r"[A-Za-z0-9._:%-]+")


class ValueProblem(ValueError):
    """Why a value is wrong and how to fix it, as `problem; fix`. `index` is the list item at fault, if any."""

    def __init__(self, message: str, *, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index


def is_loopback_host(host: str) -> bool:
    """localhost, 127.0.0.0/8 or ::1 (brackets allowed): the one rule for "this host stays on this machine".

    It decides where the token may travel in clear text (ws:// tunnelHost, http:// register URL), where the dev
    backend may listen, and which targets skip an environment proxy (runtime/backend_dial.py). Deliberately not
    `*.localhost` nor "localhost.": RFC 6761 says such names resolve to loopback, but that holds only where the
    resolver implements it (nss-myhostname, systemd-resolved); elsewhere glibc asks DNS, and a DNS answer (or a
    search domain) can send "api.localhost" to another host, with the token in clear text. Go's proxy rule
    (httpproxy.useProxy) also exempts only "localhost" and loopback IPs. Such a name merely goes through the
    proxy, when one is set: the safe side for every caller."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tunnel_url(value: str) -> str:
    if any(c.isspace() for c in value):
        raise ValueProblem("the URL contains whitespace; write it as wss://host[:port][/path]")
    try:
        parts = urlsplit(value)
        parts.port  # noqa: B018 (evaluated for its ValueError on a bad port)
    except ValueError:
        raise ValueProblem(f"{value!r} is not a valid URL (bad port?); write wss://host[:port][/path]") from None
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueProblem(f"{value!r} is not a WebSocket URL; write wss://host[:port][/path]")
    if "@" in parts.netloc:
        raise ValueProblem("user:password@ in the URL is not supported (the agent signs in with its JWT); remove it")
    if parts.scheme == "ws" and not is_loopback_host(parts.hostname):
        raise ValueProblem(
            f"ws:// to {parts.hostname} would send the agent's token in clear text; use wss:// "
            "(plain ws:// is allowed only to localhost, 127.0.0.0/8 or ::1, for testing)"
        )
    return value


def check_proxy_url(value: str) -> str:
    """http://[user:password@]host[:port], scheme optional as curl and Go allow. Messages never show the password."""
    text = value if "://" in value else f"http://{value}"
    usage = "write http://[user:password@]host:port"
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 (evaluated for its ValueError on a bad port)
    except ValueError:
        raise ValueProblem(f"not a valid proxy URL (bad port?); {usage}") from None
    if parts.scheme.lower() == "https":
        raise ValueProblem(
            "TLS to the proxy itself is not supported; use http://host:port (the tunnel inside stays TLS end to end)"
        )
    if parts.scheme.lower() != "http":
        raise ValueProblem(f"only http:// proxies (HTTP CONNECT) are supported; {usage}")
    if not parts.hostname or not _PROXY_HOST_RE.fullmatch(parts.hostname):
        raise ValueProblem(f"the proxy URL has no usable host; {usage}")
    return value


def check_tunnel_pin(text: str) -> str:
    """One pin, "sha256//" and the digest in standard base64 with its padding: the canonical spelling only, so two
    spellings of one digest cannot pass as two different pins (rotation needs two different keys)."""
    if ";" in text:
        raise ValueProblem(f"one pin per list item (curl's ';' separator is not used here); {PIN_HOW}")
    if not text.startswith(PIN_PREFIX):
        raise ValueProblem(f"does not start with {PIN_PREFIX} (only SHA-256 pins are supported); {PIN_HOW}")
    encoded = text[len(PIN_PREFIX) :]
    try:
        digest = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        raise ValueProblem(f"what follows {PIN_PREFIX} is not base64; {PIN_HOW}") from None
    if len(digest) != PIN_DIGEST_BYTES or base64.b64encode(digest).decode("ascii") != encoded:
        raise ValueProblem(
            f"what follows {PIN_PREFIX} is not a SHA-256 digest ({PIN_DIGEST_BYTES} bytes, 44 base64 characters "
            f"ending in '='); {PIN_HOW}"
        )
    return text


def _tunnel_pins(key: Key, value: object, from_text: bool) -> tuple[str, ...]:
    items = _string_list(key, value, from_text)
    first_seen: dict[str, int] = {}
    for index, item in enumerate(items):
        shown = item if len(item) <= 80 else item[:80] + "..."
        try:
            check_tunnel_pin(item)
        except ValueProblem as exc:
            raise ValueProblem(f"item {index + 1}, {shown!r}, is not a pin: {exc}", index=index) from None
        if item in first_seen:
            raise ValueProblem(
                f"item {index + 1} repeats item {first_seen[item] + 1}; list each key once (the current key's pin "
                "and the next key's)",
                index=index,
            )
        first_seen[item] = index
    if len(items) == 1:
        raise ValueProblem(
            "a single pin leaves no way to change the tunnel server's key without cutting every agent off; list at "
            "least two: the current key's pin and the next (backup) key's, as for HTTP public key pinning"
        )
    return tuple(items)


def _type_name(value: object) -> str:
    if value is None:
        return "nothing (null)"
    if isinstance(value, bool):
        return f"a boolean ({str(value).lower()})"
    if isinstance(value, int | float):
        return f"a number ({value})"
    if isinstance(value, str):
        return f"the text {value[:40]!r}"
    if isinstance(value, Mapping):
        return "a mapping"
    if isinstance(value, list | tuple):
        return "a list"
    return f"a {type(value).__name__}"


def _single_line(text: str, *, limit: int = MAX_TEXT_LENGTH) -> str:
    if any(unicodedata.category(c) in _BREAKING_CATEGORIES for c in text):
        raise ValueProblem("control characters and line breaks are not allowed; write the value on one line")
    if not text.strip():
        raise ValueProblem("the value is empty; write a value or remove the key")
    if len(text) > limit:
        raise ValueProblem(f"the value is {len(text)} characters long, more than {limit}; shorten it")
    return text


def _expect_str(key: Key, value: object) -> str:
    if isinstance(value, str):
        return _single_line(value)
    # `version: 1.0` is how people write a version; for every other key a number is most likely a mistake
    # (an id that lost leading zeros, a port), so it has to be quoted.
    if key.kind == "version" and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise ValueProblem(f'expected a string, got {_type_name(value)}; put the value in quotes: {key.name}: "..."')


def _identifier(text: str) -> str:
    if len(text) > MAX_ID_LENGTH:
        raise ValueProblem(f"longer than {MAX_ID_LENGTH} characters; copy the id again from the P0 UI")
    if ":" in text or any(c.isspace() or unicodedata.category(c) == "Cf" for c in text):
        raise ValueProblem(
            f"{text!r} contains ':' or whitespace, which cannot be part of the client id <orgId>:<hostId>:ssh; "
            "copy the id again from the P0 UI"
        )
    return text


def _absolute_path(text: str) -> Path:
    if not text.startswith("/"):
        raise ValueProblem(f"{text!r} is not an absolute path; write it starting with /")
    return Path(text)


def _revoke_mode(text: str) -> str:
    if text not in USER_REVOKE_MODES:
        raise ValueProblem(f"{text!r} is not a revoke mode; write one of {', '.join(USER_REVOKE_MODES)}")
    return text


def _key_store(text: str) -> str:
    if text not in KEY_STORE_MODES:
        raise ValueProblem(
            f"{text!r} is not a key-store mode; write one of {', '.join(KEY_STORE_MODES)} "
            "(and change it with `p0-ssh-agent key-store`, which moves the live grants and sets up sshd)"
        )
    return text


def _reconcile_mode(text: str) -> str:
    if text not in RECONCILE_MODES:
        raise ValueProblem(f"{text!r} is not a reconcile mode; write one of {', '.join(RECONCILE_MODES)}")
    return text


def _confinement(text: str) -> str:
    if text not in CONFINEMENT_MODES:
        raise ValueProblem(
            f"{text!r} is not a confinement mode; write one of {', '.join(CONFINEMENT_MODES)} "
            "(auto: a transient systemd unit when systemd runs the host, else the namespace fallback)"
        )
    return text


def _proxy(text: str) -> str:
    return check_proxy_url(text)


def _text(text: str) -> str:
    return text


_TEXTUAL: dict[str, Callable[[str], object]] = {
    "text": _text,
    "version": _text,
    "id": _identifier,
    "tunnel_url": check_tunnel_url,
    "proxy_url": _proxy,
    "absolute_path": _absolute_path,
    "revoke_mode": _revoke_mode,
    "reconcile_mode": _reconcile_mode,
    "key_store": _key_store,
    "confinement": _confinement,
}


def _bool(value: object, from_text: bool) -> bool:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    shown = f"{value!r}" if from_text else _type_name(value)
    raise ValueProblem(f"expected true or false, got {shown}; write true or false")


def _positive_int(key: Key, value: object, from_text: bool) -> int:
    number: object = value
    if from_text and isinstance(value, str):
        digits = value.strip()
        if not (digits.isascii() and digits.lstrip("-").isdigit()):
            raise ValueProblem(f"expected a whole number of {_unit(key)}, got {value!r}; write e.g. 60")
        number = int(digits)
    # bool is an int subclass in Python; `true` is not a number of seconds.
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueProblem(f"expected a whole number of {_unit(key)}, got {_type_name(value)}; write e.g. 60")
    if number <= 0:
        raise ValueProblem(f"must be greater than 0, got {number}; write e.g. 60 (the default)")
    limit = MAX_INT if key.maximum is None else key.maximum
    if number > limit:
        raise ValueProblem(f"{number} is too large (at most {limit}); write a smaller number")
    return number


def _string_list(key: Key, value: object, from_text: bool) -> list[str]:
    if from_text and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple):
        raise ValueProblem(f"expected a list, got {_type_name(value)}; write [a, b] or one '- item' per line")
    items: list[str] = []
    for index, item in enumerate(value):
        if not isinstance(item, str):
            raise ValueProblem(f'item {index + 1} is {_type_name(item)}, not a string; quote it: - "..."', index=index)
        items.append(item)
    return items


def _matching_list(key: Key, value: object, from_text: bool) -> tuple[str, ...]:
    items = _string_list(key, value, from_text)
    pattern, what = (LABEL_RE, "key=value") if key.kind == "labels" else (USER_NAME_RE, "a valid user name")
    for index, item in enumerate(items):
        if not pattern.fullmatch(item):
            shown = item if len(item) <= 80 else item[:80] + "..."
            raise ValueProblem(f"item {index + 1}, {shown!r}, is not {what}; fix or remove it", index=index)
    return tuple(items)


def convert(key: Key, value: object, *, from_text: bool = False) -> object:
    """The dataclass field's value for one raw value: YAML data, or a string from the environment or a flag
    (from_text). Raises ValueProblem."""
    kind: Kind = key.kind
    if kind == "ignored":
        return None
    if kind == "bool":
        return _bool(value, from_text)
    if kind == "positive_int":
        return _positive_int(key, value, from_text)
    if kind in ("labels", "user_names"):
        return _matching_list(key, value, from_text)
    if kind == "tunnel_pins":
        return _tunnel_pins(key, value, from_text)
    return _TEXTUAL[kind](_expect_str(key, value))


def _unit(key: Key) -> str:
    return "milliseconds" if key.name.endswith("Ms") else "seconds"
