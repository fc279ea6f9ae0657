"""The configuration writer on real files: comments, key order and quoting survive; values go in as data (a
YAML-injection attempt is one string, then refused for its line break, and the file stays byte for byte); the
result always loads; the file is replaced atomically with a safe mode and no temp file left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p0_ssh_agent.config import load_config, parse_config_text, render_config, write_config
from p0_ssh_agent.errors import ConfigError

GO_WRITTEN = """\
# P0 SSH Agent Configuration File
# Auto-generated from registration response

version: "1.0"
orgId: "old-org"  # the org from the first registration
hostId: "old-host"
tunnelHost: "wss://api.p0.app"
keyPath: "/etc/p0-ssh-agent/keys"
# the environment, as older agents spelled it
environment: "old-env"
heartbeatIntervalSeconds: 30
dryRun: false
labels:
  - "env=prod"  # first label
# a closing comment
"""

REGISTERED = {
    "version": "1.0",
    "orgId": "acme",
    "hostId": "host-7",
    "tunnelHost": "wss://tunnel.example.com",
    "environmentId": "prod",
    "keyPath": "/etc/p0-ssh-agent/keys",
}


def files_in(directory: Path) -> list[str]:
    return sorted(entry.name for entry in directory.iterdir())


def test_new_file_has_a_header_mode_0640_and_loads_back(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "p0-ssh-agent" / "config.yaml"
    write_config(path, REGISTERED, defaults={"heartbeatIntervalSeconds": 60})
    text = path.read_text()
    assert text.startswith("# p0-ssh-agent configuration, written by `p0-ssh-agent register`")
    assert 'orgId: "acme"\n' in text
    assert 'version: "1.0"\n' in text  # a string, quoted: not the number 1.0
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o750
    config = load_config(path, env={})
    assert (config.org_id, config.host_id, config.environment_id) == ("acme", "host-7", "prod")
    assert config.heartbeat_interval_seconds == 60
    assert files_in(path.parent) == ["config.yaml"]


def test_update_keeps_comments_order_and_untouched_lines(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    write_config(path, REGISTERED, defaults={"heartbeatIntervalSeconds": 60})
    assert path.read_text() == (
        "# P0 SSH Agent Configuration File\n"
        "# Auto-generated from registration response\n"
        "\n"
        'version: "1.0"\n'
        'orgId: "acme"     # the org from the first registration\n'  # ruamel keeps the comment's column
        'hostId: "host-7"\n'
        'tunnelHost: "wss://tunnel.example.com"\n'
        'keyPath: "/etc/p0-ssh-agent/keys"\n'
        "# the environment, as older agents spelled it\n"
        'environmentId: "prod"\n'  # renamed in place, comment kept
        "heartbeatIntervalSeconds: 30\n"  # present, so the default did not replace it
        "dryRun: false\n"
        "labels:\n"
        '  - "env=prod"  # first label\n'
        "# a closing comment\n"
    )


def test_list_update_keeps_the_comment_after_the_list(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    write_config(path, {"labels": ["team=a", "env=dev"]})
    assert path.read_text().endswith('labels:\n  - "team=a"\n  - "env=dev"\n# a closing comment\n')
    assert load_config(path, env={}).labels == ("team=a", "env=dev")
    path.write_text('labels:\n  - "a=1"\n  - "b=2"\n\n# about the next key\ndryRun: true\n')
    write_config(path, {"labels": ["c=3"]})
    assert path.read_text() == 'labels:\n  - "c=3"\n\n# about the next key\ndryRun: true\n'


def test_differently_cased_key_is_replaced_not_duplicated(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text("ORGID: old  # mine\nhostid: h\n")
    write_config(path, {"orgId": "new"})
    assert path.read_text() == 'orgId: "new" # mine\nhostid: h\n'


def test_injection_attempt_is_refused_and_the_file_is_unchanged(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    before = path.read_bytes()
    for hostile in ('x"\nfoo: bar', "x\ntunnelHost: ws://evil.example", "x\r\n#"):
        with pytest.raises(ConfigError) as info:
            write_config(path, {"hostname": hostile})
        assert str(info.value).startswith(f"{path}: hostname: control characters and line breaks are not allowed")
        assert "(nothing was written)" in str(info.value)
        assert path.read_bytes() == before
    assert files_in(tmp_path) == ["config.yaml"]


def test_yaml_special_characters_round_trip_as_data(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    hostile = "x\" # not a comment: {y: [1]} &a *a ! % @ `'\\"
    write_config(path, {"hostname": hostile, "environmentId": "'; dryRun: true"})
    config = load_config(path, env={})
    assert config.hostname == hostile
    assert config.environment_id == "'; dryRun: true"
    assert config.dry_run is False
    assert config.org_id == "old-org"


@settings(max_examples=100, deadline=None)
@given(
    hostname=st.text(
        alphabet=st.characters(blacklist_categories=("Cc", "Zl", "Zp", "Cs")), min_size=1, max_size=60
    ).filter(lambda s: s.strip() != "")
)
def test_any_single_line_text_round_trips(hostname: str) -> None:
    # render_config is the writer minus the file system: the same text write_config would put on disk.
    text = render_config(GO_WRITTEN, {"hostname": hostname})
    reloaded = render_config(text, {})  # loads (and validates) the result, like `start` would
    assert reloaded == text
    assert parse_config_text(text, source="t")["hostname"][0] == hostname
    assert parse_config_text(text, source="t")["orgId"][0] == "old-org"


def test_invalid_update_is_refused_before_writing(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    before = path.read_bytes()
    cases: list[tuple[dict[str, object], str]] = [
        ({"tunnelHost": "ws://evil.example"}, "tunnelHost: ws:// to evil.example would send"),
        ({"orgId": "a:b"}, "orgId: 'a:b' contains ':'"),
        ({"heartbeatIntervalSeconds": 0}, "heartbeatIntervalSeconds: must be greater than 0"),
        ({"heartbeatIntervalSeconds": True}, "heartbeatIntervalSeconds: expected a whole number"),
        ({"keyPath": "relative/keys"}, "keyPath: 'relative/keys' is not an absolute path"),
        ({"labels": ["nope"]}, "labels: item 1, 'nope', is not key=value"),
    ]
    for updates, fragment in cases:
        with pytest.raises(ConfigError) as info:
            write_config(path, updates)
        assert str(info.value).startswith(f"{path}: {fragment}")
        assert path.read_bytes() == before
    with pytest.raises(ValueError, match="'org_id' is not a configuration key"):
        write_config(path, {"org_id": "x"})
    with pytest.raises(TypeError):
        write_config(path, {"orgId": 3.5})
    assert path.read_bytes() == before
    assert files_in(tmp_path) == ["config.yaml"]


def test_broken_existing_file_is_reported_with_its_position_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text('orgId: "acme"\nheartbeatIntervalSeconds: 0\n')
    before = path.read_bytes()
    with pytest.raises(ConfigError) as info:
        write_config(path, {"hostId": "h"})
    assert str(info.value).startswith(f"{path}:2:27: heartbeatIntervalSeconds: must be greater than 0")
    assert path.read_bytes() == before


def test_symlinked_config_is_refused(tmp_path: Path) -> None:
    target = tmp_path / "real.yaml"
    target.write_text("orgId: a\n")
    link = tmp_path / "config.yaml"
    link.symlink_to(target)
    with pytest.raises(ConfigError, match="is a symbolic link"):
        write_config(link, {"orgId": "b"})
    assert link.is_symlink()
    assert target.read_text() == "orgId: a\n"


def test_mode_is_never_loosened(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    path.chmod(0o644)  # as the Go agent left it: tightened to 0640
    write_config(path, {"orgId": "a"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o600)  # an administrator's choice: kept
    write_config(path, {"orgId": "b"})
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_owner_and_group_are_kept(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("changing a file's owner needs root")
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    os.chown(path, 0, 4242)
    write_config(path, {"orgId": "a"})
    assert (path.stat().st_uid, path.stat().st_gid) == (0, 4242)


def test_the_file_is_replaced_not_rewritten_in_place(tmp_path: Path) -> None:
    path = tmp_path / "config.yaml"
    path.write_text(GO_WRITTEN)
    old_inode = path.stat().st_ino
    with path.open() as reader_of_the_old_file:
        write_config(path, {"orgId": "new"})
        assert reader_of_the_old_file.read() == GO_WRITTEN  # a reader never sees a half-written file
    assert path.stat().st_ino != old_inode
