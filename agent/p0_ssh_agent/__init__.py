"""p0-ssh-agent: just-in-time SSH access for Linux hosts, wire-compatible with the P0 tunnel server."""

from p0_ssh_agent._version import __version__

__all__ = ["__version__"]
