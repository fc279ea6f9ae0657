"""The configuration check doctor and status share: does a configuration that loads hold what `start` needs?

No trio and no host access, so `status` (run often, by monitoring) can import it without the network checks.
"""

from __future__ import annotations

from p0_ssh_agent.config import AgentConfig, require_connection_settings
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.errors import AgentError


def check_config(config: AgentConfig) -> Finding:
    """A file that loads but lacks what `start` needs (an unregistered host): say which keys, and how to get them."""
    try:
        require_connection_settings(config)
    except AgentError as exc:
        return Finding("config", "fail", str(exc), "p0-ssh-agent register --url URL (or --org-id ORG --host-id HOST)")
    return Finding("config", "ok", f"client id {config.client_id}, tunnel {config.tunnel_host}")


def check_revoke_mode(config: AgentConfig) -> Finding:
    """What a revoke does to the access of an account the agent created (issue 14 item 5), said plainly: with
    userRevokeMode keep, a key the JIT user added to their own authorized_keys outlives every revoke and expiry."""
    mode = config.user_revoke_mode
    if mode == "keep":
        return Finding(
            "revoke mode",
            "warn",
            "userRevokeMode is keep: accounts are never locked, so keys a JIT user added to their own "
            "~/.ssh/authorized_keys survive the revoke and expiry of their grants and still log in",
            "set `userRevokeMode: lock` (the default) so the last revoke locks the account and ends its sessions",
        )
    return Finding(
        "revoke mode",
        "ok",
        f"userRevokeMode {mode}: a created account whose last grant is revoked or expires is locked and its "
        "sessions ended" + ("; provisionUser revoke deletes it" if mode == "delete" else ""),
    )


def check_access_switch(config: AgentConfig, in_force: bool | None) -> Finding:
    """Agent access (issue 17) on or off, as the configuration says and, when the running agent published it
    (status.json's agent_access; None when unknown), as the agent has it in force: they differ after an edit not
    yet reloaded, or a reload that failed. Says nothing of the feature's files: doctor checks those."""
    if config.agent_access:
        users = ", ".join(config.agent_access_users) or "no account, so every request is refused"
        detail = f"on (agentAccess: true) for {users}: ssh_* requests are served"
    else:
        detail = "off (agentAccess: false): every ssh_* request is answered 403"
    if in_force is not None and in_force != config.agent_access:
        return Finding(
            "agent access",
            "warn",
            f"{detail} by the configuration, but the running agent has it {'on' if in_force else 'off'}",
            "systemctl reload p0-ssh-agent (if the reload fails, the `reload` check says why)",
        )
    return Finding("agent access", "ok", detail)
