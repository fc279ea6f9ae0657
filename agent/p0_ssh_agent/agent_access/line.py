"""The agent-access request line: one forwarded `ssh_*` request in, one CommandResult out, top to bottom here.

    body --operations.parse_operation--> Operation                          (strict; OperationInvalid -> 400)
      -> facts: the account (eligibility.read_account, once, in a thread), the trust keys and the policy
         loaded with this configuration (AccessSettings), the clock
      -> gate.decide -> Allowed | Refusal                                    (pure)
      -> job_plan.plan_job -> WorkerJob                                      (the grant's prefix confines it)
      -> a dry run: job_plan.describe, nothing runs
         else: the replay cache claims the cosignature (a second use -> STEP_UP), then confine.run_worker runs
         the job as the account in its own confinement; its reply is hostile input, parsed and bounded there
      -> answers.py -> CommandResult, and one audit entry (host/audit_events.py access_event)

The runtime calls `execute` on a lane of its own (runtime/access_lane.py: per-account and global limits, its own
byte budget); the settings are loaded once per configuration by build_access_pipeline, so a SIGHUP with a broken
policy or trust file keeps the pipeline in force (the supervisor's reload fails whole, as for the main policy).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.agent_access.access_model import (
    AccessCommand,
    Operation,
    Refusal,
    RefusalKind,
    TargetAccount,
    TrustKeys,
    WorkerJob,
    WorkerReply,
)
from p0_ssh_agent.agent_access.access_policy import AccessPolicy, load_access_policy
from p0_ssh_agent.agent_access.answers import answered, refused
from p0_ssh_agent.agent_access.confine import WorkerLimits, choose_mode, run_worker
from p0_ssh_agent.agent_access.eligibility import read_account
from p0_ssh_agent.agent_access.gate import Allowed, CapabilityRefusal, GateFacts, decide
from p0_ssh_agent.agent_access.job_plan import argv_digest, content_digest, describe, plan_job
from p0_ssh_agent.agent_access.operations import OperationInvalid, parse_operation
from p0_ssh_agent.agent_access.replay_cache import ReplayCache
from p0_ssh_agent.agent_access.trust_keys import load_trust_keys
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.requests import is_user_name
from p0_ssh_agent.host.audit_events import AccessFacts, Result, access_event
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.identity.hostfacts import hostname as kernel_hostname
from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest

log = get_logger(__name__)

REPLAY_FILE = "agent-access-replay.json"  # in the state directory: a cosignature stays used across restarts


@dataclass(frozen=True)
class AccessSettings:
    """What one configuration gives the line, loaded once (build_access_pipeline)."""

    config: AgentConfig
    state_dir: Path
    hostname: str
    trust: TrustKeys
    policy: AccessPolicy
    replay: ReplayCache
    audit_trail: AuditTrail
    mode: str  # the confinement confine.choose_mode picked for agentAccessConfinement
    limits: WorkerLimits = field(default_factory=WorkerLimits)
    own_directories: tuple[str, ...] = ()
    own_files: tuple[str, ...] = ()

    @property
    def dry_run(self) -> bool:
        return self.config.dry_run


@dataclass
class _Record:
    """What the audit entry says about one request, filled in as the line goes."""

    operation: Operation | None = None
    request_id: str = ""
    username: str = ""
    issuer: str = ""
    approver: str = ""
    policy: str = ""


@dataclass(frozen=True)
class AccessPipeline:
    """runtime/worker.py's Pipeline for `ssh_*` commands."""

    settings: AccessSettings
    clock: Callable[[], float] = time.time

    async def execute(self, request: ForwardedRequest, key: object = None) -> CommandResult:
        started = time.monotonic()
        record = _Record()
        answer, reply = await self._run(request, record)
        self._audit(record, answer, reply, started)
        return answer

    async def _run(self, request: ForwardedRequest, record: _Record) -> tuple[CommandResult, WorkerReply | None]:
        data = request.data
        if not isinstance(data, Mapping):
            return refused(Refusal(RefusalKind.INVALID, "the request body must be a JSON object")), None
        record.request_id, record.username = _readable(data, "requestId"), _readable(data, "username")
        try:
            operation = parse_operation(request.command, data)
        except OperationInvalid as exc:
            return refused(Refusal(RefusalKind.INVALID, exc.message)), None
        record.operation = operation
        settings = self.settings
        account = await trio.to_thread.run_sync(read_account, operation.username)
        verdict = decide(operation, self._facts(account))
        if isinstance(verdict, Refusal):
            record.policy = verdict.policy
            if isinstance(verdict, CapabilityRefusal):
                record.issuer, record.approver = verdict.issuer, verdict.approver
            _log_refusal(operation, verdict)
            return refused(verdict), None
        record.issuer, record.approver = verdict.capability.issuer, verdict.approver
        record.policy = ",".join(verdict.policies)
        if account is None:  # the gate refuses a missing account; this only tells the type checker
            return refused(Refusal(RefusalKind.ACCOUNT, "the account vanished")), None
        job = plan_job(operation, verdict.prefix)
        if settings.dry_run:
            return self._dry_run(operation, verdict, account, job), None
        if verdict.jti:  # last, right before the run: a request refused above never used up its cosignature
            claimed = await trio.to_thread.run_sync(
                settings.replay.claim, verdict.jti, verdict.jti_expires, int(self.clock())
            )
            if not claimed:
                refusal = _unclaimed(settings.replay)
                _log_refusal(operation, refusal)
                return refused(refusal), None
        reply = await run_worker(job, account, mode=settings.mode, limits=settings.limits)
        return answered(operation, reply), reply

    def _facts(self, account: TargetAccount | None) -> GateFacts:
        settings = self.settings
        return GateFacts(
            enabled=settings.config.agent_access,
            listed=settings.config.agent_access_users,
            account=account,
            trust=settings.trust,
            policy=settings.policy,
            hostname=settings.hostname,
            now=int(self.clock()),
            own_directories=settings.own_directories,
            own_files=settings.own_files,
        )

    def _dry_run(self, operation: Operation, verdict: Allowed, account: TargetAccount, job: WorkerJob) -> CommandResult:
        text, plan = describe(
            operation,
            job,
            account,
            mode=self.settings.mode,
            limits=self.settings.limits,
            policies=verdict.policies,
            issuer=verdict.capability.issuer,
            cosigner=verdict.cosigner,
        )
        message = messages.dry_run(operation.command.value, operation.username)
        return CommandResult(success=True, message=message, output=text, result=plan)

    def _audit(self, record: _Record, answer: CommandResult, reply: WorkerReply | None, started: float) -> None:
        operation = record.operation
        kind = answer.result.get("kind") if answer.result is not None else None
        result: Result
        if answer.success:
            result, outcome = "success", "ok"
        else:
            outcome = str(kind or RefusalKind.FAILED.value)
            ran = reply is not None
            result = "failure" if ran or outcome == RefusalKind.FAILED.value else "denied"
        facts = AccessFacts(
            paths=operation.paths if operation is not None else (),
            issuer=record.issuer,
            approver=record.approver,
            outcome=outcome,
            duration_ms=round((time.monotonic() - started) * 1000),
        )
        facts = _sizes(facts, operation, reply)
        command = operation.command.value if operation is not None else "-"
        self.settings.audit_trail.record(
            access_event(
                request_id=operation.request_id if operation is not None else record.request_id,
                command=command,
                username=operation.username if operation is not None else record.username,
                result=result,
                facts=facts,
                dry_run=self.settings.dry_run,
                policy=record.policy,
                error="" if answer.success else answer.error,
            )
        )


def _sizes(facts: AccessFacts, operation: Operation | None, reply: WorkerReply | None) -> AccessFacts:
    """The audit entry's sizes and digests: what was written (and its SHA-256), read, the exit code."""
    if operation is None:
        return facts
    if operation.command in (AccessCommand.FILE_WRITE, AccessCommand.FILE_CREATE):
        facts = replace(facts, bytes_written=len(operation.data), content_sha256=content_digest(operation.data))
    if operation.command is AccessCommand.EXEC:
        facts = replace(facts, argv_sha256=argv_digest(operation.argv))
    if reply is not None and reply.ok:  # the worker's numbers (hostile input: only ints are taken)
        read, code = reply.result.get("length"), reply.result.get("exitCode")
        if operation.command is AccessCommand.FILE_READ and isinstance(read, int) and not isinstance(read, bool):
            facts = replace(facts, bytes_read=read)
        if isinstance(code, int) and not isinstance(code, bool):
            facts = replace(facts, exit_code=code)
    return facts


def _readable(data: Mapping[str, object], name: str) -> str:
    """A member of a body that did not parse, for the audit entry only when it is a plain identifier."""
    value = data.get(name)
    if not isinstance(value, str):
        return ""
    if name == "username":
        return value if is_user_name(value) else ""
    return value if messages.token(value) == value and len(value) <= 128 else ""


def _unclaimed(replay: ReplayCache) -> Refusal:
    """Why a cosignature could not be claimed: used before, or (failing closed) a cache that cannot record it."""
    if replay.error:
        return Refusal(RefusalKind.FAILED, f"step-up not recorded: the replay cache is unusable ({replay.error})")
    return Refusal(RefusalKind.STEP_UP, "step-up refused: cosignature already used")


def _log_refusal(operation: Operation, refusal: Refusal) -> None:
    log.warning(
        "agent_access_refused",
        request_id=operation.request_id,
        command=operation.command.value,
        user=operation.username,
        kind=refusal.kind.value,
        policy=refusal.policy,
        reason=refusal.message,
    )


# --- loading, once per configuration ---------------------------------------------------------------------------


def own_places(config: AgentConfig, state_dir: Path) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The agent's configured directories (a prefix may be at, above or beneath none) and files (at or above
    none) beyond scoped_paths.AGENT_DIRECTORIES' defaults: where it keeps its state, runtime files and key, and
    the directories of its policies and trust file."""
    directories = [state_dir, config.key_path, config.runtime_dir]
    directories += [config.policy_file.parent, config.agent_access_policy_file.parent]
    directories += [config.agent_access_keys_file.parent]
    files = [config.audit_file, config.metrics_file, config.source]
    return (
        tuple(dict.fromkeys(str(path) for path in directories if path is not None and str(path) != "/")),
        tuple(dict.fromkeys(str(path) for path in files if path is not None)),
    )


def build_access_pipeline(
    config: AgentConfig, state_dir: Path, audit_trail: AuditTrail, *, by_hand: bool = False
) -> AccessPipeline:
    """The pipeline for `agentAccess: true`: its policy and trust file loaded and checked now. Raises AgentError
    (PolicyError, ConfigError): exit 78 at start-up, a failed reload (the old pipeline stays) on SIGHUP.

    by_hand: `p0-ssh-agent command --dry-run`, beside a daemon that may be running: a dry run whatever dryRun
    says, the replay cache only read (replay_cache.py: read_only), and the confinement the root daemon would pick."""
    if by_hand:
        config = replace(config, dry_run=True)
    policy = load_access_policy(config.agent_access_policy_file)
    trust = load_trust_keys(config.agent_access_keys_file)
    # By hand: the mode the root daemon would pick, whoever runs the dry run.
    mode = choose_mode(config.agent_access_confinement, as_root=True if by_hand else None)
    directories, files = own_places(config, state_dir)
    settings = AccessSettings(
        config=config,
        state_dir=state_dir,
        hostname=config.hostname or kernel_hostname(),
        trust=trust,
        policy=policy,
        replay=ReplayCache(state_dir / REPLAY_FILE, read_only=by_hand),
        audit_trail=audit_trail,
        mode=mode,
        own_directories=directories,
        own_files=files,
    )
    if settings.replay.error:  # agent access goes on; a step-up fails closed until the file is fixed
        log.error("agent_access_replay_cache_unusable", path=str(settings.replay.path), error=settings.replay.error)
    log.info(
        "agent_access_loaded",
        policy=policy.source,
        keys=str(config.agent_access_keys_file),
        issuers=len(trust.issuers),
        approvers=len(trust.approvers),
        users=list(config.agent_access_users),
        confinement=mode,
        hostname=settings.hostname,
    )
    return AccessPipeline(settings)
