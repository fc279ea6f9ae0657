"""doctor's key-store findings (diagnostics/key_store_checks.py, issue 14 item 6), on the sandbox's /etc/ssh.

The mismatches a half-finished switch leaves are named with the command that finishes it: store mode without the
drop-in fails (sshd reads the users' own files), home mode with the drop-in or store files left warns, a store
directory sshd cannot pass through as the user warns.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.sshd_key_store import SSHD_DROPIN_PATH, sshd_dropin_text
from p0_ssh_agent.diagnostics.key_store_checks import check_key_store, check_key_store_mode
from sandbox.fixtures import Sandbox

pytestmark = pytest.mark.sandbox


@pytest.fixture
def state(sandbox: Sandbox, tmp_path: Path) -> Iterator[Path]:
    state = tmp_path / "state"
    state.mkdir(mode=0o711)
    state.chmod(0o711)
    yield state
    Path(SSHD_DROPIN_PATH).unlink(missing_ok=True)


def levels(config: AgentConfig, state: Path) -> list[tuple[str, str]]:
    return [(finding.level, finding.detail) for finding in check_key_store(config, state)]


def test_home_mode_on_a_clean_host_is_ok_and_status_says_the_user_can_edit_the_file(state: Path) -> None:
    config = AgentConfig(state_dir=state)
    assert [level for level, _ in levels(config, state)] == ["ok"]
    assert "which its user can edit" in check_key_store_mode(config).detail


def test_store_mode_without_the_drop_in_fails_and_says_how_to_finish(state: Path) -> None:
    config = AgentConfig(state_dir=state, key_store="store")
    found = check_key_store(config, state)
    assert [finding.level for finding in found] == ["fail"]
    assert "is missing: sshd reads the users' files" in found[0].detail and "key-store store" in found[0].fix


def test_store_mode_with_the_drop_in_and_a_tight_store_directory(state: Path) -> None:
    Path(SSHD_DROPIN_PATH).parent.mkdir(mode=0o755, parents=True, exist_ok=True)
    Path(SSHD_DROPIN_PATH).write_text(sshd_dropin_text(str(state / "keys")))
    (state / "keys").mkdir(mode=0o700)
    config = AgentConfig(state_dir=state, key_store="store")
    found = levels(config, state)
    assert [level for level, _ in found] == ["warn"]
    assert "needs to traverse it" in found[0][1]
    (state / "keys").chmod(0o711)
    assert [level for level, _ in levels(config, state)] == ["ok"]


def test_home_mode_with_store_files_left_warns(state: Path) -> None:
    (state / "keys").mkdir(mode=0o711)
    (state / "keys" / "alice").write_text("# RequestID: r1\nssh-ed25519 AAAA x\n")
    found = check_key_store(AgentConfig(state_dir=state), state)
    assert [finding.level for finding in found] == ["warn"]
    assert "1 store file(s) left" in found[0].detail and "key-store home" in found[0].fix
