"""Configuration: the frozen AgentConfig, its loader (file > env > flags precedence) and the atomic writer."""

from p0_ssh_agent.config.loader import load_config, parse_config_text, require_connection_settings
from p0_ssh_agent.config.model import DEFAULT_CONFIG_PATH, AgentConfig
from p0_ssh_agent.config.writer import write_config

__all__ = [
    "DEFAULT_CONFIG_PATH",
    "AgentConfig",
    "load_config",
    "parse_config_text",
    "require_connection_settings",
    "write_config",
]
