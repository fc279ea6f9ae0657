"""The configuration loader on real files in tmp_path: every bad-config case of the issue reports the exact
`file:line:col` (1-based) and exits 78; precedence flags > environment > file > defaults; case-insensitive keys
and the old spellings; the environment's two naming styles; what `start` needs."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from p0_ssh_agent.config import (
    DEFAULT_CONFIG_PATH,
    AgentConfig,
    load_config,
    parse_config_text,
    require_connection_settings,
)
from p0_ssh_agent.config import loader as loader_module
from p0_ssh_agent.config import model as model_module
from p0_ssh_agent.errors import ConfigError, ExitCode

COMPLETE = """\
# a comment first, so line numbers are not trivially 1
version: "1.0"
orgId: "acme"
hostId: "host-1"
tunnelHost: "wss://tunnel.example.com/ws"
keyPath: "/etc/p0-ssh-agent/keys"
"""


def write(tmp_path: Path, text: str, name: str = "config.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path, **kwargs: object) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(path, env={}, **kwargs)  # type: ignore[arg-type]
    assert info.value.exit_code == ExitCode.CONFIG
    assert int(info.value.exit_code) == 78
    return str(info.value)


# --- the bad-config cases of the issue: exact file:line:col --------------------------------------------------


def test_yaml_syntax_error_points_at_the_position(tmp_path: Path) -> None:
    path = write(tmp_path, 'orgId: "acme"\nhostId: "unterminated\nkeyPath: /x\n')
    message = config_error(path)
    assert message.startswith(f"{path}:4:1: YAML syntax error: ")
    assert message.endswith("; fix the syntax at that position")


def test_a_tab_indent_is_a_syntax_error_at_the_tab(tmp_path: Path) -> None:
    path = write(tmp_path, "orgId: acme\n\thostId: h\n")
    assert config_error(path).startswith(f"{path}:2:1: YAML syntax error: found character '\\t'")


def test_wrong_type_points_at_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE + "heartbeatIntervalSeconds: sixty\n")
    assert config_error(path) == (
        f"{path}:7:27: heartbeatIntervalSeconds: expected a whole number of seconds, got the text 'sixty'; "
        "write e.g. 60"
    )


def test_unknown_key_suggests_the_closest(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE + "  # indented comment\ntunelHost: wss://x\n")
    message = config_error(path)
    assert message.startswith(f"{path}:8:1: unknown key 'tunelHost'; did you mean 'tunnelHost'?")


def test_unknown_key_without_a_close_match_says_to_remove_it(tmp_path: Path) -> None:
    path = write(tmp_path, "zzzzzz: 1\n")
    assert config_error(path).startswith(f"{path}:1:1: unknown key 'zzzzzz'; remove it")


def test_missing_org_id_is_refused_for_start(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE.replace('orgId: "acme"\n', ""))
    config = load_config(path, env={})  # a valid file: `status` and `keygen` can use it
    with pytest.raises(ConfigError) as info:
        require_connection_settings(config)
    assert info.value.exit_code == 78
    assert str(info.value) == (
        f"{path}: orgId is not set; run 'p0-ssh-agent register' (with --url, or with --org-id and --host-id), "
        f"or set orgId in {path} (or P0_SSH_AGENT_ORGID or --org-id)"
    )


def test_an_unregistered_config_names_every_missing_key_at_once(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE.replace('orgId: "acme"\n', "").replace("hostId:", "# hostId:"))
    with pytest.raises(ConfigError) as info:
        require_connection_settings(load_config(path, env={}))
    assert str(info.value).startswith(f"{path}: orgId and hostId are not set; run 'p0-ssh-agent register'")
    assert "--org-id and --host-id" in str(info.value)


def test_ws_to_a_public_host_is_refused_at_the_value(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE.replace("wss://tunnel.example.com/ws", "ws://tunnel.example.com/ws"))
    message = config_error(path)
    assert message.startswith(f"{path}:5:13: tunnelHost: ws:// to tunnel.example.com would send the agent's token")
    assert "clear text; use wss://" in message


def test_heartbeat_zero_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE + "heartbeatIntervalSeconds: 0\n")
    assert config_error(path) == (
        f"{path}:7:27: heartbeatIntervalSeconds: must be greater than 0, got 0; write e.g. 60 (the default)"
    )


# --- more ways a file can be wrong ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "position", "fragment"),
    [
        ("heartbeatIntervalSeconds: true\n", "1:27", "got a boolean (true)"),
        ("heartbeatIntervalSeconds: 1.5\n", "1:27", "got a number (1.5)"),
        ("heartbeatIntervalSeconds: -5\n", "1:27", "must be greater than 0"),
        ("dryRun: 'yes'\n", "1:9", "expected true or false"),
        ("orgId: 'acme:prod'\n", "1:8", "contains ':' or whitespace"),
        ("hostId: 'host 1'\n", "1:9", "contains ':' or whitespace"),
        ("hostId: 12345\n", "1:9", 'put the value in quotes: hostId: "..."'),
        ("orgId: 2024-01-01\n", "1:8", "got a date"),
        ("orgId: {a: 1}\n", "1:8", "got a mapping"),
        ("orgId: ''\n", "1:8", "the value is empty"),
        ('hostname: "web\\u2028two"\n', "1:11", "line breaks are not allowed"),
        ("keyPath: keys\n", "1:10", "'keys' is not an absolute path"),
        ("stateDir: var/lib\n", "1:11", "not an absolute path"),
        ("tunnelHost: https://tunnel.example.com\n", "1:13", "is not a WebSocket URL"),
        ("tunnelHost: wss://tunnel.example.com:99999\n", "1:13", "bad port"),
        ("tunnelHost: wss://user:pw@tunnel.example.com\n", "1:13", "user:password@ in the URL is not supported"),
        ("userRevokeMode: purge\n", "1:17", "write one of keep, lock, delete"),
        ("labels: env=prod\n", "1:9", "expected a list"),
        ("labels:\n  - env=prod\n  - nope\n", "3:5", "item 2, 'nope', is not key=value"),
        ("labels:\n  - 5\n", "2:5", "item 1 is a number (5), not a string"),
        ("adoptUsers: [deploy, Root]\n", "1:22", "item 2, 'Root', is not a valid user name"),
        ("proxy: ftp://proxy:21\n", "1:8", "only http:// proxies"),
    ],
)
def test_bad_values_name_the_value_position(tmp_path: Path, text: str, position: str, fragment: str) -> None:
    path = write(tmp_path, text)
    message = config_error(path)
    assert message.startswith(f"{path}:{position}: ")
    assert fragment in message
    assert "; " in message  # problem; fix


def test_ws_is_allowed_to_loopback_hosts_only(tmp_path: Path) -> None:
    for host in ("localhost:8080", "127.0.0.1", "127.9.9.9:1", "[::1]:80"):
        config = load_config(write(tmp_path, f"tunnelHost: ws://{host}/x\n"), env={})
        assert config.tunnel_host == f"ws://{host}/x"
    for host in ("localhost.evil.example", "10.0.0.1", "[::2]"):
        assert "would send the agent's token in clear text" in config_error(
            write(tmp_path, f"tunnelHost: ws://{host}/x\n")
        )
    # Looks like loopback, goes to evil.example: refused (for its userinfo, before the host is even checked).
    assert "user:password@ in the URL is not supported" in config_error(
        write(tmp_path, "tunnelHost: ws://127.0.0.1@evil.example/x\n")
    )


def test_proxy_errors_never_show_the_password(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "proxy: https://user:s3cret@proxy.example:3128\n"))
    assert "TLS to the proxy itself is not supported" in message
    assert "s3cret" not in message


def test_duplicate_key_names_both_lines_but_not_the_values(tmp_path: Path) -> None:
    path = write(tmp_path, "proxy: http://u:first-secret@p:1\norgId: a\nproxy: http://u:second-secret@p:1\n")
    message = config_error(path)
    assert message == f"{path}:3:1: duplicate key (first given on line 1); keep one of the two"


def test_two_spellings_with_different_values_are_an_error(tmp_path: Path) -> None:
    path = write(tmp_path, "environment: prod\nenvironmentId: staging\n")
    assert config_error(path) == (
        f"{path}:2:16: environmentId and {path}:1:14 both set environmentId, to different values; keep one of them"
    )


def test_two_spellings_with_the_same_value_are_accepted(tmp_path: Path) -> None:
    config = load_config(write(tmp_path, "environment: prod\nenvironmentId: prod\nORGID: a\norgId: a\n"), env={})
    assert (config.environment_id, config.org_id) == ("prod", "a")


def test_top_level_must_be_a_mapping(tmp_path: Path) -> None:
    path = write(tmp_path, "# comment\n\n- orgId: a\n")
    assert config_error(path).startswith(f"{path}:3:1: the file must be a mapping of 'key: value' lines, not a list")
    path = write(tmp_path, "just text\n")
    assert config_error(path).startswith(f"{path}:1:1: the file must be a mapping")


def test_merge_keys_are_refused(tmp_path: Path) -> None:
    message = config_error(write(tmp_path, "base: &b {orgId: a}\n<<: *b\n"))
    assert "merge keys (<<) are not supported" in message


def test_self_referencing_alias_is_an_error_not_a_hang(tmp_path: Path) -> None:
    assert "labels: item 1" in config_error(write(tmp_path, "labels: &a [*a]\n"))


def test_not_utf8_and_too_large(tmp_path: Path) -> None:
    path = tmp_path / "latin1.yaml"
    path.write_bytes(b"hostname: caf\xe9\n")
    assert config_error(path) == f"{path}: not UTF-8 (byte 13); save the file as UTF-8"
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (loader_module.MAX_CONFIG_BYTES + 1))
    assert "larger than 1 MiB" in config_error(big)


def test_explicit_missing_file_names_it_and_suggests_register(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    message = config_error(path)
    assert message.startswith(f"{path}: no such file; create it with 'p0-ssh-agent register'")


def test_missing_ok_treats_a_missing_file_as_empty(tmp_path: Path) -> None:
    config = load_config(tmp_path / "nope.yaml", env={}, missing_ok=True)
    assert config == AgentConfig()


# --- what loads ------------------------------------------------------------------------------------------------


def test_complete_file(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        COMPLETE
        + "environmentId: prod\nheartbeatIntervalSeconds: 0x3c\ndryRun: true\nlabels: [env=prod, 'team=a b']\n"
        + "tunnelTimeoutMs: 5000\nstateDir: /var/lib/p0\ntunnelCaFile: /etc/ca.pem\nproxy: proxy.example:3128\n"
        + "userRevokeMode: delete\nadoptUsers:\n  - deploy\nhostname: web-1\nlogPath: /var/log/old.log\n",
    )
    config = load_config(path, env={})
    assert config == AgentConfig(
        version="1.0",
        org_id="acme",
        host_id="host-1",
        hostname="web-1",
        tunnel_host="wss://tunnel.example.com/ws",
        key_path=Path("/etc/p0-ssh-agent/keys"),
        labels=("env=prod", "team=a b"),
        environment_id="prod",
        heartbeat_interval_seconds=60,
        dry_run=True,
        tunnel_timeout_ms=5000,
        state_dir=Path("/var/lib/p0"),
        tunnel_ca_file=Path("/etc/ca.pem"),
        proxy="proxy.example:3128",
        user_revoke_mode="delete",
        adopt_users=("deploy",),
        source=path,
    )
    assert config.client_id == "acme:host-1:ssh"
    require_connection_settings(config)


def test_keys_match_case_insensitively_and_old_spellings_work(tmp_path: Path) -> None:
    text = "ORGID: acme\nhostid: h\nTunnelHost: wss://t.example\nenvironment: prod\njwkPath: /keys\n"
    config = load_config(write(tmp_path, text + "LOGPATH: /x\nkeygenPath: /y\n"), env={})
    assert (config.org_id, config.host_id, config.tunnel_host) == ("acme", "h", "wss://t.example")
    assert (config.environment_id, config.key_path) == ("prod", Path("/keys"))
    assert load_config(write(tmp_path, "tenantId: old-org\n"), env={}).org_id == "old-org"


def test_unquoted_version_number_is_accepted(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "version: 1.0\n"), env={}).version == "1.0"


def test_empty_file_and_null_values_keep_the_defaults(tmp_path: Path) -> None:
    assert load_config(write(tmp_path, "# only a comment\n"), env={}) == AgentConfig(source=tmp_path / "config.yaml")
    config = load_config(write(tmp_path, "labels:\nproxy: ~\n"), env={})
    assert (config.labels, config.proxy) == ((), None)


def test_default_path_is_used_only_if_it_exists(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert str(DEFAULT_CONFIG_PATH) == "/etc/p0-ssh-agent/config.yaml"
    missing = tmp_path / "etc" / "config.yaml"
    monkeypatch.setattr(model_module, "DEFAULT_CONFIG_PATH", missing)
    assert load_config(None, env={}) == AgentConfig()
    present = write(tmp_path, COMPLETE)
    monkeypatch.setattr(model_module, "DEFAULT_CONFIG_PATH", present)
    assert load_config(None, env={}).org_id == "acme"
    assert load_config(None, env={}).source == present


def test_parse_config_text_reports_value_positions() -> None:
    values = parse_config_text("# c\norgId:   acme\nlabels:\n  - a=b\n", source="mem")
    assert values == {"orgId": ("acme", "mem:2:10"), "labels": (("a=b",), "mem:4:3")}


# --- precedence: flags > environment > file > defaults -------------------------------------------------------


def test_precedence_flags_over_env_over_file_over_defaults(tmp_path: Path) -> None:
    path = write(tmp_path, COMPLETE + "environmentId: from-file\nheartbeatIntervalSeconds: 10\ndryRun: false\n")
    env = {"P0_SSH_AGENT_ENVIRONMENTID": "from-env", "P0_SSH_AGENT_HEARTBEATINTERVALSECONDS": "20"}
    overrides = {"environmentId": "from-flag", "dryRun": None, "orgId": None}
    config = load_config(path, env=env, overrides=overrides)
    assert config.environment_id == "from-flag"  # flag beats env and file
    assert config.heartbeat_interval_seconds == 20  # env beats file
    assert config.org_id == "acme"  # file (flag given as None = not given)
    assert config.dry_run is False  # file
    assert config.user_revoke_mode == "lock"  # default
    without_flags = load_config(path, env=env)
    assert without_flags.environment_id == "from-env"
    assert load_config(path, env={}).environment_id == "from-file"


def test_env_accepts_both_naming_styles_and_text_values(tmp_path: Path) -> None:
    env = {
        "P0_SSH_AGENT_ORGID": "viper-style",
        "P0_SSH_AGENT_HOST_ID": "snake-style",
        "P0_SSH_AGENT_DRY_RUN": "Yes",
        "P0_SSH_AGENT_HEARTBEAT_INTERVAL_SECONDS": " 15 ",
        "P0_SSH_AGENT_LABELS": "env=prod, team=x,",
        "P0_SSH_AGENT_ADOPTUSERS": "deploy,ops",
        "P0_SSH_AGENT_TEST_HOOKS": "anything",  # read by the supervisor, not configuration
        "P0_SSH_AGENT_JOURNAL_SOCKET": "/run/elsewhere.sock",  # read by the audit trail, not configuration
        "P0_SSH_AGENT_PROXY": "",  # empty counts as unset, as viper did
        "UNRELATED": "x",
    }
    config = load_config(tmp_path / "missing.yaml", env=env, missing_ok=True)
    assert (config.org_id, config.host_id) == ("viper-style", "snake-style")
    assert (config.dry_run, config.heartbeat_interval_seconds) == (True, 15)
    assert (config.labels, config.adopt_users, config.proxy) == (("env=prod", "team=x"), ("deploy", "ops"), None)
    for text, expected in (("0", False), ("no", False), ("TRUE", True), ("1", True), ("false", False)):
        assert load_config(None, env={"P0_SSH_AGENT_DRYRUN": text}).dry_run is expected


def test_unknown_env_variable_is_named_with_a_suggestion(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "x.yaml", env={"P0_SSH_AGENT_ORGIDD": "x"}, missing_ok=True)
    assert str(info.value) == "environment variable P0_SSH_AGENT_ORGIDD: not a configuration key; did you mean " + (
        "'P0_SSH_AGENT_ORGID'?"
    )
    assert info.value.exit_code == 78


def test_bad_env_values_name_the_variable(tmp_path: Path) -> None:
    cases = {
        "P0_SSH_AGENT_HEARTBEATINTERVALSECONDS": ("0x3c", "expected a whole number of seconds, got '0x3c'"),
        "P0_SSH_AGENT_DRYRUN": ("maybe", "expected true or false, got 'maybe'"),
        "P0_SSH_AGENT_TUNNELHOST": ("ws://evil.example", "would send the agent's token in clear text"),
        "P0_SSH_AGENT_LABELS": ("env=prod,oops", "item 2, 'oops', is not key=value"),
    }
    for variable, (value, fragment) in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "x.yaml", env={variable: value}, missing_ok=True)
        assert str(info.value).startswith(f"environment variable {variable}: ")
        assert fragment in str(info.value)


def test_env_spellings_of_one_key_must_agree(tmp_path: Path) -> None:
    env = {"P0_SSH_AGENT_ENVIRONMENT": "a", "P0_SSH_AGENT_ENVIRONMENTID": "b"}
    with pytest.raises(ConfigError, match="both set environmentId, to different values"):
        load_config(tmp_path / "x.yaml", env=env, missing_ok=True)


def test_bad_flag_values_name_the_flag(tmp_path: Path) -> None:
    cases: dict[str, tuple[object, str]] = {
        "tunnelTimeoutMs": (0, "command-line flag --tunnel-timeout: must be greater than 0"),
        "orgId": ("a b", "command-line flag --org-id: 'a b' contains ':' or whitespace"),
        "keyPath": ("relative", "command-line flag --key-path: 'relative' is not an absolute path"),
        "labels": (["x"], "command-line flag --label/--labels: item 1, 'x', is not key=value"),
        "environmentId": ("bad\nvalue", "command-line flag --environment: control characters"),
    }
    for name, (value, prefix) in cases.items():
        with pytest.raises(ConfigError) as info:
            load_config(tmp_path / "x.yaml", env={}, overrides={name: value}, missing_ok=True)
        assert str(info.value).startswith(prefix)


def test_an_unknown_override_is_a_programming_error(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'org_id' is not a configuration key"):
        load_config(tmp_path / "x.yaml", env={}, overrides={"org_id": "x"}, missing_ok=True)


# --- require_connection_settings and client_id ---------------------------------------------------------------


def test_require_connection_settings_checks_configs_built_in_code() -> None:
    good = AgentConfig(org_id="acme", host_id="h", source=Path("/etc/x.yaml"))
    require_connection_settings(good)
    with pytest.raises(ConfigError, match=r"^/etc/x\.yaml: hostId is not set; run 'p0-ssh-agent register'"):
        require_connection_settings(dataclasses.replace(good, host_id=None))
    with pytest.raises(ConfigError, match=r"^no configuration file: tunnelHost: ws:// to evil\.example"):
        require_connection_settings(dataclasses.replace(good, tunnel_host="ws://evil.example", source=None))
    with pytest.raises(ConfigError, match="orgId: 'a:b' contains ':'"):
        require_connection_settings(dataclasses.replace(good, org_id="a:b"))
    with pytest.raises(ConfigError, match="keyPath: 'rel' is not an absolute path"):
        require_connection_settings(dataclasses.replace(good, key_path=Path("rel")))


def test_client_id_needs_both_ids() -> None:
    assert AgentConfig(org_id="o", host_id="h").client_id == "o:h:ssh"
    with pytest.raises(ConfigError) as info:
        _ = AgentConfig(org_id="o").client_id
    assert info.value.exit_code == 78
    assert "run 'p0-ssh-agent register'" in str(info.value)
