"""Configuration: the frozen AgentConfig, its loader (flags > environment > file > defaults) and the atomic,
comment-keeping writer `register` uses."""

from p0_ssh_agent.config.loader import load_config, parse_config_text, require_connection_settings
from p0_ssh_agent.config.model import DEFAULT_CONFIG_PATH, AgentConfig
from p0_ssh_agent.config.writer import render_config, write_config

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "load_config",
    "parse_config_text",
    "render_config",
    "require_connection_settings",
    "write_config",
]
