"""A dry-run grant reads the account once (issue 16: a dry-run grant's CPU).

A dry run takes no lock, so neither picking the first lock nor confirming the judged facts under it has anything
to do: each was one more NSS lookup (about 55 us of CPU with systemd's userdb in nsswitch.conf) and, for the
confirmation, a getgrouplist and a stat of the ledger. A real run still does both (tests/test_pipeline_sandbox.py).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.pipeline import build_pipeline

KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"


def test_a_dry_run_key_grant_looks_the_account_up_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    real = accounts.lookup_user
    looked: list[str] = []

    def counting(name: str) -> UserRecord | None:
        looked.append(name)
        return real(name)

    monkeypatch.setattr(accounts, "lookup_user", counting)
    config = AgentConfig(state_dir=tmp_path, dry_run=True, policy_file=tmp_path / "no-policy.cedar")
    pipeline = build_pipeline(config, tmp_path, AuditTrail.off(), dry_run=True)
    data = {
        "command": "provisionAuthorizedKeys",
        "action": "grant",
        "requestId": "r1",
        "userName": "p0nosuchuser",
        "publicKey": KEY,
    }
    result = trio.run(pipeline.handle, "provisionAuthorizedKeys", data)
    assert not result.success and "p0nosuchuser" in (result.error or "")  # refused as a real run would be
    assert looked == ["p0nosuchuser"]
