"""Agent access in systemd mode under a booted systemd: tests/system/access-worker.sh boots the Debian 12 rootfs
(tests/system/rootfs.sh, cached in build/rootfs as the package test caches it) with systemd-nspawn and runs
tests/system/access_worker_probe.py inside, which drives confine.run_worker with mode="systemd" against the
container's systemd: transient units as the account, ProtectSystem=strict with ReadWritePaths=<prefix>, a private
/tmp, no new privileges through a NOPASSWD sudo grant, the output cap, a fork bomb bounded and ended, a setsid
child killed at the timeout, nothing of the account and no unit left afterwards.

Needs root, debootstrap and systemd-nspawn (packaging/install-build-deps.sh), and the Debian mirror for the first
build of the rootfs (about a minute); then about ten seconds."""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ROOTFS = ROOT / "build" / "rootfs"


@pytest.mark.system
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, debootstrap, systemd-nspawn")
def test_run_worker_in_systemd_mode_under_booted_systemd() -> None:
    built = subprocess.run(
        ["/bin/bash", str(ROOT / "tests" / "system" / "rootfs.sh"), str(ROOTFS), "bookworm"],
        capture_output=True, text=True, timeout=900, check=False,
    )  # fmt: skip
    assert built.returncode == 0, built.stdout + built.stderr
    result = subprocess.run(
        ["/bin/bash", str(ROOT / "tests" / "system" / "access-worker.sh"), str(ROOTFS)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=600, check=False,
    )  # fmt: skip
    print(result.stdout)
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert summary, f"access-worker.sh ended without its summary line (exit {result.returncode})"
    passed, failed = map(int, summary[-1])
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert (failed, result.returncode) == (0, 0), "\n".join(failures)
    skipped = re.findall(r"^SKIP: (.*)$", result.stdout, re.MULTILINE)
    if skipped:
        pytest.skip(skipped[-1])
    assert passed > 0
