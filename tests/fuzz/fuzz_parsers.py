"""Coverage-guided fuzzing of the parsers that see network input (atheris, libFuzzer): `make fuzz`.

    python tests/fuzz/fuzz_parsers.py TARGET [libFuzzer options...] CORPUS_DIR

Each target states the only way its parser may fail; anything else (another exception, a hang, a crash) is a
finding. Targets:

    frame      protocol.jsonrpc.parse_frame: never raises, and every reply it builds is valid JSON
    forwarded  protocol.forwarded.parse_forwarded_request on any JSON value: InvalidParams only
    request    core.requests.parse_request for every command on any JSON object: RequestInvalid only
    keys       core.authorized_keys: add_block then remove_block gives the input back, byte for byte
    publickey  core.sshkeys.parse_public_key on a line of any known type over any blob: RequestInvalid only; what
               parses renders a line that parses to the same key (issue 11 item 4: zero-padded mpints, NULs and
               off-curve points are refused, never an exception of another kind)
    sudoers    core.sudoers.parse_dropin: ValueError only; what parses renders and reads back to the same grants
    config     config.loader.parse_config_text: ConfigError only
"""

from __future__ import annotations

import base64
import contextlib
import json
import sys
from collections.abc import Callable

import atheris

from p0_ssh_agent.config.loader import parse_config_text
from p0_ssh_agent.core.authorized_keys_format import add_block, remove_block
from p0_ssh_agent.core.request_errors import RequestInvalid
from p0_ssh_agent.core.requests import Command, parse_request
from p0_ssh_agent.core.sshkeys import KNOWN_KEY_TYPES, parse_public_key
from p0_ssh_agent.core.sudoers import parse_dropin, render_dropin
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.protocol.forwarded import InvalidParams, parse_forwarded_request
from p0_ssh_agent.protocol.jsonrpc import Invalid, loads_strict, parse_frame

# The editable install loads the agent through a custom loader that instrument_imports() cannot hook, so
# instrument_all() runs in __main__ instead: it instruments every function loaded by then.

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE fuzz"


def _json(data: bytes) -> object:
    try:
        return loads_strict(data.decode("utf-8", "surrogatepass"))
    except (ValueError, RecursionError):
        return None


def frame(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    text = provider.ConsumeUnicodeNoSurrogates(len(data)) if provider.ConsumeBool() else data.decode("latin-1")
    result = parse_frame(text)
    if isinstance(result, Invalid) and result.reply is not None:
        json.loads(result.reply)


def forwarded(data: bytes) -> None:
    with contextlib.suppress(InvalidParams):
        parse_forwarded_request(_json(data))


def request(data: bytes) -> None:
    value = _json(data)
    if not isinstance(value, dict):
        return
    for command in Command:
        with contextlib.suppress(RequestInvalid):
            parse_request(command.value, value)


def keys(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    request_id = "".join(c for c in provider.ConsumeUnicodeNoSurrogates(8) if c.isascii() and c.isalnum()) or "r1"
    content = provider.ConsumeBytes(provider.remaining_bytes())
    added = add_block(content, request_id, KEY)
    if content and request_id.encode() not in content:  # the file held no pair of this request before
        assert remove_block(added, request_id) == content, (content, request_id)


_KEY_TYPES = sorted(KNOWN_KEY_TYPES)


def publickey(data: bytes) -> None:
    provider = atheris.FuzzedDataProvider(data)
    key_type = _KEY_TYPES[provider.ConsumeIntInRange(0, len(_KEY_TYPES) - 1)]
    # Most of the time the blob starts with its own type string, so the fuzzer spends its effort on the fields.
    prefix = len(key_type).to_bytes(4, "big") + key_type.encode() if provider.ConsumeBool() else b""
    blob = prefix + provider.ConsumeBytes(provider.remaining_bytes())
    line = f"{key_type} {base64.b64encode(blob).decode()} fuzz"
    try:
        key = parse_public_key(line, field="publicKey")
    except RequestInvalid:
        return
    assert parse_public_key(key.line(), field="publicKey") == key, line


def sudoers(data: bytes) -> None:
    text = data.decode("utf-8", "replace")
    try:
        grants = parse_dropin(text)
    except ValueError:
        return
    # Rendering is canonical (sorted, duplicates dropped); reading it back must give the same grants.
    assert set(parse_dropin(render_dropin(grants))) == set(grants), text


def config(data: bytes) -> None:
    with contextlib.suppress(ConfigError):
        parse_config_text(data.decode("utf-8", "replace"), source="fuzz.yaml")


TARGETS: dict[str, Callable[[bytes], None]] = {
    "frame": frame,
    "forwarded": forwarded,
    "request": request,
    "keys": keys,
    "publickey": publickey,
    "sudoers": sudoers,
    "config": config,
}

if __name__ == "__main__":
    atheris.instrument_all()
    target = TARGETS[sys.argv[1]]
    atheris.Setup([sys.argv[0], *sys.argv[2:]], target)
    atheris.Fuzz()
