"""Every message the upstream Go agent sends back, in one place (pure).

The backend may show these strings to people, and may even match on them (upstream-protocol.md §13: whether it
parses them is unknown), so the wording is the Go agent's, word for word, wherever §5 and §6 give it. Messages
that carry values are functions, so callers cannot get the wording slightly wrong.

Values that come from the network are passed through `shown()` before they go into a message. That keeps an
error to a single line of bounded length.
"""

from __future__ import annotations

import json
import re

UID_RANGE = (65536, 90000)
_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.@-]{1,64}", re.ASCII)


def shown(value: str, *, limit: int = 64) -> str:
    """A hostile string made safe to print: JSON-quoted (escapes control characters and non-ASCII), bounded."""
    clipped = value[:limit]
    return json.dumps(clipped) + ("..." if len(value) > limit else "")


def token(value: str) -> str:
    """Print a plain identifier unquoted, like the Go agent, and anything else the way shown() does."""
    return value if _SAFE_TOKEN.fullmatch(value) else shown(value)


# --- dispatch and validation (§5.2, §6) ---------------------------------------------------------------------

INVALID_ACTION = "invalid action: must be 'grant' or 'revoke'"
SESSION_REVOKE_ONLY = "ProvisionSession only supports 'revoke' action to terminate SSH connections"


def unknown_command(command: str) -> str:
    return f"unknown command: {token(command)}"


def unmarshal_failed(detail: str) -> str:
    """The Go agent's prefix for a request whose JSON types do not fit (e.g. "sudo": "true")."""
    return f"failed to unmarshal ProvisioningRequest: {detail}"


def invalid_user_name(pattern: str) -> str:
    # Go: "invalid username format: must match ^[a-z][-a-z0-9_]*$" (our pattern is stricter: 32 characters max).
    return f"invalid username format: must match {pattern}"


def invalid_time(field: str, value: str) -> str:
    return f"invalid {field} format {shown(value)}: must be a unix timestamp or ISO 8601 (e.g. 2024-01-01T00:00:00Z)"


def dry_run(command: str, user: str) -> str:
    return f"DRY-RUN: Would execute {command} for user {user}"


# --- provisionUser (§6.2) -------------------------------------------------------------------------------------

USER_EXISTS = "User already exists"
USER_REVOKE_HANDLED = "User access revocation handled by other provisioning functions"
USER_CREATE_FAILED = "failed to create user: neither useradd nor adduser succeeded"


def user_created(name: str, uid: int) -> str:
    return f"User {name} created successfully with UID {uid}"


def no_uid_available(first: int = UID_RANGE[0], last: int = UID_RANGE[1]) -> str:
    return f"no available UID found in range {first}-{last}"


# --- provisionAuthorizedKeys / provisionCAKeys (§6.3) ---------------------------------------------------------

NO_PUBLIC_KEY = "No public key provided, skipping authorized keys provisioning"
NO_CA_PUBLIC_KEY = "No CA public key provided, skipping CA keys provisioning"


def user_not_found(name: str, reason: str) -> str:
    return f"user {name} not found: {reason}"


def key_added(path: str) -> str:
    return f"SSH public key added to {path} successfully"


def key_removed(path: str) -> str:
    return f"SSH public key removed from {path} successfully"


def ca_key_added(path: str, entry: str) -> str:
    return f"CA public key added to {path} successfully with {entry}"


def ca_key_removed(path: str) -> str:
    return f"CA public key removed from {path} successfully"


# --- provisionSudo (§6.4) -------------------------------------------------------------------------------------

SUDO_NOT_REQUESTED = "Sudo access not requested, skipping sudo provisioning"


def sudo_granted(rule: str) -> str:
    return f"Sudo access granted successfully for rule: {rule}"


def sudo_revoked(request_id: str) -> str:
    return f"Sudo access revoked successfully for RequestID: {request_id}"


# --- provisionSession (§6.5) ----------------------------------------------------------------------------------


def session_lookup_failed(name: str, reason: str) -> str:
    return f"failed to lookup user {name}: {reason}"


def no_active_processes(name: str) -> str:
    return f"No active processes found for user {name}"


def slice_terminated(name: str) -> str:
    return f"Successfully terminated user slice for {name}"


def processes_terminated(count: int, name: str) -> str:
    return f"Successfully terminated {count} processes for user {name}"


def termination_signals_sent(count: int, name: str) -> str:
    return f"Termination signals sent to {count} processes for user {name}"


SURVIVORS_SHOWN = 20


def processes_survived(name: str, pids: tuple[int, ...], seconds: float, unkillable: str | None) -> str:
    """Not upstream's: the Go agent answered success whatever was left. A revoke that leaves processes says so."""
    shown = ", ".join(str(pid) for pid in pids[:SURVIVORS_SHOWN]) + (", ..." if len(pids) > SURVIVORS_SHOWN else "")
    left = f"{len(pids)} processes of user {name} survived SIGKILL for {seconds:g} s (PIDs {shown})" if pids else ""
    cause = f"could not send kill(-1) as the user: {unkillable}" if unkillable else ""
    if left and cause:
        return f"{left}; {cause}"
    return left or f"{cause}, so a process hiding from /proc scans (a fork chain) may be left for user {name}"


# --- read-only commands (§6.6, §6.7, §6.8) --------------------------------------------------------------------

AUDIT_COMPLETED = "Audit completed successfully"
AUDIT_TIMED_OUT = "audit script timed out after 1m0s"
SUDOSH_COLLECTED = "Sudosh recordings collected successfully"
SUDOSH_TIMED_OUT = "recordings export timed out after 2m0s"
SUDOSH_NO_RECORDINGS = "No recordings found matching criteria"


def users_found(count: int) -> str:
    return f"found {count} users"


def sudosh_failed(reason: str, stderr: str) -> str:
    return f"failed to collect sudosh recordings: {reason}: {stderr}"
