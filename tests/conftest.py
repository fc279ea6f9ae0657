"""Suite-wide pytest setup: the sandbox fixtures (tests/sandbox/fixtures.py) for every test module, and isolation
of the one sandbox every test shares."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest_plugins = ("sandbox.fixtures",)

SUDOERS_D = Path("/etc/sudoers.d")
LEGACY_SUDOERS = Path("/etc/sudoers-p0")


@pytest.fixture(autouse=True)
def _no_audit_into_the_machines_journal(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every grant is audited to journald; tests must not write into the journal of the machine they run on.
    In-process code gets its AuditTrail handed in (tests build theirs, aimed at their own socket), but an agent a
    test starts as a child process builds its trail from the environment it inherits: an empty path turns
    journald off there (AuditTrail.from_config, host/audit_trail.py)."""
    monkeypatch.setenv("P0_SSH_AGENT_JOURNAL_SOCKET", "")


@pytest.fixture(autouse=True)
def _sudoers_left_as_found(request: pytest.FixtureRequest) -> Iterator[None]:
    """Sandbox tests share one /etc: sudoers files a test adds are removed after it, so the next test starts
    from the sandbox's own sudo setup (a drop-in left behind would make another test's "before" wrong)."""
    if request.node.get_closest_marker("sandbox") is None or not os.environ.get("P0_TEST_SANDBOX"):
        yield
        return
    before = set(SUDOERS_D.iterdir())
    legacy_existed = LEGACY_SUDOERS.exists()
    yield
    for path in set(SUDOERS_D.iterdir()) - before:
        path.unlink(missing_ok=True)
    if not legacy_existed:
        LEGACY_SUDOERS.unlink(missing_ok=True)
