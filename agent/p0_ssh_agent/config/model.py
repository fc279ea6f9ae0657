"""The configuration's shape: the frozen dataclass and the table of keys (pure).

Keys follow upstream-protocol.md §8. One table drives the file, the environment and the flags alike, so the
three sources cannot disagree about names or types.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from p0_ssh_agent.errors import ConfigError

DEFAULT_CONFIG_PATH = Path("/etc/p0-ssh-agent/config.yaml")
USER_REVOKE_MODES = ("keep", "lock", "delete")
RECONCILE_MODES = ("report", "repair")
KEY_STORE_MODES = ("home", "store")  # core/sshd_key_store.py
DEFAULT_POLICY_PATH = Path("/etc/p0-ssh-agent/policy.cedar")
# Agent access (issue 17, docs/ai-agents.md): its own deny-by-default policy and its trust file.
CONFINEMENT_MODES = ("auto", "systemd", "namespace")  # agent_access/confine.py choose_mode
DEFAULT_ACCESS_POLICY_PATH = Path("/etc/p0-ssh-agent/agent-access.cedar")
DEFAULT_ACCESS_KEYS_PATH = Path("/etc/p0-ssh-agent/agent-access-keys.json")


@dataclass(frozen=True, slots=True)
class AgentConfig:
    version: str = "1.0"
    org_id: str | None = None  # yaml orgId (deprecated alias tenantId)
    host_id: str | None = None  # hostId
    hostname: str | None = None  # hostname
    tunnel_host: str = "wss://api.p0.app"  # tunnelHost
    key_path: Path = Path("/etc/p0-ssh-agent/keys")  # keyPath (deprecated alias jwkPath)
    labels: tuple[str, ...] = ()  # labels: "key=value" strings
    environment_id: str = "default"  # environmentId (older name: environment)
    heartbeat_interval_seconds: int = 60  # heartbeatIntervalSeconds, > 0
    # How the connection waits (docs/connection.md); the defaults are the documented protocol behaviour.
    heartbeat_timeout_seconds: int = 10  # heartbeatTimeoutSeconds: setClientId and each heartbeat, 1..300
    reconnect_max_seconds: int = 11  # reconnectMaxSeconds: the reconnect period (backoff.py PhasedRetry), 1..3600
    unauthorized_retry_seconds: int = 30  # unauthorizedRetrySeconds: first ceiling after a 401/403, 1..300
    dry_run: bool = False  # dryRun
    tunnel_timeout_ms: int | None = None  # tunnelTimeoutMs: accepted, informational (the Go agent never used it)
    state_dir: Path | None = None  # stateDir (absolute)
    tunnel_ca_file: Path | None = None  # tunnelCaFile (absolute): extra CA bundle for wss://
    # tunnelPins: "sha256//<base64>" pins of the tunnel certificate's public key (SPKI), none or at least two
    tunnel_pins: tuple[str, ...] = ()
    proxy: str | None = None  # proxy: http://[user:pass@]host:port
    user_revoke_mode: str = "lock"  # userRevokeMode: keep | lock | delete
    adopt_users: tuple[str, ...] = ()  # adoptUsers: existing users the agent may manage
    # keyStore: home | store (core/sshd_key_store.py; change it with `p0-ssh-agent key-store`, which moves the grants)
    key_store: str = "home"
    # Guardrails (issue 6): a local Cedar policy, grant expiry on the host, reconciliation, an audit file.
    policy_file: Path = DEFAULT_POLICY_PATH  # policyFile: local Cedar policy, root-owned; never set over the network
    max_grant_seconds: int | None = None  # maxGrantSeconds: grants older than this are revoked by the agent
    offline_revoke_after_seconds: int | None = None  # offlineRevokeAfterSeconds: fail closed (off by default)
    reconcile: str = "report"  # reconcile: report | repair (drift between the ledger and the host)
    reconcile_interval_seconds: int = 3600  # reconcileIntervalSeconds: periodic reconciliation
    audit_file: Path | None = None  # auditFile: JSON-lines audit trail, for hosts without journald
    # Health (issue 15): the live state `status` reads, and the metrics textfile for node_exporter.
    runtime_dir: Path | None = None  # runtimeDir: status.json and agent.lock (None: /run/p0-ssh-agent)
    metrics_file: Path | None = None  # metricsFile: Prometheus textfile (None: <runtimeDir>/p0-ssh-agent.prom)
    metrics_group: str | None = None  # metricsGroup: group that may read the metrics file (e.g. prometheus)
    # Agent access (issue 17): scoped file operations and gated exec for AI agents, off by default. The switch is
    # applied on SIGHUP; the two files are loaded (and a bad one refused) at start-up and on reload.
    agent_access: bool = False  # agentAccess: the kill switch
    agent_access_users: tuple[str, ...] = ()  # agentAccessUsers: the only accounts an operation may run as
    agent_access_policy_file: Path = DEFAULT_ACCESS_POLICY_PATH  # agentAccessPolicyFile: its own Cedar policy
    agent_access_keys_file: Path = DEFAULT_ACCESS_KEYS_PATH  # agentAccessKeysFile: UCAN issuers and approvers
    agent_access_confinement: str = "auto"  # agentAccessConfinement: auto | systemd | namespace
    source: Path | None = None  # the file this came from (None: defaults, environment and flags only)

    @property
    def client_id(self) -> str:
        if not self.org_id or not self.host_id:
            where = self.source or DEFAULT_CONFIG_PATH
            raise ConfigError(
                f"{where}: orgId and hostId are both needed to form the client id <orgId>:<hostId>:ssh; "
                "run 'p0-ssh-agent register'"
            )
        return f"{self.org_id}:{self.host_id}:ssh"


# How a key's raw value is checked and converted (config/values.py has one function per kind).
Kind = Literal[
    "text",  # a non-empty single-line string
    "version",  # like text, but `version: 1.0` (a YAML number) is accepted too
    "id",  # orgId/hostId: part of the client id, so no ':' and no whitespace
    "tunnel_url",  # wss://..., or ws:// to loopback only
    "proxy_url",  # http://[user:pass@]host[:port]
    "positive_int",
    "bool",
    "absolute_path",
    "labels",  # list of key=value
    "user_names",  # list of login names
    "tunnel_pins",  # list of sha256//<base64> pins: none, or at least two and all different
    "revoke_mode",  # one of USER_REVOKE_MODES
    "reconcile_mode",  # one of RECONCILE_MODES
    "key_store",  # one of KEY_STORE_MODES
    "confinement",  # one of CONFINEMENT_MODES
    "ignored",  # accepted for old files, never used
]


@dataclass(frozen=True, slots=True)
class Key:
    """One configuration key: its canonical YAML name, dataclass field, value kind and older spellings."""

    name: str
    field: str
    kind: Kind
    aliases: tuple[str, ...] = ()
    flag: str = ""  # the command-line flag that sets it, named in error messages; "" means derived from name
    maximum: int | None = None  # positive_int only: the largest value accepted (None: any 32-bit int)

    @property
    def flag_name(self) -> str:
        return self.flag or "--" + re.sub(r"(?<!^)(?=[A-Z])", "-", self.name).lower()


KEYS: tuple[Key, ...] = (
    Key("version", "version", "version"),
    Key("orgId", "org_id", "id", ("tenantId",)),
    Key("hostId", "host_id", "id"),
    Key("hostname", "hostname", "text"),
    Key("tunnelHost", "tunnel_host", "tunnel_url"),
    Key("keyPath", "key_path", "absolute_path", ("jwkPath",)),
    Key("labels", "labels", "labels", flag="--label/--labels"),
    Key("environmentId", "environment_id", "text", ("environment",), flag="--environment"),
    Key("heartbeatIntervalSeconds", "heartbeat_interval_seconds", "positive_int"),
    Key("heartbeatTimeoutSeconds", "heartbeat_timeout_seconds", "positive_int", maximum=300),
    Key("reconnectMaxSeconds", "reconnect_max_seconds", "positive_int", maximum=3600),
    # 300 is the 401/403 wait's own ceiling (runtime/backoff.py AUTH_BACKOFF_CAP): the first wait cannot exceed it.
    Key("unauthorizedRetrySeconds", "unauthorized_retry_seconds", "positive_int", maximum=300),
    Key("dryRun", "dry_run", "bool"),
    Key("tunnelTimeoutMs", "tunnel_timeout_ms", "positive_int", flag="--tunnel-timeout"),
    Key("stateDir", "state_dir", "absolute_path"),
    Key("tunnelCaFile", "tunnel_ca_file", "absolute_path"),
    Key("tunnelPins", "tunnel_pins", "tunnel_pins"),
    Key("proxy", "proxy", "proxy_url"),
    Key("userRevokeMode", "user_revoke_mode", "revoke_mode"),
    Key("adoptUsers", "adopt_users", "user_names"),
    Key("keyStore", "key_store", "key_store"),
    Key("policyFile", "policy_file", "absolute_path"),
    Key("maxGrantSeconds", "max_grant_seconds", "positive_int"),
    Key("offlineRevokeAfterSeconds", "offline_revoke_after_seconds", "positive_int"),
    Key("reconcile", "reconcile", "reconcile_mode"),
    Key("reconcileIntervalSeconds", "reconcile_interval_seconds", "positive_int"),
    Key("auditFile", "audit_file", "absolute_path"),
    Key("runtimeDir", "runtime_dir", "absolute_path"),
    Key("metricsFile", "metrics_file", "absolute_path"),
    Key("metricsGroup", "metrics_group", "text"),
    Key("agentAccess", "agent_access", "bool"),
    Key("agentAccessUsers", "agent_access_users", "user_names"),
    Key("agentAccessPolicyFile", "agent_access_policy_file", "absolute_path"),
    Key("agentAccessKeysFile", "agent_access_keys_file", "absolute_path"),
    Key("agentAccessConfinement", "agent_access_confinement", "confinement"),
    # Old Go agents wrote logPath (and the oldest keygenPath); neither was ever used (logs go to journald).
    # Accepted, so files written by those agents keep loading.
    Key("logPath", "", "ignored", ("keygenPath",)),
)

# Keys match case-insensitively, as they did in the Go agent (viper lower-cases every key before matching);
# the canonical spelling is the camelCase one, and that is what `register` writes.
BY_FOLDED_NAME: dict[str, Key] = {spelling.lower(): key for key in KEYS for spelling in (key.name, *key.aliases)}
KEY_BY_NAME: dict[str, Key] = {key.name: key for key in KEYS}
