"""What every command handler gets: the configuration, the state directory and whether this is a dry run."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.config import AgentConfig


@dataclass(frozen=True)
class ExecutionContext:
    config: AgentConfig
    state_dir: Path
    dry_run: bool
