"""Moving grants between ~/.ssh/authorized_keys and the key store (provisioning/key_store_move.py).

The plans are pure: checked here on their actions and transforms. The sandbox half runs them on real accounts
(useradd, usermod, gpasswd) through the engine: both directions, reruns that change nothing, a pair the user forged
in their own file never reaching the store, and adopted accounts left as they are.
"""

from __future__ import annotations

import grp
from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.authorized_keys_format import add_block, ca_line, key_line
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_GROUP
from p0_ssh_agent.core.sshkeys import parse_public_key
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import EditKeyStore, EditUserFile, JoinKeyStoreGroup, LeaveKeyStoreGroup
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import KeyEntry
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.key_store_move import (
    AccountKeys,
    granted_pairs,
    move_grants,
    move_stragglers,
    plan_to_home,
    plan_to_store,
)
from p0_ssh_agent.provisioning.pipeline import run_change
from provisioning_support import authorized_keys
from sandbox.fixtures import Sandbox, make_keypair, unique_user_name

KEY = parse_public_key(
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE alice@example.com", field="key"
)
OTHER = parse_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIB4c9GbS9XzNxQ0j7Hj3g4Wm0N9v2m1iEwWkqkT2vWcZ", field="k")
ALICE = UserRecord("alice", 70001, 70001, "/home/alice", "/bin/bash")
GRANTS = {"r1": [KeyEntry("key", KEY.fingerprint(), "2026-01-01T00:00:00Z")]}


def home_with_forgery() -> bytes:
    content = b"ssh-ed25519 AAAA-users-own-line\n"
    content = add_block(content, "r1", key_line(KEY))  # the agent's
    content = add_block(content, "r1", key_line(OTHER))  # the user's forgery under the granted request's marker
    content = add_block(content, "r9", key_line(KEY))  # a request the ledger does not hold
    return add_block(content, "r1", ca_line("mallory", KEY))  # a CA line for another principal


def test_only_the_pairs_the_ledger_holds_count_as_granted() -> None:
    assert granted_pairs(home_with_forgery(), "alice", GRANTS) == [("r1", key_line(KEY).encode())]
    with_ca = {"r1": [*GRANTS["r1"], KeyEntry("ca", KEY.fingerprint(), "2026-01-01T00:00:00Z")]}
    content = add_block(home_with_forgery(), "r1", ca_line("alice", KEY))
    assert granted_pairs(content, "alice", with_ca) == [
        ("r1", key_line(KEY).encode()),
        ("r1", ca_line("alice", KEY).encode()),
    ]


def test_to_the_store_copies_then_joins_then_removes_only_what_it_copied() -> None:
    home = home_with_forgery()
    plan = plan_to_store(AccountKeys(ALICE, GRANTS, home, None), "/s/keys", remove=True)
    store_edit, join, home_edit = plan.actions
    assert isinstance(store_edit, EditKeyStore) and join == JoinKeyStoreGroup("alice")
    assert store_edit.transform(b"") == b"# RequestID: r1\n" + key_line(KEY).encode() + b"\n"
    assert store_edit.transform(store_edit.transform(b"")) == store_edit.transform(b"")  # idempotent
    assert isinstance(home_edit, EditUserFile) and not home_edit.create
    left = home_edit.transform(home)
    assert key_line(KEY).encode() + b"\n" not in left.split(b"# RequestID: r1\n", 1)[0] and b"r9" in left
    assert granted_pairs(left, "alice", GRANTS) == [] and key_line(OTHER).encode() in left  # the user's, kept
    keeping = plan_to_store(AccountKeys(ALICE, GRANTS, home, None), "/s/keys", remove=False)
    assert [type(action) for action in keeping.actions] == [EditKeyStore, JoinKeyStoreGroup]
    # Nothing granted in the home file: the account still joins (no key the user adds may log them in).
    assert plan_to_store(AccountKeys(ALICE, {}, home, None), "/s/keys", remove=True).actions == (join,)


def test_home_copies_then_leaves_then_removes_the_store_file() -> None:
    store = add_block(add_block(b"", "r1", key_line(KEY)), "r7", key_line(OTHER))  # r7: a revoke cut off mid-way
    plan = plan_to_home(AccountKeys(ALICE, GRANTS, b"", store), "/s/keys", remove=True)
    home_edit, leave, store_edit = plan.actions
    assert isinstance(home_edit, EditUserFile) and home_edit.create
    assert home_edit.transform(b"mine\n") == b"mine\n# RequestID: r1\n" + key_line(KEY).encode() + b"\n"
    assert leave == LeaveKeyStoreGroup("alice")
    assert isinstance(store_edit, EditKeyStore) and store_edit.transform(store) == b"" and not store_edit.create
    kept = plan_to_home(AccountKeys(ALICE, GRANTS, b"", store), "/s/keys", remove=False)
    assert [type(action) for action in kept.actions] == [EditUserFile]
    assert plan_to_home(AccountKeys(ALICE, GRANTS, b"", None), "/s/keys", remove=True).actions == (leave,)


def test_a_home_mode_host_without_a_store_does_nothing_at_start(tmp_path: Path) -> None:
    engine = Engine.on_host(AgentConfig(state_dir=tmp_path), tmp_path, audit_trail=AuditTrail.off())
    assert move_stragglers(engine) is None


# --- on real accounts, in the sandbox ------------------------------------------------------------------------------


def members() -> set[str]:
    try:
        return set(grp.getgrnam(KEY_STORE_GROUP).gr_mem)
    except KeyError:
        return set()


def grant(engine: Engine, name: str, request_id: str, public: str, *, create: bool = True) -> None:
    commands: tuple[tuple[str, dict[str, str]], ...] = (("provisionUser", {}),) if create else ()
    for command, fields in (*commands, ("provisionAuthorizedKeys", {"publicKey": public})):
        data = {"command": command, "action": "grant", "requestId": request_id, "userName": name, **fields}
        result = run_change(engine, parse_change(command, data)).result
        assert result.success, result


@pytest.mark.sandbox
def test_moves_in_both_directions_converge_and_leave_adopted_accounts_alone(sandbox: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    created, adopted = unique_user_name(), unique_user_name()
    sandbox.useradd(adopted)
    config = AgentConfig(state_dir=state, adopt_users=(adopted,))
    engine = Engine.on_host(config, state, audit_trail=AuditTrail.off())
    _key, public = make_keypair(tmp_path, "granted")
    _forged, forged_public = make_keypair(tmp_path, "forged")
    grant(engine, created, "req-1", public)
    grant(engine, adopted, "req-2", public, create=False)
    with authorized_keys(created).open("a") as own:  # the user forges a pair under the granted request's marker
        own.write(f"# RequestID: req-1\n{forged_public}\n")
    adopted_home = authorized_keys(adopted).read_bytes()
    store_file = state / "keys" / created

    report = move_grants(engine, "store", remove=False)
    assert not report.failed and len(report.done) == 1, report
    stored = store_file.read_bytes()
    assert public.encode() in stored and forged_public.encode() not in stored
    assert public.encode() in authorized_keys(created).read_bytes()  # kept: sshd may still read the home file
    assert created in members() and adopted not in members()
    assert move_grants(engine, "store", remove=False).done == report.done and store_file.read_bytes() == stored

    assert not move_grants(engine, "store", remove=True).failed
    home = authorized_keys(created).read_bytes()
    assert public.encode() not in home and forged_public.encode() in home  # the user's own line stays theirs
    assert store_file.read_bytes() == stored
    assert not move_grants(engine, "store", remove=True).failed and authorized_keys(created).read_bytes() == home

    assert not move_grants(engine, "home", remove=False).failed
    assert public.encode() in authorized_keys(created).read_bytes() and store_file.exists()
    assert not move_grants(engine, "home", remove=True).failed
    assert not store_file.exists() and created not in members()
    back = authorized_keys(created).read_bytes()
    assert back.count(public.encode()) == 1
    assert not move_grants(engine, "home", remove=True).failed and authorized_keys(created).read_bytes() == back

    assert authorized_keys(adopted).read_bytes() == adopted_home and not (state / "keys" / adopted).exists()


@pytest.mark.sandbox
def test_at_start_store_mode_copies_home_grants_and_keeps_them(sandbox: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    name = unique_user_name()
    home_engine = Engine.on_host(AgentConfig(state_dir=state), state, audit_trail=AuditTrail.off())
    _key, public = make_keypair(tmp_path, "granted")
    grant(home_engine, name, "req-1", public)  # made by an agent still in home mode
    store_engine = Engine.on_host(AgentConfig(state_dir=state, key_store="store"), state, audit_trail=AuditTrail.off())
    report = move_stragglers(store_engine)
    assert report is not None and not report.failed
    assert public.encode() in (state / "keys" / name).read_bytes() and name in members()
    assert public.encode() in authorized_keys(name).read_bytes()  # never removed at start
    # Home mode again: the store's grants come home, the files go, the account leaves the group.
    report = move_stragglers(home_engine)
    assert report is not None and not report.failed
    assert not (state / "keys" / name).exists() and name not in members()
    assert authorized_keys(name).read_bytes().count(public.encode()) == 1
