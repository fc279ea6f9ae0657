"""keyStore store (issue 14 item 6) on the host: real useradd/usermod/gpasswd in the namespace sandbox.

A created account's key and CA grants go to its root-owned file in the key store, root:<its group> 0640 in a 0711
directory, and the account joins the group sshd's drop-in matches; its ~/.ssh/authorized_keys is not written. A
revoke removes the pair from the store and from the home file (a grant made before the switch), the file goes when
its last line does, a delete removes it; adopted accounts keep their home file. Reconciliation, doctor's orphan
check and runAudit read the store. (Logging in through sshd with these files: tests/test_key_store_e2e.py.)
"""

from __future__ import annotations

import grp
import pwd
import stat
from pathlib import Path
from typing import Any

import pytest
import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_GROUP
from p0_ssh_agent.diagnostics.orphan_checks import check_orphans
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import build_pipeline
from p0_ssh_agent.provisioning.reconcile import reconcile
from sandbox.fixtures import Sandbox, unique_user_name
from test_reconcile import KEY_A, KEY_B, grant

pytestmark = pytest.mark.sandbox


@pytest.fixture
def state(sandbox: Sandbox, tmp_path: Path) -> Path:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    return state


def engine_in(state: Path, key_store: str, **settings: Any) -> Engine:
    config = AgentConfig(state_dir=state, key_store=key_store, **settings)
    return Engine.on_host(config, state, audit_trail=AuditTrail.off())


def home_keys(user: str) -> Path:
    return Path(pwd.getpwnam(user).pw_dir) / ".ssh" / "authorized_keys"


def members() -> list[str]:
    try:
        return list(grp.getgrnam(KEY_STORE_GROUP).gr_mem)
    except KeyError:
        return []


def test_a_created_accounts_grants_go_to_its_root_owned_store_file(state: Path) -> None:
    engine = engine_in(state, "store")
    user = unique_user_name()
    grant(engine, "provisionUser", "r1", userName=user)
    grant(engine, "provisionAuthorizedKeys", "r1", userName=user, publicKey=KEY_A)
    grant(engine, "provisionCAKeys", "r1", userName=user, caPublicKey=KEY_B)
    stored = state / "keys" / user
    info = stored.stat()
    assert (info.st_uid, info.st_gid, stat.S_IMODE(info.st_mode)) == (0, pwd.getpwnam(user).pw_gid, 0o640)
    assert stat.S_IMODE((state / "keys").stat().st_mode) == 0o711 and (state / "keys").stat().st_uid == 0
    text = stored.read_text()
    assert text.count("# RequestID: r1\n") == 2 and KEY_A.split()[1] in text and "cert-authority" in text
    assert not home_keys(user).exists()  # nothing in a directory the user can write decides who logs in
    assert user in members()
    assert reconcile(engine, repair=False) == []


def test_a_revoke_removes_the_pair_from_the_store_and_from_a_grant_made_before_the_switch(state: Path) -> None:
    user = unique_user_name()
    before = engine_in(state, "home")
    grant(before, "provisionUser", "r1", userName=user)
    grant(before, "provisionAuthorizedKeys", "old", userName=user, publicKey=KEY_B)
    after = engine_in(state, "store")
    grant(after, "provisionAuthorizedKeys", "new", userName=user, publicKey=KEY_A)
    grant(after, "provisionAuthorizedKeys", "old", userName=user, publicKey=KEY_B)  # now in the store too
    for request_id in ("old", "new"):
        data = {"command": "provisionAuthorizedKeys", "action": "revoke", "requestId": request_id, "userName": user}
        result = trio.run(build_pipeline(after.config, state, AuditTrail.off()).handle, data["command"], data)
        assert result.success, result
    assert b"RequestID" not in home_keys(user).read_bytes()  # the home-mode grant went too
    assert not (state / "keys" / user).exists()  # its last line gone: no empty file is kept


def test_an_adopted_account_keeps_its_home_file_in_store_mode(sandbox: Sandbox, state: Path) -> None:
    user = unique_user_name()
    sandbox.useradd(user)
    engine = engine_in(state, "store", adopt_users=(user,))
    grant(engine, "provisionAuthorizedKeys", "r1", userName=user, publicKey=KEY_A)
    assert b"# RequestID: r1\n" in home_keys(user).read_bytes()
    assert not (state / "keys" / user).exists() and user not in members()


def test_a_delete_removes_the_store_file(state: Path) -> None:
    engine = engine_in(state, "store", user_revoke_mode="delete")
    user = unique_user_name()
    grant(engine, "provisionUser", "r1", userName=user)
    grant(engine, "provisionAuthorizedKeys", "r1", userName=user, publicKey=KEY_A)
    # A stray line in the store with no grant behind it (a crash, a hand edit): the delete takes the file anyway.
    (state / "keys" / user).write_text("# RequestID: zz\n" + KEY_B + "\n")
    data = {"command": "provisionUser", "action": "revoke", "requestId": "r1", "userName": user}
    assert trio.run(build_pipeline(engine.config, state, AuditTrail.off()).handle, data["command"], data).success
    assert not (state / "keys" / user).exists()


def test_reconciliation_reads_and_repairs_the_store_file(state: Path) -> None:
    engine = engine_in(state, "store")
    user = unique_user_name()
    grant(engine, "provisionUser", "r1", userName=user)
    grant(engine, "provisionAuthorizedKeys", "r1", userName=user, publicKey=KEY_A)
    stored = state / "keys" / user
    stored.write_text(stored.read_text().replace(KEY_A, KEY_B))  # root edited it by hand
    found = reconcile(engine, repair=True)
    assert [(d.kind, d.path, d.repaired) for d in found] == [("key_changed", str(stored), True)]
    assert not stored.exists() and reconcile(engine, repair=False) == []


def test_doctor_finds_orphaned_pairs_in_the_store(state: Path) -> None:
    engine = engine_in(state, "store")
    user = unique_user_name()
    grant(engine, "provisionUser", "r1", userName=user)
    grant(engine, "provisionAuthorizedKeys", "r1", userName=user, publicKey=KEY_A)
    stored = state / "keys" / user
    with stored.open("a") as file:
        file.write("# RequestID: lost\n" + KEY_B + "\n")
    finding = check_orphans(engine.config, state, users=[user])
    assert finding.level == "warn"
    assert any(f"key {user} lost {stored}" in line for line in finding.items), finding


def test_run_audit_shows_the_store(state: Path) -> None:
    engine = engine_in(state, "store")
    user = unique_user_name()
    grant(engine, "provisionUser", "r1", userName=user)
    grant(engine, "provisionAuthorizedKeys", "r1", userName=user, publicKey=KEY_A)
    pipeline = build_pipeline(engine.config, state, AuditTrail.off())
    result = trio.run(pipeline.handle, "runAudit", {"command": "runAudit"})
    assert result.output is not None
    section = result.output.split("===AUTHORIZED_KEYS===\n", 1)[1].split("===PASSWD===", 1)[0]
    assert f"USER:{user}\n# RequestID: r1\n{KEY_A}" in section
