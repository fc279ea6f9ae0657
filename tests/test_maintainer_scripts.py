"""The .deb and .rpm maintainer scripts, run for real on every argument branch.

Each script runs in a private mount namespace: /run is a fresh tmpfs (with /run/systemd/system when the test
wants "systemd is running"), /etc and /var/lib are overlays whose writes land in a tmpfs, so a purge can delete
the agent's directories without touching the host's. systemctl, deb-systemd-invoke and deb-systemd-helper are
small hand-written fakes that record their arguments; PATH holds nothing else but `rm` and `grep`. /opt is an
overlay too, for the removal of a 0.1.0 venv's leftovers. The ledger is written by the agent's own to_json, so the
scripts' reading of it breaks here if its format changes. The booted-systemd test (tests/system/run.sh) runs the
deb scripts against the real tools; rpm's numeric branches are only tested here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

from p0_ssh_agent.host.ledger import Ledger, save_ledger, to_json

ROOT = Path(__file__).resolve().parent.parent
UNIT = "p0-ssh-agent.service"
STATE_PATHS = ("/etc/p0-ssh-agent", "/var/lib/p0-ssh-agent")
UNSHARE = shutil.which("unshare")

pytestmark = [
    pytest.mark.sandbox,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root for a private mount namespace"),
    pytest.mark.skipif(UNSHARE is None, reason="unshare (util-linux) is not installed"),
]

# Runs inside `unshare --mount`: sets the stage, runs the script, then reports which state paths survived.
DRIVER = r"""
set -e
mount -t tmpfs tmpfs /run
if [ "$SYSTEMD_RUNNING" = 1 ]; then mkdir -p /run/systemd/system; fi
mount -t tmpfs tmpfs "$SCRATCH"
mkdir "$SCRATCH/etc.up" "$SCRATCH/etc.work" "$SCRATCH/lib.up" "$SCRATCH/lib.work" "$SCRATCH/opt.up" "$SCRATCH/opt.work"
mount -t overlay overlay -o "lowerdir=/etc,upperdir=$SCRATCH/etc.up,workdir=$SCRATCH/etc.work" /etc
mount -t overlay overlay -o "lowerdir=/var/lib,upperdir=$SCRATCH/lib.up,workdir=$SCRATCH/lib.work" /var/lib
mkdir -p /opt
mount -t overlay overlay -o "lowerdir=/opt,upperdir=$SCRATCH/opt.up,workdir=$SCRATCH/opt.work" /opt
rm -rf /opt/p0-ssh-agent
mkdir -p /etc/p0-ssh-agent/keys /var/lib/p0-ssh-agent
echo key >/etc/p0-ssh-agent/keys/jwk.private.json
if [ -n "$RECORDS" ]; then
    cp -a "$RECORDS/ledger" /var/lib/p0-ssh-agent/  # the per-user layout, as save_ledger wrote it
else
    printf '%s' "$LEDGER" >/var/lib/p0-ssh-agent/ledger.json
fi
# OLD_OPT: "debris" = what a 0.1.0 venv could leave once dpkg removed its files; "venv" = a venv still installed.
case "$OLD_OPT" in
    debris) debris=/opt/p0-ssh-agent/venv/lib/python3.11/__pycache__
        mkdir -p "$debris" && echo x >"$debris/x.pyc" ;;
    venv) mkdir -p /opt/p0-ssh-agent/venv/bin && echo x >/opt/p0-ssh-agent/venv/bin/p0-ssh-agent ;;
esac
set +e
env -i PATH="$FAKEBIN:$TOOLBIN" "$@"
rc=$?
for path in /etc/p0-ssh-agent /var/lib/p0-ssh-agent /opt/p0-ssh-agent; do
    if [ -e "$path" ]; then echo "$path" >>"$SURVIVORS"; fi
done
exit $rc
"""

FAKE = '#!/bin/sh\nprintf "%s %s\\n" "${0##*/}" "$*" >>"$CALLS"\n'


# A ledger with what a host holds after a few grants: 2 key lines (one a CA line) and 1 sudo rule for 2 accounts.
LIVE_LEDGER = Ledger()
LIVE_LEDGER.record_user("p0alice", 60001, now="2026-01-01T00:00:00Z")
LIVE_LEDGER.record_user("p0bob", 60002, adopted=True, now="2026-01-01T00:00:00Z")
LIVE_LEDGER.record_key("p0alice", "REQ1", "key", "SHA256:aaaa", now="2026-01-01T00:00:00Z")
LIVE_LEDGER.record_key("p0bob", "REQ2", "ca", "SHA256:bbbb", now="2026-01-01T00:00:00Z")
LIVE_LEDGER.record_sudo("REQ3", "p0alice", None, now="2026-01-01T00:00:00Z")
LIVE = to_json(LIVE_LEDGER)
# After `p0-ssh-agent revoke-all`: nothing left, or (userRevokeMode lock) the locked accounts without any grant.
EMPTY = to_json(Ledger())
ACCOUNTS_ONLY = Ledger()
ACCOUNTS_ONLY.record_user("p0alice", 60001, now="2026-01-01T00:00:00Z")
LOCKED_ACCOUNTS_ONLY = to_json(ACCOUNTS_ONLY)


@dataclass(frozen=True)
class Outcome:
    returncode: int
    calls: list[str]
    survivors: tuple[str, ...]
    stderr: str = ""


def run_script(
    tmp_path: Path,
    script: str,
    *args: str,
    systemd_running: bool = True,
    debhelpers: bool = True,
    ledger: str = "ledger",
    records: Path | None = None,
    old_opt: str = "",
) -> Outcome:
    fakebin, toolbin, scratch = tmp_path / "fakebin", tmp_path / "toolbin", tmp_path / "scratch"
    for directory in (fakebin, toolbin, scratch):
        directory.mkdir()
    calls, survivors = tmp_path / "calls", tmp_path / "survivors"
    fakes = ["systemctl", *(["deb-systemd-invoke", "deb-systemd-helper"] if debhelpers else [])]
    for name in fakes:
        fake = fakebin / name
        fake.write_text(FAKE.replace("$CALLS", str(calls)))
        fake.chmod(0o755)
    for tool in ("rm", "grep"):
        found = shutil.which(tool)
        assert found is not None
        (toolbin / tool).symlink_to(found)
    assert UNSHARE is not None
    result = subprocess.run(
        [UNSHARE, "--mount", "--propagation", "private", "/bin/sh", "-c", DRIVER, "driver", str(ROOT / script), *args],
        env={
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SYSTEMD_RUNNING": "1" if systemd_running else "0",
            "SCRATCH": str(scratch),
            "FAKEBIN": str(fakebin),
            "TOOLBIN": str(toolbin),
            "SURVIVORS": str(survivors),
            "LEDGER": ledger,
            "RECORDS": "" if records is None else str(records),
            "OLD_OPT": old_opt,
        },
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert "mount:" not in result.stderr, result.stderr
    recorded = calls.read_text().splitlines() if calls.exists() else []
    kept = tuple(survivors.read_text().splitlines()) if survivors.exists() else ()
    return Outcome(result.returncode, recorded, kept, result.stderr)


RELOAD = "systemctl daemon-reload"


@pytest.mark.parametrize(
    ("args", "running", "debhelpers", "expected"),
    [
        # Fresh install: systemd learns about the unit; nothing is enabled or started.
        (("configure", ""), True, True, [RELOAD]),
        (("configure",), True, True, [RELOAD]),
        # Upgrade from 0.0.9: restart only if running.
        (("configure", "0.0.9"), True, True, [RELOAD, f"deb-systemd-invoke try-restart {UNIT}"]),
        (("configure", "0.0.9"), True, False, [RELOAD, f"systemctl try-restart {UNIT}"]),
        # A chroot or an image build: no systemd to talk to.
        (("configure", "0.0.9"), False, True, []),
        (("abort-upgrade", "0.2.0"), True, True, [RELOAD]),
        (("abort-remove",), True, True, [RELOAD]),
    ],
)
def test_deb_postinst(
    tmp_path: Path, args: tuple[str, ...], running: bool, debhelpers: bool, expected: list[str]
) -> None:
    outcome = run_script(tmp_path, "debian/postinst", *args, systemd_running=running, debhelpers=debhelpers)
    assert (outcome.returncode, outcome.calls) == (0, expected)
    assert outcome.survivors == STATE_PATHS


@pytest.mark.parametrize(
    ("args", "running", "expected"),
    [
        (("remove",), True, [f"deb-systemd-invoke stop {UNIT}", f"systemctl disable --quiet {UNIT}"]),
        # Without a running systemd, disabling still works: it only edits symlinks.
        (("remove",), False, [f"systemctl disable --quiet {UNIT}"]),
        # An upgrade keeps the agent running; the new postinst restarts it.
        (("upgrade", "0.2.0"), True, []),
        (("failed-upgrade", "0.0.9"), True, []),
        (("deconfigure", "in-favour", "x", "1"), True, []),
    ],
)
def test_deb_prerm(tmp_path: Path, args: tuple[str, ...], running: bool, expected: list[str]) -> None:
    outcome = run_script(tmp_path, "debian/prerm", *args, systemd_running=running)
    assert (outcome.returncode, outcome.calls) == (0, expected)
    assert outcome.survivors == STATE_PATHS, "prerm never deletes configuration or state"


def test_deb_postrm_remove_keeps_configuration_keys_and_state(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "remove")
    assert (outcome.returncode, outcome.calls, outcome.survivors) == (0, [RELOAD], STATE_PATHS)


def test_deb_postrm_purge_deletes_configuration_keys_and_state(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "purge")
    assert outcome.returncode == 0
    assert outcome.calls == [RELOAD, f"deb-systemd-helper purge {UNIT}", f"deb-systemd-helper unmask {UNIT}"]
    assert outcome.survivors == ()


def test_deb_postrm_purge_without_systemd_or_debhelper_still_deletes_state(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "purge", systemd_running=False, debhelpers=False)
    assert (outcome.returncode, outcome.calls, outcome.survivors) == (0, [], ())


@pytest.mark.parametrize(
    "args", [("upgrade", "0.2.0"), ("abort-install",), ("failed-upgrade", "0.0.9"), ("disappear",)]
)
def test_deb_postrm_other_branches_change_nothing(tmp_path: Path, args: tuple[str, ...]) -> None:
    outcome = run_script(tmp_path, "debian/postrm", *args)
    assert (outcome.returncode, outcome.calls, outcome.survivors) == (0, [], STATE_PATHS)


@pytest.mark.parametrize("script", ["debian/postinst", "debian/prerm", "debian/postrm"])
def test_deb_scripts_refuse_unknown_arguments(tmp_path: Path, script: str) -> None:
    outcome = run_script(tmp_path, script, "bogus")
    assert (outcome.returncode, outcome.calls, outcome.survivors) == (1, [], STATE_PATHS)


@pytest.mark.parametrize("count", ["1", "2"])
def test_rpm_post_reloads_and_never_enables_or_starts(tmp_path: Path, count: str) -> None:
    outcome = run_script(tmp_path, "packaging/rpm/postinstall.sh", count)
    assert (outcome.returncode, outcome.calls) == (0, [RELOAD])


@pytest.mark.parametrize(
    ("count", "running", "expected"),
    [
        # Erase: stop and disable.
        ("0", True, [f"systemctl disable --now --quiet {UNIT}"]),
        ("0", False, [f"systemctl disable --quiet {UNIT}"]),
        # Upgrade: the agent keeps running (the trap a %preun without a branch falls into).
        ("1", True, []),
    ],
)
def test_rpm_preun(tmp_path: Path, count: str, running: bool, expected: list[str]) -> None:
    outcome = run_script(tmp_path, "packaging/rpm/preremove.sh", count, systemd_running=running)
    assert (outcome.returncode, outcome.calls, outcome.survivors) == (0, expected, STATE_PATHS)


@pytest.mark.parametrize(
    ("count", "running", "expected"),
    [
        # Upgrade: the old package's %postun runs last, so the restart onto the new files happens here.
        ("1", True, [RELOAD, f"systemctl try-restart {UNIT}"]),
        ("1", False, []),
        # Erase: rpm has no purge; configuration, keys and state stay.
        ("0", True, [RELOAD]),
    ],
)
def test_rpm_postun(tmp_path: Path, count: str, running: bool, expected: list[str]) -> None:
    outcome = run_script(tmp_path, "packaging/rpm/postremove.sh", count, systemd_running=running)
    assert (outcome.returncode, outcome.calls, outcome.survivors) == (0, expected, STATE_PATHS)


# --- safe removal (issue 12): live grants are counted, shown, and their ledger outlives a purge ---------------------

LIVE_WARNING = "3 live grant(s) stay on this host: 2 key line(s), 1 sudo rule(s), for 2 account(s)"


@pytest.mark.parametrize("script", ["debian/prerm", "packaging/rpm/preremove.sh"])
def test_removal_names_the_live_grants_and_revoke_all(tmp_path: Path, script: str) -> None:
    outcome = run_script(tmp_path, script, "remove" if script.startswith("debian") else "0", ledger=LIVE)
    assert outcome.returncode == 0
    assert LIVE_WARNING in outcome.stderr
    assert "p0-ssh-agent revoke-all" in outcome.stderr
    assert outcome.survivors == STATE_PATHS


@pytest.mark.parametrize(
    ("script", "args", "ledger"),
    [
        # Nothing granted (or everything revoked): removal is silent.
        ("debian/prerm", ("remove",), EMPTY),
        ("packaging/rpm/preremove.sh", ("0",), EMPTY),
        ("debian/prerm", ("remove",), LOCKED_ACCOUNTS_ONLY),
        ("packaging/rpm/preremove.sh", ("0",), LOCKED_ACCOUNTS_ONLY),
        # No ledger at all (never started): silent too.
        ("debian/prerm", ("remove",), ""),
        # An upgrade keeps the grants served: no warning.
        ("debian/prerm", ("upgrade", "0.2.0"), LIVE),
        ("packaging/rpm/preremove.sh", ("1",), LIVE),
    ],
)
def test_no_warning_without_live_grants_or_on_upgrade(
    tmp_path: Path, script: str, args: tuple[str, ...], ledger: str
) -> None:
    outcome = run_script(tmp_path, script, *args, ledger=ledger)
    assert (outcome.returncode, outcome.stderr) == (0, "")


def test_deb_purge_keeps_the_ledger_while_grants_are_live(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "purge", ledger=LIVE)
    assert outcome.returncode == 0, "a refusing purge would leave dpkg half-configured"
    assert outcome.survivors == ("/var/lib/p0-ssh-agent",), "configuration and keys go, the ledger stays"
    assert "kept /var/lib/p0-ssh-agent/ledger.json: it lists 3 live grant(s)" in outcome.stderr
    assert "p0-ssh-agent revoke-all" in outcome.stderr


def records_of(tmp_path: Path, ledger: Ledger) -> Path:
    """A state directory holding `ledger` in the per-user layout (ledger/host.json, ledger/users/<name>.json),
    with the temp file a crashed commit leaves and a migration's backup of ledger.json, neither of them counted."""
    state = tmp_path / "records"
    state.mkdir(mode=0o700)
    save_ledger(ledger, state)
    (state / "ledger" / "users" / ".p0alice.json.tmp").write_text(to_json(LIVE_LEDGER))
    (state / "ledger.json.migrated-20260101T000000Z").write_text(to_json(LIVE_LEDGER))
    return state


@pytest.mark.skipif(os.geteuid() != 0, reason="the ledger's files are root-owned: needs root")
@pytest.mark.parametrize("script", ["debian/prerm", "packaging/rpm/preremove.sh"])
def test_removal_counts_the_grants_of_per_user_records(tmp_path: Path, script: str) -> None:
    records = records_of(tmp_path, LIVE_LEDGER)
    outcome = run_script(tmp_path, script, "remove" if script.startswith("debian") else "0", records=records)
    assert outcome.returncode == 0
    assert LIVE_WARNING in outcome.stderr
    assert outcome.survivors == STATE_PATHS


@pytest.mark.skipif(os.geteuid() != 0, reason="the ledger's files are root-owned: needs root")
def test_deb_purge_keeps_per_user_records_while_grants_are_live(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "purge", records=records_of(tmp_path, LIVE_LEDGER))
    assert outcome.returncode == 0
    assert outcome.survivors == ("/var/lib/p0-ssh-agent",)
    assert "kept /var/lib/p0-ssh-agent/ledger: it lists 3 live grant(s)" in outcome.stderr


@pytest.mark.skipif(os.geteuid() != 0, reason="the ledger's files are root-owned: needs root")
def test_deb_purge_deletes_per_user_records_without_grants(tmp_path: Path) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "purge", records=records_of(tmp_path, ACCOUNTS_ONLY))
    assert (outcome.returncode, outcome.survivors, outcome.stderr) == (0, (), "")


@pytest.mark.parametrize("ledger", [EMPTY, LOCKED_ACCOUNTS_ONLY])
def test_deb_purge_after_revoke_all_deletes_the_ledger(tmp_path: Path, ledger: str) -> None:
    outcome = run_script(tmp_path, "debian/postrm", "purge", ledger=ledger)
    assert (outcome.returncode, outcome.survivors, outcome.stderr) == (0, (), "")


# --- upgrade from 0.1.0 (issue 12): what the old venv left in /opt goes, a venv still in use stays ---------------


@pytest.mark.parametrize(
    ("script", "args", "old_opt", "survives"),
    [
        # Upgraded from a venv release: dpkg removed its files, run-time debris is left: removed.
        ("debian/postinst", ("configure", "0.1.0"), "debris", False),
        # The installed package still is a venv release (its entry point is there): untouched.
        ("debian/postinst", ("configure", "0.1.0"), "venv", True),
        # A fresh install never touches /opt.
        ("debian/postinst", ("configure", ""), "debris", True),
        ("packaging/rpm/posttrans.sh", ("0",), "debris", False),
        ("packaging/rpm/posttrans.sh", ("0",), "venv", True),
    ],
)
def test_old_venv_leftovers_after_upgrade(
    tmp_path: Path, script: str, args: tuple[str, ...], old_opt: str, survives: bool
) -> None:
    outcome = run_script(tmp_path, script, *args, old_opt=old_opt)
    assert outcome.returncode == 0
    assert ("/opt/p0-ssh-agent" in outcome.survivors) == survives
    assert set(STATE_PATHS) <= set(outcome.survivors), "configuration, keys and ledger always stay"
