"""Load the configuration: defaults, then the file, then the environment, then flags.

Precedence: flags > environment (`P0_SSH_AGENT_<KEY>`) > file > defaults. Every error names where the bad value
came from — `file:line:col` (1-based, as editors count) for the file, the variable or flag otherwise — and how to
fix it; the first error found is reported. Nothing is written here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.constructor import DuplicateKeyError
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from p0_ssh_agent.config import model
from p0_ssh_agent.config.model import BY_FOLDED_NAME, KEY_BY_NAME, KEYS, AgentConfig, Key
from p0_ssh_agent.config.values import ValueProblem, convert
from p0_ssh_agent.errors import ConfigError

ENV_PREFIX = "P0_SSH_AGENT_"
# Variables with our prefix that are not configuration keys (test hooks read by the supervisor).
# Our variables that are not configuration keys: the booted-systemd test hook (runtime/supervisor.py) and the
# journald socket the audit trail writes to (host/audit_trail.py; empty turns journald off).
ENV_NOT_CONFIG = frozenset({"P0_SSH_AGENT_TEST_HOOKS", "P0_SSH_AGENT_JOURNAL_SOCKET"})
MAX_CONFIG_BYTES = 1_048_576

# name -> (converted value, where it came from, the raw value as given); the raw value lets two spellings of
# one key (environment and environmentId) agree without an error.
Layer = dict[str, tuple[object, str, object]]


def suggestion(name: str, candidates: Iterable[str]) -> str:
    """'; did you mean X?' for the closest candidate (case-insensitive), or ''."""
    by_folded = {c.lower(): c for c in candidates}
    close = difflib.get_close_matches(name.lower(), list(by_folded), n=1, cutoff=0.6)
    return f"; did you mean {by_folded[close[0]]!r}?" if close else ""


def _spellings() -> list[str]:
    return [spelling for key in KEYS for spelling in (key.name, *key.aliases)]


def _syntax_error(exc: MarkedYAMLError, source: str) -> ConfigError:
    mark = exc.problem_mark or exc.context_mark
    where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
    if isinstance(exc, DuplicateKeyError) and exc.context_mark is not None:
        # ruamel's own text repeats both values; a value may be a proxy password.
        first = exc.context_mark.line + 1
        return ConfigError(f"{where}: duplicate key (first given on line {first}); keep one of the two")
    problem = (exc.problem or exc.context or "invalid YAML").strip()
    return ConfigError(f"{where}: YAML syntax error: {problem}; fix the syntax at that position")


def _position(node: CommentedMap | CommentedSeq, source: str) -> str:
    return f"{source}:{node.lc.line + 1}:{node.lc.col + 1}"


def _plain(value: Any) -> object:
    """One ruamel value as plain Python: scalars, or a list of scalars.

    Only one level deep on purpose: no key takes nested data, so deeper containers stay as they are and fail the
    type check. Never recursing also means a self-referencing or exponentially aliased document (`&a [*a]`,
    "billion laughs") costs nothing.
    """
    if isinstance(value, list):
        return [_scalar(item) for item in value]
    return _scalar(value)


def _scalar(value: Any) -> object:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)  # ruamel's ScalarInt/HexInt keep formatting data we do not need
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def parse_config_text(text: str, *, source: str) -> dict[str, tuple[object, str]]:
    """YAML text -> {canonical key: (converted value, 'file:line:col')}. Raises ConfigError. Effect-free."""
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        raise _syntax_error(exc, source) from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}; fix the file") from None
    if data is None:  # an empty file, or only comments: every key keeps its default
        return {}
    if not isinstance(data, CommentedMap):
        shown = "a list" if isinstance(data, CommentedSeq) else f"a single value ({type(data).__name__})"
        where = _position(data, source) if isinstance(data, CommentedSeq) else f"{source}:1:1"
        raise ConfigError(f"{where}: the file must be a mapping of 'key: value' lines, not {shown}; see the example")
    if getattr(data, "merge", None):
        raise ConfigError(f"{_position(data, source)}: merge keys (<<) are not supported; write the keys out")
    layer: Layer = {}
    for raw_key in data:
        key_line, key_col = data.lc.key(raw_key)
        key_where = f"{source}:{key_line + 1}:{key_col + 1}"
        if not isinstance(raw_key, str):
            raise ConfigError(f"{key_where}: {raw_key!r} is not a key name; keys are words like orgId")
        key = BY_FOLDED_NAME.get(raw_key.lower())
        if key is None:
            raise ConfigError(
                f"{key_where}: unknown key {raw_key!r}{suggestion(raw_key, _spellings()) or '; remove it'}"
                " (keys are listed in /usr/share/doc/p0-ssh-agent/config.example.yaml)"
            )
        raw = data[raw_key]
        value_line, value_col = data.lc.value(raw_key)
        where = f"{source}:{value_line + 1}:{value_col + 1}"
        if raw is None:
            # `labels:` with nothing after it: the key is present but unset, so it keeps its default.
            continue
        plain = _plain(raw)
        try:
            converted = convert(key, plain)
        except ValueProblem as exc:
            if exc.index is not None and isinstance(raw, CommentedSeq):
                item_line, item_col = raw.lc.item(exc.index)
                where = f"{source}:{item_line + 1}:{item_col + 1}"
            raise ConfigError(f"{where}: {key.name}: {exc}") from None
        _add(layer, key, (converted, where, plain), raw_key)
    return {name: (value, where) for name, (value, where, _) in layer.items()}


def _add(layer: Layer, key: Key, entry: tuple[object, str, object], spelled: str) -> None:
    """Put one value in a layer; a second spelling of the same key (environment and environmentId, orgId and
    ORGID) is fine when it says the same thing and an error when it does not."""
    if key.kind == "ignored":
        return
    previous = layer.get(key.name)
    if previous is not None and previous[2] != entry[2]:
        raise ConfigError(
            f"{entry[1]}: {spelled} and {previous[1]} both set {key.name}, to different values; keep one of them"
        )
    layer[key.name] = entry


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(
            f"{path}: no such file; create it with 'p0-ssh-agent register', or pass the right --config"
        ) from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}; check the path and its permissions") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than 1 MiB, so not a configuration file; pass the right --config")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}); save the file as UTF-8") from None


def env_key(variable: str) -> Key | None:
    """P0_SSH_AGENT_ORGID (viper style, what the Go agent read) and P0_SSH_AGENT_ORG_ID both name orgId."""
    folded = variable[len(ENV_PREFIX) :].replace("_", "").lower()
    return BY_FOLDED_NAME.get(folded)


def _from_env(env: Mapping[str, str]) -> Layer:
    layer: Layer = {}
    for variable in sorted(env):
        if not variable.startswith(ENV_PREFIX) or variable in ENV_NOT_CONFIG:
            continue
        text = env[variable]
        key = env_key(variable)
        if key is None:
            names = [ENV_PREFIX + s.upper() for s in _spellings()] + sorted(ENV_NOT_CONFIG)
            hint = suggestion(variable, names) or f"; unset it (configuration variables are {ENV_PREFIX}<KEY>)"
            raise ConfigError(f"environment variable {variable}: not a configuration key{hint}")
        if not text.strip():
            continue  # as viper: an empty variable counts as unset (systemd's `Environment=X=` clears a value)
        where = f"environment variable {variable}"
        try:
            converted = convert(key, text, from_text=True)
        except ValueProblem as exc:
            raise ConfigError(f"{where}: {exc}") from None
        _add(layer, key, (converted, where, text.strip()), variable)
    return layer


def _from_flags(overrides: Mapping[str, object]) -> Layer:
    layer: Layer = {}
    for name, value in overrides.items():
        key = KEY_BY_NAME.get(name)
        if key is None:  # a programming error in a subcommand, not an operator's mistake
            raise ValueError(f"override {name!r} is not a configuration key (use the camelCase YAML name)")
        if value is None:  # the flag was not given
            continue
        where = f"command-line flag {key.flag_name}"
        try:
            layer[name] = (convert(key, value, from_text=True), where, value)
        except ValueProblem as exc:
            raise ConfigError(f"{where}: {exc}") from None
    return layer


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
    missing_ok: bool = False,
) -> AgentConfig:
    """The configuration from `path` (None: the default file if it exists), the environment (None: os.environ)
    and `overrides` (flags, keyed by the camelCase name; None values are flags not given).

    missing_ok: an explicit `path` that does not exist counts as an empty file (`register` creates it).
    """
    environment = os.environ if env is None else env
    source: Path | None
    if path is None:
        # A missing default file is tolerated, as upstream: flags and environment may carry everything.
        source = model.DEFAULT_CONFIG_PATH if model.DEFAULT_CONFIG_PATH.exists() else None
    else:
        source = Path(path)
        if missing_ok and not source.exists() and not source.is_symlink():
            source = None
    file_values = parse_config_text(_read(source), source=str(source)) if source is not None else {}
    merged: dict[str, tuple[object, str]] = dict(file_values)
    merged.update({name: (value, where) for name, (value, where, _) in _from_env(environment).items()})
    merged.update({name: (value, where) for name, (value, where, _) in _from_flags(overrides or {}).items()})
    # Each value was type-checked for its key by convert(); Any only bridges to the dataclass's keyword call.
    fields: dict[str, Any] = {KEY_BY_NAME[name].field: value for name, (value, _) in merged.items()}
    config = dataclasses.replace(AgentConfig(), **fields, source=source)
    _check_pins_have_tls(config, {name: where for name, (_, where) in merged.items()})
    return config


def _check_pins_have_tls(config: AgentConfig, where: Mapping[str, str]) -> None:
    """tunnelPins pin a TLS certificate: with ws:// there is none, and pins that silently check nothing would let an
    admin believe the tunnel is pinned."""
    if config.tunnel_pins and config.tunnel_host.lower().startswith("ws://"):
        raise ConfigError(
            f"{where.get('tunnelPins', 'tunnelPins')}: tunnelPins: tunnelHost {config.tunnel_host!r} is ws:// "
            f"(set at {where.get('tunnelHost', 'its default')}), which has no TLS certificate to pin; use wss:// "
            "or remove tunnelPins"
        )


def require_connection_settings(config: AgentConfig) -> None:
    """What `start` needs beyond a valid file: orgId, hostId, tunnelHost and keyPath, present and valid.

    load_config already validated whatever it read; this also guards an AgentConfig built in code.
    """
    where = str(config.source) if config.source else "no configuration file"
    file_hint = config.source or model.DEFAULT_CONFIG_PATH
    settings: tuple[tuple[str, object], ...] = (
        ("orgId", config.org_id),
        ("hostId", config.host_id),
        ("tunnelHost", config.tunnel_host),
        ("keyPath", str(config.key_path) if config.key_path else None),
    )
    missing = [name for name, value in settings if value is None or value == ""]
    if missing:
        # Every missing key at once: an unregistered host lacks both orgId and hostId, and saying one at a time
        # sends the admin round twice.
        names = " and ".join(missing) if len(missing) <= 2 else ", ".join(missing[:-1]) + " and " + missing[-1]
        flags = ", ".join(f"{ENV_PREFIX}{name.upper()} or {KEY_BY_NAME[name].flag_name}" for name in missing)
        raise ConfigError(
            f"{where}: {names} {'is' if len(missing) == 1 else 'are'} not set; run 'p0-ssh-agent register' "
            f"(with --url, or with --org-id and --host-id), or set {' and '.join(missing)} in {file_hint} "
            f"(or {flags})"
        )
    for name, value in settings:
        key = KEY_BY_NAME[name]
        try:
            convert(key, value)  # for tunnelHost this is the rule that keeps the token off clear-text links
        except ValueProblem as exc:
            raise ConfigError(f"{where}: {name}: {exc}") from None
