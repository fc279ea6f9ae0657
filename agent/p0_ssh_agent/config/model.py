"""The configuration's shape: the frozen dataclass and the table of keys (pure).

Keys follow upstream-protocol.md §8. The table drives parsing of the file, the environment and the flags alike,
so the three sources cannot disagree about names or types.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/p0-ssh-agent/config.yaml")
USER_REVOKE_MODES = ("keep", "lock", "delete")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    version: str = "1.0"
    org_id: str | None = None
    host_id: str | None = None
    hostname: str | None = None
    tunnel_host: str = "wss://api.p0.app"
    key_path: Path = Path("/etc/p0-ssh-agent/keys")
    labels: tuple[str, ...] = ()
    environment_id: str = "default"
    heartbeat_interval_seconds: int = 60
    dry_run: bool = False
    tunnel_timeout_ms: int | None = None
    state_dir: Path | None = None
    tunnel_ca_file: Path | None = None
    proxy: str | None = None
    user_revoke_mode: str = "lock"
    adopt_users: tuple[str, ...] = ()
    source: Path | None = None

    @property
    def client_id(self) -> str:
        if not self.org_id or not self.host_id:
            raise ConfigError("orgId and hostId are both needed to form the client id; run 'p0-ssh-agent register'")
        return f"{self.org_id}:{self.host_id}:ssh"


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its canonical YAML name, dataclass field and value kind."""

    name: str
    field: str
    kind: str  # str | id | url | int_pos | bool | abs_path | labels | users | revoke_mode | ignored
    aliases: tuple[str, ...] = ()


KEYS: tuple[Key, ...] = (
    Key("version", "version", "str"),
    Key("orgId", "org_id", "id", ("tenantId",)),
    Key("hostId", "host_id", "id"),
    Key("hostname", "hostname", "str"),
    Key("tunnelHost", "tunnel_host", "url"),
    Key("keyPath", "key_path", "abs_path", ("jwkPath",)),
    Key("labels", "labels", "labels"),
    Key("environmentId", "environment_id", "str", ("environment",)),
    Key("heartbeatIntervalSeconds", "heartbeat_interval_seconds", "int_pos"),
    Key("dryRun", "dry_run", "bool"),
    Key("tunnelTimeoutMs", "tunnel_timeout_ms", "int_pos"),
    Key("stateDir", "state_dir", "abs_path"),
    Key("tunnelCaFile", "tunnel_ca_file", "abs_path"),
    Key("proxy", "proxy", "str"),
    Key("userRevokeMode", "user_revoke_mode", "revoke_mode"),
    Key("adoptUsers", "adopt_users", "users"),
    # Old Go agents wrote logPath; it was never used (journald). Accepted so old files keep loading.
    Key("logPath", "", "ignored", ("keygenPath",)),
)

# Keys match case-insensitively, as they did in the Go agent (viper lower-cases every key); the canonical
# spelling is the camelCase one, and that is what `register` writes.
BY_FOLDED_NAME: dict[str, Key] = {spelling.lower(): key for key in KEYS for spelling in (key.name, *key.aliases)}
KEY_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}
