"""Write the configuration file atomically, keeping an existing file's comments, key order and quoting.

Values go in through ruamel's data model, never by string interpolation (upstream-protocol.md §12 item 22): a
value like `x"\\nfoo: bar` stays one string, and is then refused by the validator because it has a line break.
Every value is validated with the loader's rules before anything is written, and the rendered text is parsed
again, so `register` can never leave a configuration that `start` would refuse.
"""

from __future__ import annotations

import contextlib
import copy
import errno
import io
import os
import secrets
import stat
from collections.abc import Mapping
from pathlib import Path

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString

from p0_ssh_agent.config.loader import MAX_CONFIG_BYTES, parse_config_text
from p0_ssh_agent.config.model import BY_FOLDED_NAME, KEY_BY_NAME, Key
from p0_ssh_agent.config.values import ValueProblem, convert
from p0_ssh_agent.errors import AgentError, ConfigError, PermissionProblem

HEADER = (
    "p0-ssh-agent configuration, written by `p0-ssh-agent register` (your comments are kept when it updates it).\n"
    "Every key is described in /usr/share/doc/p0-ssh-agent/config.example.yaml and p0-ssh-agent(8).\n\n"
)
FILE_MODE = 0o640
DIRECTORY_MODE = 0o750


def _check_update(key: Key, value: object, source: str) -> object:
    """The YAML value to store for one update, after the loader's own validation of it."""
    if isinstance(value, os.PathLike):
        value = os.fspath(value)
    if not isinstance(value, str | int | bool | list | tuple):
        raise TypeError(f"write_config: {key.name} must be str, int, bool or a list of str, not {type(value)}")
    try:
        convert(key, list(value) if isinstance(value, tuple) else value)
    except ValueProblem as exc:
        raise ConfigError(f"{source}: {key.name}: {exc} (nothing was written)") from None
    if isinstance(value, list | tuple):
        return CommentedSeq(DoubleQuotedScalarString(item) for item in value)
    # Strings are written double-quoted, as the Go agent wrote them: `version: "1.0"` stays a string.
    return DoubleQuotedScalarString(value) if isinstance(value, str) else value


def _spellings_of(data: CommentedMap, key: Key) -> list[str]:
    return [k for k in data if isinstance(k, str) and BY_FOLDED_NAME.get(k.lower()) is key]


def _keep_comment_after_list(old: CommentedSeq, new: CommentedSeq) -> None:
    """ruamel stores the comment lines after a list with its last item, behind that item's own end-of-line
    comment (one token: "# eol\n# after\n", or "\n# after\n" without one). The lines after belong to the file,
    often to the next key, so they move to the new last item; the old item's own comment goes with the item."""
    entry = old.ca.items.get(len(old) - 1)
    token = entry[0] if entry else None
    if token is None or "\n" not in token.value:
        return
    after = token.value.split("\n", 1)[1]
    if not after:
        return
    moved = copy.copy(token)
    moved.value = "\n" + after
    new.ca.items[len(new) - 1] = [moved, None, None, None]


def _set(data: CommentedMap, key: Key, value: object) -> None:
    """Set one key where it already is (under whatever spelling), keeping its comments; else append it."""
    present = _spellings_of(data, key)
    if not present:
        data[key.name] = value
        return
    first = present[0]
    old = data[first]
    if isinstance(value, CommentedSeq) and isinstance(old, CommentedSeq) and value and old:
        _keep_comment_after_list(old, value)
    if present == [key.name]:
        data[key.name] = value  # ruamel keeps the key's position and its comments
        return
    # An older or differently-cased spelling (environment, ORGID): rename it in place, with its comment.
    position = list(data).index(first)
    comment = data.ca.items.pop(first, None)
    for spelling in present:
        del data[spelling]
    data.insert(position, key.name, value)
    if comment is not None:
        data.ca.items[key.name] = comment


def render_config(
    existing: str | None,
    updates: Mapping[str, object],
    *,
    defaults: Mapping[str, object] | None = None,
    source: str = "configuration",
) -> str:
    """The new file text: `existing` (validated first; errors name `source`) with `updates` set, and `defaults`
    set only where the key is absent. Effect-free."""
    yaml = YAML(typ="rt")
    yaml.indent(mapping=2, sequence=4, offset=2)
    yaml.preserve_quotes = True  # keys we do not touch keep their exact spelling
    present: dict[str, tuple[object, str]] = {}
    if existing is not None:
        present = parse_config_text(existing, source=source)
    data = yaml.load(existing) if existing is not None else None
    if data is None:  # a new or empty file
        data = CommentedMap()
        data.yaml_set_start_comment(HEADER)
    changes = dict(updates)
    for name, value in (defaults or {}).items():
        if name not in present and name not in changes:
            changes[name] = value
    for name, value in changes.items():
        key = KEY_BY_NAME.get(name)
        if key is None or key.kind == "ignored":
            raise ValueError(f"write_config: {name!r} is not a configuration key (use the camelCase YAML name)")
        _set(data, key, _check_update(key, value, source))
    out = io.StringIO()
    yaml.dump(data, out)
    text = out.getvalue()
    # Belt and braces: the file as written must load under exactly the rules `start` uses.
    parse_config_text(text, source=f"{source} (as it would be written)")
    return text


def _read_existing(dir_fd: int, name: str, path: Path) -> tuple[str | None, os.stat_result | None]:
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        return None, None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise ConfigError(
                f"{path} is a symbolic link; register replaces the file itself, so pass the link's target "
                "with --config (or replace the link with a regular file)"
            ) from None
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(handle.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a regular file; remove it or pass another --config")
        raw = handle.read(MAX_CONFIG_BYTES + 1)
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than 1 MiB, so not a configuration file; move it away")
    try:
        return raw.decode("utf-8"), info
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}); save the file as UTF-8") from None


def _open_directory(directory: Path) -> int:
    try:
        directory.mkdir(mode=DIRECTORY_MODE, parents=True, exist_ok=True)
        return os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except PermissionError:
        raise PermissionProblem(f"cannot create or open {directory}: permission denied; run as root") from None
    except OSError as exc:
        raise ConfigError(f"cannot use {directory} for the configuration: {exc.strerror}") from None


def _write_temp(dir_fd: int, name: str, data: bytes, mode: int, owner: os.stat_result | None) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode went through the umask
        if owner is not None:
            # Keep the owner and group an administrator gave the file; only root may change them, and a
            # non-root caller keeps its own (it could only replace the file because it owns the directory).
            with contextlib.suppress(PermissionError):
                os.fchown(fd, owner.st_uid, owner.st_gid)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)


def write_config(
    path: Path | str,
    updates: Mapping[str, object],
    *,
    defaults: Mapping[str, object] | None = None,
) -> None:
    """Set `updates` (camelCase names; str, int, bool or list of str) in the file at `path`, and `defaults`
    only where absent, keeping everything else. Atomic: temp file (O_EXCL, 0640) in the same directory, fsync,
    rename, fsync of the directory. On any error the old file is untouched. A new file gets a comment header.
    """
    path = Path(path)
    dir_fd = _open_directory(path.parent)
    temp = f".{path.name}.{secrets.token_hex(6)}.tmp"  # a dot-name: never mistaken for the real file
    try:
        existing, info = _read_existing(dir_fd, path.name, path)
        text = render_config(existing, updates, defaults=defaults, source=str(path))
        # Never looser than 0640, and never looser than what the administrator chose for the old file.
        mode = FILE_MODE if info is None else stat.S_IMODE(info.st_mode) & FILE_MODE
        _write_temp(dir_fd, temp, text.encode("utf-8"), mode, info)
        os.replace(temp, path.name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    except PermissionError:
        raise PermissionProblem(f"cannot write {path}: permission denied; run as root") from None
    except OSError as exc:
        raise AgentError(f"cannot write {path}: {exc.strerror}; check the disk and the directory") from None
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
        os.close(dir_fd)
