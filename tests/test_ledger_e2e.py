"""The ledger's size limit through `p0-ssh-agent command` in the namespace sandbox (real useradd, real files).

A ledger record at its limit must stay usable: the grant that would push it over fails with a clear error and
changes nothing, and revokes (which shrink it) keep working. The limit is per user record (ledger/users/<name>.json):
another user's grant is not affected by one user's full record. Before the limit was checked on write, that grant
succeeded, wrote a ledger the agent then refused to read, and every later grant and revoke failed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from p0_ssh_agent.host.ledger import MAX_LEDGER_BYTES, Ledger, load_ledger, save_ledger, user_record_json
from provisioning_support import AgentCli, authorized_keys, changed, host_state, make_keys, write_config
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox


def pad_to(ledger: Ledger, user: str, size: int) -> Ledger:
    """`ledger` plus one key entry whose long fingerprint (the reader accepts any string) makes `user`'s record
    `size` bytes."""
    ledger.record_key(user, "req-pad", "key", "SHA256:")
    padding = size - record_size(ledger, user)
    assert padding >= 0
    entry = ledger.forget_keys(user, "req-pad")[0]
    ledger.record_key(user, "req-pad", "key", "SHA256:" + "A" * padding, now=entry.granted_at)
    assert record_size(ledger, user) == size
    return ledger


def record_size(ledger: Ledger, user: str) -> int:
    text = user_record_json(ledger, user)
    assert text is not None
    return len(text.encode())


def test_a_full_ledger_refuses_the_grant_cleanly_and_still_revokes(
    sandbox: Sandbox, tmp_path: Path, user_keypair: tuple[Path, str]
) -> None:
    cli = AgentCli(write_config(tmp_path, make_keys(tmp_path)))
    state_dir = tmp_path / "state"
    holder = unique_user_name()
    assert cli.command("provisionUser", holder, request_id="req-1").success
    assert cli.command("provisionAuthorizedKeys", holder, request_id="req-1", public_key=user_keypair[1]).success
    # A key entry is about 100 bytes: 40 bytes of room in the holder's record cannot hold it.
    save_ledger(pad_to(load_ledger(state_dir), holder, MAX_LEDGER_BYTES - 40), state_dir)
    record = state_dir / "ledger" / "users" / f"{holder}.json"
    ledger_bytes = record.read_bytes()
    before = host_state()

    refused = cli.command("provisionAuthorizedKeys", holder, request_id="req-2", public_key=user_keypair[1])
    assert not refused.success
    assert "refusing to save the ledger" in refused.error and "64 MiB" in refused.error, refused
    assert str(record) in refused.error and "nothing was written" in refused.error
    assert changed(before, host_state()) == []  # no key line was written: the ledger is written first
    assert record.read_bytes() == ledger_bytes

    # Another user's record is its own: the newcomer's grant is not refused for the holder's full record.
    newcomer = unique_user_name()
    assert cli.command("provisionUser", newcomer, request_id="req-3").success
    assert newcomer in load_ledger(state_dir).users
    assert record.read_bytes() == ledger_bytes

    # The ledger is still readable, so taking access away still works (and makes room).
    revoked = cli.command("provisionAuthorizedKeys", holder, action="revoke", request_id="req-1")
    assert revoked.success, revoked
    assert b"# RequestID: req-1" not in authorized_keys(holder).read_bytes()
    assert "req-1" not in load_ledger(state_dir).keys.get(holder, {})
