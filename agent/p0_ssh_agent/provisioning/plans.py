"""Human-readable plans of what a request would change (dry-run output)."""

from __future__ import annotations

from p0_ssh_agent.core.requests import (
    CaKeyRequest,
    KeyRequest,
    ProvisioningRequest,
    SessionRequest,
    SudoRequest,
    UserRequest,
)

MARKER = "# RequestID: "


def summary(request: ProvisioningRequest) -> str:
    command = request.command.value
    user = getattr(request, "user", "-")
    action = getattr(request, "action", None)
    return f"would {action.value if action else 'run'} {command} for user {user}"


def plan(request: ProvisioningRequest) -> str:
    if isinstance(request, UserRequest):
        if request.action.value == "grant":
            return (
                f"create user {request.user} (UID = GID in 65536-90000) if missing:\n"
                f"  /usr/sbin/groupadd -g <uid> {request.user}\n"
                f"  /usr/sbin/useradd -m -u <uid> -g <uid> -s /bin/bash -p '*' {request.user}"
            )
        return f"lock and expire {request.user} if it holds no other grant: /usr/sbin/usermod -L -e 1 {request.user}"
    if isinstance(request, KeyRequest | CaKeyRequest):
        key = request.key if isinstance(request, KeyRequest) else request.ca_key
        if request.action.value == "revoke":
            return f"~{request.user}/.ssh/authorized_keys: remove '{MARKER}{request.request_id}' and its key line"
        if key is None:
            return "nothing: no key given"
        line = (
            key.line()
            if isinstance(request, KeyRequest)
            else f'cert-authority,principals="{request.user}" {key.line()}'
        )
        return f"~{request.user}/.ssh/authorized_keys: add\n+{MARKER}{request.request_id}\n+{line}"
    if isinstance(request, SudoRequest):
        rule = f"{request.user} ALL=({request.run_as or 'ALL'}) NOPASSWD: ALL"
        if request.action.value == "revoke":
            return f"/etc/sudoers.d/p0-ssh-agent: remove '{MARKER}{request.request_id}' and its rule"
        if not request.sudo and request.run_as is None:
            return "nothing: sudo not requested"
        return f"/etc/sudoers.d/p0-ssh-agent (checked with visudo -cf): add\n+{MARKER}{request.request_id}\n+{rule}"
    if isinstance(request, SessionRequest):
        return f"end every session and process of {request.user}"
    return ""
