"""Drift is pure (provisioning/drift.py): the ledger and the files' contents in, the findings and the Plan that
repairs them out, nothing on the host touched. tests/test_reconcile.py checks the same on a real host.

The repair plans are made of the handlers' actions: an EditUserFile whose transform takes out what is not ours,
then a ChangeLedger that forgets what the host no longer holds (the file first, as a revoke does); for sudo, the
drop-in re-rendered without what the ledger does not hold (InstallSudoers), then the ledger's mirror of it.
"""

from __future__ import annotations

import pytest

from p0_ssh_agent.core.authorized_keys_format import add_block, blocks, ca_line, key_line
from p0_ssh_agent.core.sshkeys import parse_public_key
from p0_ssh_agent.core.sudoers import HEADER, SudoGrant, render_dropin
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import ChangeLedger, EditUserFile, HostAction, InstallSudoers, Plan
from p0_ssh_agent.host.ledger import Ledger, copy_ledger
from p0_ssh_agent.provisioning.drift import Drift, account_gone, compare_keys, compare_sudo

KEY_A = parse_public_key(
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test", field="key"
)
KEY_B = parse_public_key(
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc b@test", field="key"
)
USER_OWN = b"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc the user's own\n"
ALICE = UserRecord("alice", 70001, 70001, "/home/alice/", "/bin/bash")
PATH = "/home/alice/.ssh/authorized_keys"
GRANTED = "2030-01-01T00:00:00Z"
DROPIN = "/etc/sudoers.d/p0-ssh-agent"


def granted(*request_ids: str) -> tuple[Ledger, bytes]:
    """A ledger and an authorized_keys as grants leave them: a key line and a CA line per request, after a line of
    the user's own."""
    ledger = Ledger()
    content = USER_OWN
    for request_id in request_ids:
        ledger.record_key("alice", request_id, "key", KEY_A.fingerprint(), now=GRANTED)
        ledger.record_key("alice", request_id, "ca", KEY_B.fingerprint(), now=GRANTED)
        content = add_block(content, request_id, key_line(KEY_A))
        content = add_block(content, request_id, ca_line("alice", KEY_B))
    return ledger, content


def kinds(drift: list[Drift]) -> list[tuple[str, str | None]]:
    return sorted((d.kind, d.request_id) for d in drift)


def action_types(plan: Plan) -> list[type]:
    return [type(action) for action in plan.actions]


def ledger_after(plan: Plan, ledger: Ledger) -> Ledger:
    after = copy_ledger(ledger)
    for action in plan.actions:
        if isinstance(action, ChangeLedger):
            action.change(after)
    return after


def file_edit(plan: Plan) -> EditUserFile:
    [edit] = [action for action in plan.actions if isinstance(action, EditUserFile)]
    return edit


def test_no_drift_plans_no_repair() -> None:
    ledger, content = granted("rec-1", "rec-2")
    found = compare_keys(ALICE, ledger, content, None)
    assert found.drift == [] and found.repair.actions == ()
    assert compare_sudo(None, Ledger()).repair.actions == ()


def test_hand_edits_are_found_and_the_repair_edits_the_file_before_the_ledger_forgets() -> None:
    ledger, content = granted("rec-1", "rec-2", "rec-3", "rec-4")
    ca_of_rec_1 = b'# RequestID: rec-1\ncert-authority,principals="alice"'
    content = content.replace(ca_of_rec_1, b'# RequestID: rec-1\ncert-authority,principals="root"', 1)
    rec_2_key = blocks(content)["rec-2"][0]
    content = content.replace(b"# RequestID: rec-2\n" + rec_2_key, b"", 1)  # removed by hand
    content += b"# RequestID: rec-3\n" + USER_OWN  # a foreign line under our marker
    content += b"# RequestID: not-ours\n" + key_line(KEY_A).encode() + b"\n"  # not the ledger's: not judged

    found = compare_keys(ALICE, ledger, content, None)

    assert kinds(found.drift) == [("foreign_line", "rec-3"), ("key_changed", "rec-1"), ("key_missing", "rec-2")]
    assert {d.path for d in found.drift} == {PATH} and not any(d.repaired for d in found.drift)
    assert all("AAAA" not in d.detail for d in found.drift)  # fingerprints, never key material
    assert action_types(found.repair) == [EditUserFile, ChangeLedger]  # the file first, then the ledger
    edit = file_edit(found.repair)
    assert (edit.home, edit.uid, edit.gid, edit.subdir, edit.filename, edit.create) == (
        ALICE.home,
        ALICE.uid,
        ALICE.gid,
        ".ssh",
        "authorized_keys",
        False,  # a missing file stays missing
    )
    repaired = edit.transform(content)
    assert repaired.startswith(USER_OWN) and repaired.count(USER_OWN) == 1 and b"not-ours" in repaired
    assert b'principals="root"' not in repaired
    assert set(blocks(repaired)) == {"rec-1", "rec-2", "rec-3", "rec-4", "not-ours"}
    after = ledger_after(found.repair, ledger)
    assert {rid: sorted(e.kind for e in entries) for rid, entries in after.keys["alice"].items()} == {
        "rec-1": ["key"],
        "rec-2": ["ca"],
        "rec-3": ["ca", "key"],
        "rec-4": ["ca", "key"],
    }
    assert compare_keys(ALICE, after, repaired, None).drift == []  # nothing left once the repair is applied
    assert ledger.keys["alice"]["rec-1"][1].kind == "ca"  # the facts themselves are left as they were read


def test_a_foreign_line_alone_is_repaired_by_the_file_edit_alone() -> None:
    ledger, content = granted("rec-1")
    content += b"# RequestID: rec-1\n" + USER_OWN
    found = compare_keys(ALICE, ledger, content, None)
    assert kinds(found.drift) == [("foreign_line", "rec-1")]
    assert action_types(found.repair) == [EditUserFile]  # nothing for the ledger to forget


def test_an_expiry_moved_later_is_drift_a_missing_one_is_not() -> None:
    ledger = Ledger()
    for request_id in ("rec-1", "rec-2", "rec-3"):
        ledger.record_key("alice", request_id, "key", KEY_A.fingerprint(), now=GRANTED)
    content = add_block(b"", "rec-1", key_line(KEY_A, expiry="20300101010000Z"))  # granted_at + 3600 s
    content = add_block(content, "rec-2", key_line(KEY_A, expiry="30300101010000Z"))  # a thousand years later
    content = add_block(content, "rec-3", key_line(KEY_A))  # a grant from before maxGrantSeconds
    found = compare_keys(ALICE, ledger, content, 3600)
    assert kinds(found.drift) == [("key_changed", "rec-2")] and "expiry-time" in found.drift[0].detail


def test_a_vanished_account_has_every_entry_missing_and_the_repair_forgets_them() -> None:
    ledger, _content = granted("rec-1", "rec-2")
    found = account_gone("alice", ledger)
    assert kinds(found.drift) == [("key_missing", "rec-1")] * 2 + [("key_missing", "rec-2")] * 2
    assert {d.path for d in found.drift} == {"~alice/.ssh/authorized_keys"}
    assert all("the account is gone" in d.detail for d in found.drift)
    assert action_types(found.repair) == [ChangeLedger]
    assert "alice" not in ledger_after(found.repair, ledger).keys
    assert account_gone("alice", Ledger()).repair.actions == ()


def sudo_facts() -> tuple[Ledger, bytes]:
    """The ledger's rules rec-1..rec-3 for alice; the drop-in without rec-1, with rec-2's user changed and a rule
    rec-9 added by hand."""
    ledger = Ledger()
    for request_id in ("rec-1", "rec-2", "rec-3"):
        ledger.record_sudo(request_id, "alice", None, now=GRANTED)
    dropin = render_dropin([SudoGrant("rec-2", "root", None), SudoGrant("rec-3", "alice", None)])
    dropin += "# RequestID: rec-9\nnobody ALL=(ALL) NOPASSWD: ALL\n"
    return ledger, dropin.encode()


def test_sudo_drift_is_found_and_the_repair_renders_the_ledger_s_rules_then_mirrors_them() -> None:
    ledger, dropin = sudo_facts()
    found = compare_sudo(dropin, ledger)
    assert kinds(found.drift) == [("sudo_changed", "rec-2"), ("sudo_missing", "rec-1"), ("sudo_unknown", "rec-9")]
    assert {d.path for d in found.drift} == {DROPIN}
    assert {(d.request_id, d.user) for d in found.drift} == {("rec-1", "alice"), ("rec-2", "root"), ("rec-9", "nobody")}
    assert action_types(found.repair) == [InstallSudoers, ChangeLedger]
    install = found.repair.actions[0]
    assert isinstance(install, InstallSudoers)
    assert install.text == HEADER + "# RequestID: rec-3\nalice ALL=(ALL) NOPASSWD: ALL\n" and not install.repair_only
    after = ledger_after(found.repair, ledger)
    assert set(after.sudo) == {"rec-3"} and after.sudo["rec-3"].granted_at == GRANTED  # its time is kept
    assert compare_sudo(install.text.encode(), after).drift == []


def test_a_sudo_rule_gone_by_hand_is_forgotten_with_the_drop_in_rewritten_as_it_is() -> None:
    ledger, _dropin = sudo_facts()
    dropin = render_dropin(ledger.sudo_grants()[1:]).encode()  # rec-1's rule removed
    found = compare_sudo(dropin, ledger)
    assert kinds(found.drift) == [("sudo_missing", "rec-1")]
    install: HostAction = found.repair.actions[0]
    assert isinstance(install, InstallSudoers) and install.repair_only  # the same rules: nothing to describe
    assert set(ledger_after(found.repair, ledger).sudo) == {"rec-2", "rec-3"}


def test_a_drop_in_out_of_shape_is_refused_not_compared() -> None:
    with pytest.raises(AgentError, match="by hand"):
        compare_sudo((HEADER + "Defaults !lecture\n").encode(), Ledger())
