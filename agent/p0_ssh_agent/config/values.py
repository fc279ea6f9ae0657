"""Conversion and validation of single configuration values (pure). Errors are plain strings: the loader adds
the location (file:line:col, variable or flag) because only it knows where a value came from."""

from __future__ import annotations

import ipaddress
import re
from pathlib import Path
from urllib.parse import urlsplit

from p0_ssh_agent.config.model import USER_REVOKE_MODES, Key

USER_NAME_RE = re.compile(r"[a-z_][a-z0-9_-]{0,31}")
_ID_RE = re.compile(r"[A-Za-z0-9._@+=-]{1,256}")
_LABEL_RE = re.compile(r"[A-Za-z0-9._/-]{1,128}=[^\x00-\x1f\x7f]{0,256}")
_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


class ValueProblem(ValueError):
    """Why a value is wrong and how to fix it: `problem; fix`."""


def is_loopback_host(host: str) -> bool:
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_tunnel_url(value: str) -> str:
    parts = urlsplit(value)
    if parts.scheme not in ("ws", "wss") or not parts.hostname:
        raise ValueProblem(f"{value!r} is not a WebSocket URL; use wss://host[:port][/path]")
    if parts.scheme == "ws" and not is_loopback_host(parts.hostname):
        raise ValueProblem(
            f"ws:// to {parts.hostname} would send the agent's token in clear text; use wss:// "
            "(ws:// is allowed only to localhost, 127.0.0.0/8 or ::1, for testing)"
        )
    return value


def _expect_str(value: object, what: str) -> str:
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueProblem(f"expected {what}, got {_type_name(value)}; write it as a plain string")
    text = str(value)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in text):
        raise ValueProblem("control characters are not allowed; remove them")
    return text


def _type_name(value: object) -> str:
    return {dict: "a mapping", list: "a list", bool: "a boolean", type(None): "nothing (null)"}.get(
        type(value), type(value).__name__
    )


def _string_list(value: object, from_text: bool) -> list[str]:
    if from_text and isinstance(value, str):
        return [item.strip() for item in value.split(",") if item.strip()]
    if not isinstance(value, list | tuple):
        raise ValueProblem(f"expected a list, got {_type_name(value)}; write it as [a, b] or one '- item' per line")
    return [_expect_str(item, "a string") for item in value]


def _bool(key: Key, value: object, from_text: bool) -> object:
    if isinstance(value, bool):
        return value
    if from_text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise ValueProblem(f"expected true or false, got {value!r}; write true or false")


def _positive_int(key: Key, value: object, from_text: bool) -> object:
    number: object = value
    if from_text and isinstance(value, str) and value.strip().lstrip("-").isdigit():
        number = int(value)
    if isinstance(number, bool) or not isinstance(number, int):
        raise ValueProblem(f"expected a whole number of {_unit(key)}, got {value!r}; write e.g. 60")
    if number <= 0:
        raise ValueProblem(f"must be greater than 0, got {number}; the default is 60")
    return number


def _matching_list(key: Key, value: object, from_text: bool) -> object:
    items = _string_list(value, from_text)
    pattern, what = (_LABEL_RE, "key=value") if key.kind == "labels" else (USER_NAME_RE, "a user name")
    for item in items:
        if not pattern.fullmatch(item):
            raise ValueProblem(f"{item!r} is not {what}; fix or remove it")
    return tuple(items)


def _identifier(text: str) -> object:
    if not _ID_RE.fullmatch(text):
        raise ValueProblem(
            f"{text!r} is not a valid id (letters, digits and ._@+=- only; no ':' or spaces, "
            "it forms the client id <orgId>:<hostId>:ssh); copy it from the P0 UI"
        )
    return text


def _absolute_path(text: str) -> object:
    if not text.startswith("/"):
        raise ValueProblem(f"{text!r} is not an absolute path; write it starting with /")
    return Path(text)


def _revoke_mode(text: str) -> object:
    if text not in USER_REVOKE_MODES:
        raise ValueProblem(f"{text!r} is not one of {', '.join(USER_REVOKE_MODES)}")
    return text


def _text(text: str) -> object:
    return text


_STRUCTURED = {"bool": _bool, "int_pos": _positive_int, "labels": _matching_list, "users": _matching_list}
_TEXTUAL = {
    "id": _identifier,
    "url": check_tunnel_url,
    "abs_path": _absolute_path,
    "revoke_mode": _revoke_mode,
    "str": _text,
}


def convert(key: Key, value: object, *, from_text: bool = False) -> object:
    """Turn a raw value (YAML, or text from the environment/flags when from_text) into the field's value."""
    if key.kind == "ignored":
        return None
    structured = _STRUCTURED.get(key.kind)
    if structured is not None:
        return structured(key, value, from_text)
    return _TEXTUAL[key.kind](_expect_str(value, "a string"))


def _unit(key: Key) -> str:
    return "milliseconds" if key.name.endswith("Ms") else "seconds"
