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
