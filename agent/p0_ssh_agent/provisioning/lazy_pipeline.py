"""The daemon's pipeline as READY=1 needs it: the local policy loaded and validated, the request line not yet.

provisioning/pipeline.py is the request line and imports everything a request can touch (request parsing, the
handlers, the host actions, the ledger). The daemon must load and validate its local policy before READY=1 (a
broken one is exit 78 at start-up, and a SIGHUP keeps the old one), but needs the request line only when a request
arrives: LazyPipeline holds the ExecutionContext with the compiled policy in it and builds the real Pipeline from
that same context on the first request (issue 16: only what READY needs loads before it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.policy_file import load_policy
from p0_ssh_agent.provisioning.context import ExecutionContext

if TYPE_CHECKING:
    from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest
    from p0_ssh_agent.provisioning.pipeline import Pipeline


@dataclass
class LazyPipeline:
    """What the runtime's worker calls (runtime/worker.py's Pipeline protocol), as provisioning/pipeline.py's
    Pipeline on the same context; `context` is read by the health record (the policy in force)."""

    context: ExecutionContext
    _pipeline: Pipeline | None = field(default=None, init=False, repr=False)

    async def execute(self, request: ForwardedRequest, key: object = None) -> CommandResult:
        return await self.loaded().execute(request, key)

    def loaded(self) -> Pipeline:
        if self._pipeline is None:
            from p0_ssh_agent.provisioning.pipeline import Pipeline

            self._pipeline = Pipeline(self.context)
        return self._pipeline


def build_lazy_pipeline(
    config: AgentConfig, state_dir: Path, audit_trail: AuditTrail, *, dry_run: bool | None = None
) -> LazyPipeline:
    """Raises PolicyError (exit 78) when the local policy does not load: at start-up nothing starts, on SIGHUP
    the supervisor keeps the pipeline it has, and with it the old policy."""
    policy = load_policy(config.policy_file)
    dry_run = config.dry_run if dry_run is None else dry_run
    return LazyPipeline(ExecutionContext(config, state_dir, dry_run, policy, audit_trail=audit_trail))
