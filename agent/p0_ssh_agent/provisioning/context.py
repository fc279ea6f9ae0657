"""What every command handler gets: the configuration, the state directory, whether this is a dry run, the
host owner's local policy (loaded once per configuration, so a SIGHUP with a broken policy keeps the old one), and
the audit trail every outcome is recorded in (one per process, handed in by the supervisor or the CLI command)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.local_policy import LocalPolicy
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.policy_file import builtin_policy


@dataclass(frozen=True)
class ExecutionContext:
    config: AgentConfig
    state_dir: Path
    dry_run: bool
    policy: LocalPolicy = field(default_factory=builtin_policy)
    audit_trail: AuditTrail = field(kw_only=True)
