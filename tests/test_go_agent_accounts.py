"""The Go agent's accounts, as `p0-ssh-agent adopt` recognises them (pure parts; the sandbox test is
tests/test_account_ownership.py): the shape only makes a candidate, the evidence is a rule in /etc/sudoers-p0."""

from __future__ import annotations

from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.provisioning.go_agent_accounts import has_go_agent_shape, sudoers_p0_evidence


def record(name: str, uid: int, gid: int) -> UserRecord:
    return UserRecord(name, uid, gid, f"/home/{name}", "/bin/bash")


def test_the_shape_is_uid_equals_gid_in_the_range_with_a_group_of_the_name() -> None:
    assert has_go_agent_shape(record("alice", 65536, 65536), "alice")
    assert has_go_agent_shape(record("alice", 90000, 90000), "alice")
    assert not has_go_agent_shape(record("alice", 65536, 65537), "alice")
    assert not has_go_agent_shape(record("alice", 65536, 65536), "users")
    assert not has_go_agent_shape(record("alice", 1001, 1001), "alice")
    assert not has_go_agent_shape(record("alice", 90001, 90001), "alice")


def test_evidence_is_a_rule_for_the_user_right_after_a_marker() -> None:
    legacy = (
        "# RequestID: go-1\nalice ALL=(ALL) NOPASSWD: ALL\n"
        "# RequestID: go-2\nbob ALL=(postgres) NOPASSWD: ALL\n"
        "carol ALL=(ALL) NOPASSWD: ALL\n"  # no marker before it: not a line the Go agent wrote
        "# RequestID: go-3\n\ndave ALL=(ALL) NOPASSWD: ALL\n"  # the marker's next line is blank
    )
    assert sudoers_p0_evidence("alice", legacy) == ("/etc/sudoers-p0:2 (RequestID go-1)",)
    assert sudoers_p0_evidence("bob", legacy) == ("/etc/sudoers-p0:4 (RequestID go-2)",)
    assert sudoers_p0_evidence("carol", legacy) == ()
    assert sudoers_p0_evidence("dave", legacy) == ()
    assert sudoers_p0_evidence("alic", legacy) == ()  # a prefix is not the name
    assert sudoers_p0_evidence("alice", "") == ()
