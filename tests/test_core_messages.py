"""The upstream message strings, word for word as upstream-protocol.md §5 and §6 quote them."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from p0_ssh_agent.core import messages


def test_messages_match_the_go_agent_word_for_word() -> None:
    path = "/home/alice/.ssh/authorized_keys"
    assert messages.key_added(path) == "SSH public key added to /home/alice/.ssh/authorized_keys successfully"
    assert messages.key_removed(path) == "SSH public key removed from /home/alice/.ssh/authorized_keys successfully"
    assert messages.NO_PUBLIC_KEY == "No public key provided, skipping authorized keys provisioning"
    assert messages.NO_CA_PUBLIC_KEY == "No CA public key provided, skipping CA keys provisioning"
    assert messages.ca_key_added(path, 'cert-authority,principals="alice" ssh-ed25519 AAAA') == (
        'CA public key added to /home/alice/.ssh/authorized_keys successfully with cert-authority,principals="alice" '
        "ssh-ed25519 AAAA"
    )
    assert messages.ca_key_removed(path) == "CA public key removed from /home/alice/.ssh/authorized_keys successfully"
    assert messages.sudo_granted("alice ALL=(ALL) NOPASSWD: ALL") == (
        "Sudo access granted successfully for rule: alice ALL=(ALL) NOPASSWD: ALL"
    )
    assert messages.sudo_revoked("AbC123") == "Sudo access revoked successfully for RequestID: AbC123"
    assert messages.SUDO_NOT_REQUESTED == "Sudo access not requested, skipping sudo provisioning"
    assert messages.user_created("alice", 65536) == "User alice created successfully with UID 65536"
    assert messages.USER_EXISTS == "User already exists"
    assert messages.USER_REVOKE_HANDLED == "User access revocation handled by other provisioning functions"
    assert messages.no_uid_available() == "no available UID found in range 65536-90000"
    assert messages.USER_CREATE_FAILED == "failed to create user: neither useradd nor adduser succeeded"
    assert messages.user_not_found("bob", "unknown user bob") == "user bob not found: unknown user bob"
    assert messages.users_found(2) == "found 2 users"
    assert messages.no_active_processes("alice") == "No active processes found for user alice"
    assert messages.slice_terminated("alice") == "Successfully terminated user slice for alice"
    assert messages.processes_terminated(3, "alice") == "Successfully terminated 3 processes for user alice"
    assert messages.termination_signals_sent(3, "alice") == "Termination signals sent to 3 processes for user alice"
    assert messages.INVALID_ACTION == "invalid action: must be 'grant' or 'revoke'"
    assert messages.SESSION_REVOKE_ONLY == "ProvisionSession only supports 'revoke' action to terminate SSH connections"
    assert messages.unknown_command("provisionRoot") == "unknown command: provisionRoot"
    assert messages.invalid_time("startTime", "soon") == (
        'invalid startTime format "soon": must be a unix timestamp or ISO 8601 (e.g. 2024-01-01T00:00:00Z)'
    )
    assert messages.dry_run("provisionUser", "alice") == "DRY-RUN: Would execute provisionUser for user alice"
    assert messages.AUDIT_COMPLETED == "Audit completed successfully"
    assert messages.AUDIT_TIMED_OUT == "audit script timed out after 1m0s"
    assert messages.SUDOSH_COLLECTED == "Sudosh recordings collected successfully"
    assert messages.SUDOSH_TIMED_OUT == "recordings export timed out after 2m0s"


@given(st.text(max_size=200))
def test_shown_values_are_one_bounded_ascii_line(value: str) -> None:
    text = messages.shown(value)
    assert text.isascii()
    assert text.isprintable()
    assert len(text) <= 64 * 12 + 2 + 3  # worst case: every character a \\uXXXX surrogate pair escape


@given(st.text(max_size=100))
def test_unknown_command_echo_is_one_printable_line(command: str) -> None:
    message = messages.unknown_command(command)
    assert message.isprintable()
    assert message.startswith("unknown command: ")
