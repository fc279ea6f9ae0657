"""Write the configuration file atomically, keeping an existing file's comments and key order.

Values go in through ruamel's data model, never by string interpolation (upstream-protocol.md §12 item 22): a
value like `x"\\nfoo: bar` stays one string. The result is re-parsed with the loader's own rules before it
replaces the old file, so `register` can never leave a configuration that `start` would refuse.
"""

from __future__ import annotations

import io
import os
import secrets
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from p0_ssh_agent.config.loader import parse_config_text
from p0_ssh_agent.config.model import BY_FOLDED_NAME, KEY_BY_NAME
from p0_ssh_agent.errors import ConfigError

HEADER = "p0-ssh-agent configuration (see /usr/share/doc/p0-ssh-agent/config.example.yaml)\n"
FILE_MODE = 0o640


def render_config(existing: str | None, updates: Mapping[str, object]) -> str:
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    data = yaml.load(existing) if existing else None
    if data is None:
        data = CommentedMap()
        data.yaml_set_start_comment(HEADER)
    if not isinstance(data, CommentedMap):
        raise ConfigError("the existing configuration is not a mapping; fix or remove it first")
    for name, value in updates.items():
        if name not in KEY_BY_NAME:
            raise ConfigError(f"internal: {name!r} is not a configuration key")
        # Drop other spellings of the same key (an old `environment:` when writing environmentId).
        for present in [k for k in data if isinstance(k, str) and BY_FOLDED_NAME.get(k.lower()) is KEY_BY_NAME[name]]:
            if present != name:
                del data[present]
        data[name] = CommentedSeq(value) if isinstance(value, list | tuple) else value
    out = io.StringIO()
    yaml.dump(data, out)
    return out.getvalue()


def write_config(path: Path, updates: Mapping[str, object]) -> None:
    path = Path(path)
    try:
        existing = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        existing = None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    text = render_config(existing, updates)
    parse_config_text(text, source=f"{path} (new content)")
    directory = path.parent
    directory.mkdir(mode=0o750, parents=True, exist_ok=True)
    temp = directory / f".{path.name}.{secrets.token_hex(6)}.tmp"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, FILE_MODE)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), FILE_MODE)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        temp.replace(path)
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    finally:
        temp.unlink(missing_ok=True)
