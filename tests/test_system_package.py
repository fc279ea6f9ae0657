"""`make system-test` from pytest: builds the packages (or reuses current ones), publishes them in signed apt and
dnf repositories, boots Debian 12 and Debian 13 with systemd-nspawn and runs tests/system/run.sh's checks inside
each. Its output is printed (pytest shows it on failure, or always with -s / -rP); success means every check
passed and the script says so. A suite the package cannot apply to yet ends with "SKIP: <reason>", reported here
as a skip with that reason.

Needs root, debootstrap, systemd-nspawn, rpm, apt-utils, createrepo-c, gnupg and dnf
(packaging/install-build-deps.sh, which `make test` runs), and the package registries for the first build of the
rootfs and the packages. With cached packages and rootfs each suite takes two to three minutes; without, the
bookworm run also builds the packages three times (this tree, the same tree as the next version, the 0.1.0
release from git history) and debootstraps, about ten minutes on a busy two-core machine.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
RUN = ROOT / "tests" / "system" / "run.sh"


@pytest.mark.system
@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: namespaces, debootstrap, systemd-nspawn")
@pytest.mark.parametrize("suite", ["bookworm", "trixie"])
def test_packages_install_from_the_repository_and_run_under_booted_systemd(suite: str) -> None:
    result = subprocess.run(
        ["/bin/bash", str(RUN), suite],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        check=False,
        timeout=1500,
    )
    print(result.stdout)
    summary = re.findall(r"^(\d+) passed, (\d+) failed$", result.stdout, re.MULTILINE)
    assert summary, f"run.sh ended without its summary line (exit {result.returncode})"
    passed, failed = map(int, summary[-1])
    failures = [line for line in result.stdout.splitlines() if line.startswith("FAIL ")]
    assert (failed, result.returncode) == (0, 0), "\n".join(failures)
    assert passed > 0
    skipped = re.findall(r"^SKIP: (.*)$", result.stdout, re.MULTILINE)
    if skipped:
        pytest.skip(skipped[-1])
