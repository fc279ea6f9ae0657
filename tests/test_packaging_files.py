"""The packaging sources, checked without building: the unit's directives and sandbox, the example
configuration against the real loader, the /etc/default template, the man page and nfpm.yaml's contents.

The packages themselves, installed and running under a booted systemd, are tests/system/run.sh's job.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from p0_ssh_agent._version import __version__
from p0_ssh_agent.cli import SUBCOMMANDS
from p0_ssh_agent.config.loader import load_config
from p0_ssh_agent.core.sshd_key_store import PACKAGED_DROPIN_PATH, sshd_dropin_text
from p0_ssh_agent.runtime import limits

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "p0-ssh-agent.service"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
GROFF = shutil.which("groff")


def unit_settings(section: str) -> list[tuple[str, str]]:
    """(key, value) pairs of one section of the unit, in order; repeated keys stay repeated."""
    pairs: list[tuple[str, str]] = []
    current = ""
    for line in UNIT.read_text().splitlines():
        if line.startswith("["):
            current = line.strip("[]")
        elif line and not line.startswith("#") and current == section:
            key, _, value = line.partition("=")
            pairs.append((key, value))
    return pairs


def single(section: str, key: str) -> str:
    values = [value for k, value in unit_settings(section) if k == key]
    assert len(values) == 1, f"{key}= appears {len(values)} times in [{section}]"
    return values[0]


def test_unit_has_comments_only_on_their_own_lines() -> None:
    for number, line in enumerate(UNIT.read_text().splitlines(), 1):
        if line.startswith("#") or not line.strip():
            continue
        assert re.fullmatch(r"\[[A-Za-z]+\]|[A-Za-z]+=.*", line), f"line {number} is not KEY=value: {line!r}"
        assert not re.search(r"\s[#;]", line), f"line {number} has a trailing comment, which systemd keeps as value"


@pytest.mark.parametrize(
    ("section", "key", "value"),
    [
        ("Unit", "ConditionPathExists", "/etc/p0-ssh-agent/config.yaml"),
        ("Unit", "StartLimitIntervalSec", "300"),
        ("Unit", "StartLimitBurst", "10"),
        ("Service", "Type", "notify"),
        ("Service", "NotifyAccess", "main"),
        ("Service", "ExecStart", "/usr/bin/p0-ssh-agent start"),
        ("Service", "ExecReload", "/bin/kill -HUP $MAINPID"),
        ("Service", "EnvironmentFile", "-/etc/default/p0-ssh-agent"),
        ("Service", "Environment", "PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1"),
        ("Service", "Restart", "on-failure"),
        ("Service", "RestartSec", "5s"),
        ("Service", "RestartPreventExitStatus", "78"),
        ("Service", "WatchdogSec", "30s"),
        ("Service", "TimeoutStopSec", "30s"),
        ("Service", "KillMode", "mixed"),
        ("Service", "StateDirectory", "p0-ssh-agent"),
        ("Service", "StateDirectoryMode", "0711"),  # sshd traverses it to the key store; nothing in it is readable
        ("Service", "RuntimeDirectory", "p0-ssh-agent"),
        ("Service", "RuntimeDirectoryMode", "0755"),  # node_exporter reaches the metrics file; files stay 0600/0640
        ("Service", "ProtectSystem", "strict"),
        ("Service", "ProtectHome", "no"),
        ("Service", "NoNewPrivileges", "yes"),
        ("Service", "SystemCallFilter", "@system-service"),
        ("Install", "WantedBy", "multi-user.target"),
    ],
)
def test_unit_lifecycle_and_sandbox_settings(section: str, key: str, value: str) -> None:
    assert single(section, key) == value


def test_unit_capabilities_are_exactly_what_account_management_needs() -> None:
    assert set(single("Service", "CapabilityBoundingSet").split()) == {
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_AUDIT_WRITE",
        "CAP_SETUID",  # with CAP_SETGID: kill(-1) sent as the user ends a fork chain (host.uidkill)
        "CAP_SETGID",
    }


def paths_of(key: str) -> list[str]:
    return [path.lstrip("-") for k, value in unit_settings("Service") if k == key for path in value.split()]


def covers(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


@pytest.mark.parametrize(
    "path",
    ["/etc/passwd", "/etc/shadow", "/etc/group", "/etc/sudoers.d/p0-ssh-agent", "/etc/sudoers-p0", "/home/alice/.ssh"],
)
def test_what_the_agent_writes_stays_writable(path: str) -> None:
    assert any(covers(path, rw) for rw in paths_of("ReadWritePaths")), f"{path} is not under ReadWritePaths="
    for key in ("ReadOnlyPaths", "InaccessiblePaths"):
        blocked = [p for p in paths_of(key) if covers(path, p)]
        assert not blocked, f"{path} is made read-only or inaccessible by {key}={blocked}"


@pytest.mark.parametrize("path", ["/etc/ssh/sshd_config", "/etc/pam.d/sshd", "/etc/sudoers", "/etc/p0-ssh-agent"])
def test_what_the_agent_must_not_edit_is_read_only(path: str) -> None:
    assert any(covers(path, ro) for ro in paths_of("ReadOnlyPaths"))


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_unit_security_exposure_is_at_most_3() -> None:
    assert SYSTEMD_ANALYZE is not None
    result = subprocess.run(
        [SYSTEMD_ANALYZE, "security", "--offline=yes", "--no-pager", str(UNIT)],
        capture_output=True,
        text=True,
        check=False,
    )
    match = re.search(r"Overall exposure level for p0-ssh-agent\.service: ([0-9.]+)", result.stdout)
    assert match, result.stdout[-500:] + result.stderr
    print(match.group(0))
    assert float(match.group(1)) <= 3.0


def test_example_config_loads_as_shipped_and_with_every_key_uncommented(tmp_path: Path) -> None:
    example = ROOT / "packaging" / "config.example.yaml"
    shipped = load_config(example, env={})
    assert (shipped.org_id, shipped.tunnel_host, shipped.dry_run) == ("my-org", "wss://api.p0.app", False)

    # Every "#key: value" and "#  - item" line is a real setting once uncommented; the prose comments
    # ("# Identity: ...") have a space after the '#', so they stay comments.
    uncommented = re.sub(r"^#(?=[A-Za-z]|  - )", "", example.read_text(), flags=re.MULTILINE)
    assert uncommented != example.read_text()
    path = tmp_path / "config.yaml"
    path.write_text(uncommented)
    everything = load_config(path, env={})
    assert everything.labels == ("env=production", "team=payments")
    assert everything.adopt_users == ("deploy",)
    assert everything.proxy == "http://proxy.example.com:3128"
    assert str(everything.state_dir) == "/var/lib/p0-ssh-agent"


def test_default_file_holds_only_comments_and_plain_assignments() -> None:
    for line in (ROOT / "systemd" / "default").read_text().splitlines():
        setting = line.removeprefix("#")
        if line.startswith("#") and not re.fullmatch(r"[A-Z_]+=.*", setting):
            continue
        assert re.fullmatch(r"[A-Z_][A-Z0-9_]*=\S*", setting), f"not a VAR=value line for EnvironmentFile=: {line!r}"
    assert "#HTTPS_PROXY=" in (ROOT / "systemd" / "default").read_text()


@pytest.mark.skipif(GROFF is None, reason="groff is not installed")
def test_man_page_renders_without_warnings() -> None:
    assert GROFF is not None
    result = subprocess.run(
        [GROFF, "-man", "-Tutf8", "-ww", "-z", str(ROOT / "packaging" / "p0-ssh-agent.8")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (result.returncode, result.stderr) == (0, "")


def test_man_page_lists_every_subcommand() -> None:
    text = (ROOT / "packaging" / "p0-ssh-agent.8").read_text()
    section = text.split(".SH SUBCOMMANDS", 1)[1].split("\n.SH ", 1)[0]
    # Each subcommand is a bold term of the list: ".B start", or one of ".BR version \", \" help".
    terms = {
        word for line in section.splitlines() if line.startswith(".B") for word in re.findall(r"[a-z][a-z-]+", line)
    }
    missing = [name for name in SUBCOMMANDS if name.replace("_", "-") not in terms]
    assert not missing, f"not in the man page's SUBCOMMANDS section: {missing}"


def test_nfpm_contents_point_at_files_that_exist_or_that_the_build_makes() -> None:
    nfpm = YAML(typ="safe").load((ROOT / "nfpm.yaml").read_text())
    assert nfpm["version"] == "${P0_VERSION}", "the version comes from _version.py, through packaging/build.sh"
    assert nfpm["arch"] == "${P0_ARCH}", "one package per architecture: packaging/build.sh sets P0_ARCH"
    built_by_build_sh = {
        "build/stage/usr/lib/p0-ssh-agent",
        "build/stage/usr/bin/p0-ssh-agent",
        "build/stage/usr/share/doc/p0-ssh-agent/sbom.cdx.json",
        "build/stage/usr/share/doc/p0-ssh-agent",
        "build/p0-ssh-agent.8.gz",
    }
    assert nfpm["changelog"] == "build/changelog.yml", "packaging/changelog.py writes it from CHANGELOG.md"
    for entry in nfpm["contents"]:
        source = entry.get("src")
        if source is None or entry.get("type") == "symlink":
            continue
        if "*" in source:  # nfpm globs: the pattern must match files (the starter policies)
            assert [path for path in ROOT.glob(source) if path.is_file()], source
            continue
        assert source in built_by_build_sh or (ROOT / source).is_file(), source
    scripts = [*nfpm["overrides"]["deb"]["scripts"].values(), *nfpm["overrides"]["rpm"]["scripts"].values()]
    for script in scripts:
        assert (ROOT / script).stat().st_mode & 0o111, f"{script} is not executable"


def test_nfpm_depends_on_no_python_and_the_unit_is_in_usr_lib() -> None:
    nfpm = YAML(typ="safe").load((ROOT / "nfpm.yaml").read_text())
    for packager in ("deb", "rpm"):
        depends = nfpm["overrides"][packager]["depends"]
        assert not [d for d in depends if "python" in d], depends
    units = [e["dst"] for e in nfpm["contents"] if e.get("src") == "systemd/p0-ssh-agent.service"]
    assert units == ["/usr/lib/systemd/system/p0-ssh-agent.service"]


def test_every_doc_is_shipped() -> None:
    nfpm = YAML(typ="safe").load((ROOT / "nfpm.yaml").read_text())
    shipped = {e["src"] for e in nfpm["contents"] if e.get("type") == "doc"}
    docs = [*sorted((ROOT / "docs").glob("*.md")), *sorted((ROOT / "docs/policies").rglob("*.cedar"))]
    missing = [str(p.relative_to(ROOT)) for p in docs if str(p.relative_to(ROOT)) not in shipped]
    assert not missing, f"not in nfpm.yaml's contents (the man page points to /usr/share/doc): {missing}"


def test_package_changelog_has_an_entry_for_this_version(tmp_path: Path) -> None:
    result = subprocess.run(
        ["/usr/bin/python3", str(ROOT / "packaging/changelog.py"), str(ROOT / "CHANGELOG.md"), __version__],
        capture_output=True,
        text=True,
        check=True,
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )
    entries = YAML(typ="safe").load(result.stdout)
    assert entries[0]["semver"] == f"{__version__}-1", "Debian and rpm changelogs name the package version"
    assert entries[0]["changes"], "the entry has no change lines"
    assert all(len(change["note"]) <= 72 for entry in entries for change in entry["changes"])


def test_version_is_plain_semver_so_deb_and_rpm_order_it_like_pep_440() -> None:
    assert re.fullmatch(r"\d+\.\d+\.\d+", __version__)


def test_unit_resource_ceilings_cover_the_agents_own_worst_case() -> None:
    """MemoryMax=, TasksMax= and LimitNOFILE= are sized from runtime/limits.py (issue 11 item 7): each leaves a margin
    over the worst case, so they stop a bug, never the agent doing what its bounds allow."""
    memory_max = single("Service", "MemoryMax")
    assert memory_max.endswith("M")
    idle = 57 * limits.MIB  # the daemon's measured idle RSS (tests/test_backend_flood.py records it)
    assert int(memory_max[:-1]) * limits.MIB >= 1.25 * (idle + limits.WORST_CASE_BYTES)
    assert int(single("Service", "TasksMax")) >= 1.5 * limits.MAX_TASKS
    assert int(single("Service", "LimitNOFILE")) >= 2 * limits.MAX_FDS


def test_the_packaged_sshd_drop_in_is_what_key_store_store_renders() -> None:
    assert (ROOT / "packaging" / "sshd-key-store.conf").read_text() == sshd_dropin_text()
    nfpm = YAML(typ="safe").load((ROOT / "nfpm.yaml").read_text())
    shipped = {entry.get("src"): entry.get("dst") for entry in nfpm["contents"]}
    assert shipped["packaging/sshd-key-store.conf"] == PACKAGED_DROPIN_PATH
