"""Adapters between the agent and its host environment: systemd notification and logging setup."""
