"""Load the configuration: file, then environment, then flags, over the defaults.

Precedence: flags > environment (`P0_SSH_AGENT_<KEY>`) > file > defaults. Every error names where the bad value
came from — `file:line:col` (1-based, as editors count) for the file, the variable or flag otherwise — and how to
fix it. Nothing is written here.
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from p0_ssh_agent.config.model import BY_FOLDED_NAME, DEFAULT_CONFIG_PATH, KEY_BY_NAME, KEYS, AgentConfig
from p0_ssh_agent.config.values import ValueProblem, convert
from p0_ssh_agent.errors import ConfigError

ENV_PREFIX = "P0_SSH_AGENT_"
# Variables with our prefix that are not configuration keys (test hooks read by the supervisor).
ENV_NOT_CONFIG = frozenset({"P0_SSH_AGENT_TEST_HOOKS"})
MAX_CONFIG_BYTES = 1_048_576


def suggestion(name: str, candidates: list[str]) -> str:
    close = difflib.get_close_matches(name.lower(), [c.lower() for c in candidates], n=1, cutoff=0.6)
    if not close:
        return ""
    original = next(c for c in candidates if c.lower() == close[0])
    return f"; did you mean {original!r}?"


def _key_names() -> list[str]:
    return [key.name for key in KEYS if key.kind != "ignored"]


def parse_config_text(text: str, *, source: str) -> dict[str, tuple[object, str]]:
    """YAML text -> {canonical key: (converted value, location)}. Raises ConfigError. Pure apart from ruamel."""
    yaml = YAML(typ="rt")
    try:
        data = yaml.load(text)
    except MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = (exc.problem or exc.context or "invalid YAML").strip()
        raise ConfigError(f"{where}: YAML syntax error: {problem}; fix the syntax at that position") from None
    except YAMLError as exc:
        raise ConfigError(f"{source}: YAML error: {exc}; fix the file") from None
    if data is None:
        return {}
    if not isinstance(data, CommentedMap):
        raise ConfigError(f"{source}:1:1: the file must be a mapping of key: value lines, not {type(data).__name__}")
    values: dict[str, tuple[object, str]] = {}
    spelled: dict[str, str] = {}
    for raw_key in data:
        key_line, key_col = data.lc.key(raw_key)
        key_where = f"{source}:{key_line + 1}:{key_col + 1}"
        if not isinstance(raw_key, str):
            raise ConfigError(f"{key_where}: key {raw_key!r} is not a name; keys are words like orgId")
        key = BY_FOLDED_NAME.get(raw_key.lower())
        if key is None:
            hint = suggestion(raw_key, _key_names() + [a for k in KEYS for a in k.aliases])
            raise ConfigError(f"{key_where}: unknown key {raw_key!r}{hint or '; see the example configuration'}")
        if key.name in spelled:
            raise ConfigError(
                f"{key_where}: {raw_key!r} sets {key.name} again (already set as {spelled[key.name]!r}); keep one"
            )
        spelled[key.name] = raw_key
        value_line, value_col = data.lc.value(raw_key)
        where = f"{source}:{value_line + 1}:{value_col + 1}"
        try:
            converted = convert(key, _plain(data[raw_key]))
        except ValueProblem as exc:
            raise ConfigError(f"{where}: {key.name}: {exc}") from None
        if key.kind != "ignored":
            values[key.name] = (converted, where)
    return values


def _plain(value: Any) -> object:
    """ruamel's round-trip types (CommentedSeq, ScalarFloat, ...) as plain Python values."""
    if isinstance(value, list):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return float(value)
    if isinstance(value, str):
        return str(value)
    return value


def _read(path: Path) -> str:
    try:
        with path.open("rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file; create it with 'p0-ssh-agent register' or pass --config") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror}") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: larger than 1 MiB; this is not a configuration file")
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 (byte {exc.start}); save the file as UTF-8") from None


def _from_env(env: Mapping[str, str]) -> dict[str, tuple[object, str]]:
    by_env_name = {key.name.lower(): key for key in KEYS if key.kind != "ignored"}
    values: dict[str, tuple[object, str]] = {}
    for variable, text in env.items():
        if not variable.startswith(ENV_PREFIX) or variable in ENV_NOT_CONFIG:
            continue
        # Both P0_SSH_AGENT_ORGID (what the Go agent's viper read) and P0_SSH_AGENT_ORG_ID are accepted.
        folded = variable[len(ENV_PREFIX) :].replace("_", "").lower()
        key = by_env_name.get(folded)
        if key is None:
            names = [f"{ENV_PREFIX}{k.name.upper()}" for k in KEYS if k.kind != "ignored"]
            raise ConfigError(f"environment variable {variable}: not a configuration key{suggestion(variable, names)}")
        try:
            values[key.name] = (convert(key, text, from_text=True), f"environment variable {variable}")
        except ValueProblem as exc:
            raise ConfigError(f"environment variable {variable}: {exc}") from None
    return values


def _from_flags(overrides: Mapping[str, object]) -> dict[str, tuple[object, str]]:
    values: dict[str, tuple[object, str]] = {}
    for name, value in overrides.items():
        if value is None:
            continue
        key = KEY_BY_NAME[name]
        try:
            values[name] = (convert(key, value, from_text=True), f"command-line flag for {name}")
        except ValueProblem as exc:
            raise ConfigError(f"command-line flag for {name}: {exc}") from None
    return values


def load_config(
    path: str | Path | None = None,
    *,
    env: Mapping[str, str] | None = None,
    overrides: Mapping[str, object] | None = None,
) -> AgentConfig:
    environment = os.environ if env is None else env
    # A missing default file is tolerated, as upstream: flags and environment may carry everything.
    default = DEFAULT_CONFIG_PATH if DEFAULT_CONFIG_PATH.exists() else None
    source = default if path is None else Path(path)
    merged: dict[str, tuple[object, str]] = {}
    if source is not None:
        merged.update(parse_config_text(_read(source), source=str(source)))
    merged.update(_from_env(environment))
    merged.update(_from_flags(overrides or {}))
    # Values were type-checked per key by convert(); the dict is Any-typed only for the dataclass call.
    fields: dict[str, Any] = {KEY_BY_NAME[name].field: value for name, (value, _) in merged.items()}
    return dataclasses.replace(AgentConfig(), **fields, source=source)


def require_connection_settings(config: AgentConfig) -> None:
    """What `start` needs beyond a valid file: the identity and where to connect."""
    where = str(config.source) if config.source else "the configuration (no file was found)"
    missing = [name for name, value in (("orgId", config.org_id), ("hostId", config.host_id)) if not value]
    if missing:
        raise ConfigError(
            f"{where}: {' and '.join(missing)} not set; run 'p0-ssh-agent register', or set "
            f"{missing[0]} in {config.source or DEFAULT_CONFIG_PATH} (or P0_SSH_AGENT_{missing[0].upper()})"
        )
