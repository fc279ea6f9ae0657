"""The supervisor: one trio nursery owning the worker, the tunnel, the watchdog and signal handling.

Start-up order matters to systemd: configuration, key, state directory and local policy are checked first (a
failure there exits 78 and systemd does not restart); READY=1 follows as soon as the local start-up is done, not
when the backend answers, so a host whose network is down still boots without waiting on us. The publisher, the
guard tasks and the tunnel start right after READY=1, and only what READY needs is imported before it (issue 16).
From then on only SIGTERM or SIGINT end the process; SIGHUP reloads the configuration in place.
"""

from __future__ import annotations

import grp
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import trio

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.adapters.sdnotify import Notifier
from p0_ssh_agent.config import AgentConfig, require_connection_settings
from p0_ssh_agent.errors import AgentError, ConfigError
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.identity.signing_key import load_private_key
from p0_ssh_agent.runtime import limits, status_text
from p0_ssh_agent.runtime.access_lane import access_pipeline_for
from p0_ssh_agent.runtime.backend_dial import proxy_for
from p0_ssh_agent.runtime.backoff import RetrySettings
from p0_ssh_agent.runtime.health import Health
from p0_ssh_agent.runtime.livestate import METRICS_FILE, resolve_runtime_dir
from p0_ssh_agent.runtime.periodic import GuardTasks
from p0_ssh_agent.runtime.publisher import Publisher
from p0_ssh_agent.runtime.session_settings import SessionSettings
from p0_ssh_agent.runtime.statedir import ensure_state_dir, resolve_state_dir
from p0_ssh_agent.runtime.tunnel import Tunnel, TunnelSettings
from p0_ssh_agent.runtime.worker import Pipeline, Worker

log = get_logger(__name__)

# In-flight host edits get this long to finish after SIGTERM; below systemd's TimeoutStopSec and the 10 s an
# operator waits for `systemctl stop`.
DRAIN_SECONDS = 8.0
CLOSE_SECONDS = 1.5
# Test hook for the booted-systemd test: with this variable set to 1, SIGUSR2 freezes the event loop so the test
# can watch systemd's watchdog restart a hung agent. Without it SIGUSR2 is not even handled.
TEST_HOOKS_ENV = "P0_SSH_AGENT_TEST_HOOKS"

PipelineFactory = Callable[[AgentConfig, Path, AuditTrail], Pipeline]
# Agent access's pipeline (issue 17): None while agentAccess is off; loads its own policy and trust file.
AccessFactory = Callable[[AgentConfig, Path, AuditTrail], Pipeline | None]


@dataclass
class Prepared:
    """Everything checked before READY=1."""

    config: AgentConfig
    tunnel: TunnelSettings
    state_dir: Path
    runtime_dir: Path = Path("/run/p0-ssh-agent")
    metrics_file: Path = Path("/run/p0-ssh-agent") / METRICS_FILE
    metrics_gid: int | None = None


def metrics_gid(group: str | None) -> int | None:
    if not group:
        return None
    try:
        return grp.getgrnam(group).gr_gid
    except KeyError:
        raise ConfigError(f"metricsGroup {group!r}: no such group on this host (create it, or fix the name)") from None


def prepare(config: AgentConfig, env: Mapping[str, str], previous: Prepared | None = None) -> Prepared:
    """Validate a configuration and load what it points at. Raises AgentError; changes nothing."""
    require_connection_settings(config)
    key = load_private_key(config.key_path)
    state_dir = ensure_state_dir(resolve_state_dir(config.state_dir, env))
    tunnel = TunnelSettings(
        url=config.tunnel_host,
        client_id=config.client_id,
        key=key,
        ca_file=str(config.tunnel_ca_file) if config.tunnel_ca_file else None,
        proxy=proxy_for(config.tunnel_host, config_proxy=config.proxy, env=env),
        pins=config.tunnel_pins,
    )
    runtime_dir = resolve_runtime_dir(config.runtime_dir)
    metrics_file = config.metrics_file or runtime_dir / METRICS_FILE
    return Prepared(config, tunnel, state_dir, runtime_dir, metrics_file, metrics_gid(config.metrics_group))


def retry_settings(config: AgentConfig) -> RetrySettings:
    return RetrySettings(
        reconnect_max=float(config.reconnect_max_seconds), unauthorized_first=float(config.unauthorized_retry_seconds)
    )


def tunnel_changed(old: TunnelSettings, new: TunnelSettings) -> bool:
    return (old.url, old.client_id, old.key.thumbprint, old.ca_file, old.proxy, old.pins) != (
        new.url,
        new.client_id,
        new.key.thumbprint,
        new.ca_file,
        new.proxy,
        new.pins,
    )


class Supervisor:
    """Built by `create` (which loads what the first pipeline needs); __init__ only wires the parts together, and
    `run` opens what lives as long as the process (the journald socket) before anything starts."""

    @classmethod
    def create(
        cls,
        prepared: Prepared,
        *,
        reload_config: Callable[[], AgentConfig],
        pipeline_factory: PipelineFactory,
        notifier: Notifier,
        env: Mapping[str, str],
        access_factory: AccessFactory = access_pipeline_for,
    ) -> Supervisor:
        """The daemon's one audit trail and its first pipelines (the local policy loads here, and with agentAccess
        on the agent-access policy and trust file: a broken one raises, exit 78, before READY=1), then the
        supervisor around them."""
        # The one audit trail of the daemon: every request, expiry, offline revoke and drift is recorded in it.
        audit_trail = AuditTrail.from_config(prepared.config, env)
        pipeline = pipeline_factory(prepared.config, prepared.state_dir, audit_trail)
        access_pipeline = access_factory(prepared.config, prepared.state_dir, audit_trail)
        return cls(
            prepared,
            pipeline=pipeline,
            audit_trail=audit_trail,
            reload_config=reload_config,
            pipeline_factory=pipeline_factory,
            notifier=notifier,
            env=env,
            access_pipeline=access_pipeline,
            access_factory=access_factory,
        )

    def __init__(
        self,
        prepared: Prepared,
        *,
        pipeline: Pipeline,
        audit_trail: AuditTrail,
        reload_config: Callable[[], AgentConfig],
        pipeline_factory: PipelineFactory,
        notifier: Notifier,
        env: Mapping[str, str],
        access_pipeline: Pipeline | None = None,
        access_factory: AccessFactory = access_pipeline_for,
    ) -> None:
        self.prepared = prepared
        self._reload_config = reload_config
        self._pipeline_factory = pipeline_factory
        self._access_factory = access_factory
        self._notifier = notifier
        self._env = env
        self._status = ""
        self.session_settings = SessionSettings(
            client_id=prepared.tunnel.client_id,
            heartbeat_interval=float(prepared.config.heartbeat_interval_seconds),
            call_timeout=float(prepared.config.heartbeat_timeout_seconds),
        )
        self.audit_trail = audit_trail
        self.worker = Worker(pipeline, access_pipeline=access_pipeline)
        # Expiry sweep, offline revoke, reconciliation: they read the current configuration at each round.
        self.guard = GuardTasks(lambda: (self.prepared.config, self.prepared.state_dir), audit_trail=self.audit_trail)
        self.health = Health(
            prepared.config,
            prepared.state_dir,
            url=prepared.tunnel.url,
            client_id=prepared.tunnel.client_id,
            pipeline=self.worker.pipeline,
        )
        self.worker.on_answered = self.health.request_done
        self.tunnel = Tunnel(
            prepared.tunnel,
            self.session_settings,
            self.worker,
            self.report,
            on_link=self.guard.link_changed,
            health=self.health,
            retry=retry_settings(prepared.config),
        )
        self.health.answer_source = lambda: self.tunnel.session.last_answer if self.tunnel.session else None
        self.publisher = Publisher(
            prepared.runtime_dir,
            prepared.metrics_file,
            metrics_gid=prepared.metrics_gid,
            state=self.health.state_bytes,
            metrics=self.health.metrics_bytes,
            refresh=self.health.refresh_ledger,
        )
        self.health.poke = self.publisher.poke

    @property
    def status_text(self) -> str:
        return self._status

    def report(self, text: str) -> None:
        """The connection's text (from the tunnel, or stopping); STATUS= adds a standing reload failure."""
        self.health.link_text(text)
        self._send_status()

    def _send_status(self) -> None:
        text = self.health.status_text
        if text == self._status:
            return
        self._status = text
        self._notifier.status(text)
        log.info("status", text=text)

    async def run(self) -> int:
        wanted = [signal.SIGTERM, signal.SIGINT, signal.SIGHUP]
        hooks = self._env.get(TEST_HOOKS_ENV) == "1"
        if hooks:
            wanted.append(signal.SIGUSR2)
        # Every blocking host call runs in one of these threads: the unit's TasksMax= and LimitNOFILE= count them.
        trio.to_thread.current_default_thread_limiter().total_tokens = limits.HOST_THREADS
        self.audit_trail.open()
        with self.audit_trail.observing(self.health.audit_event):
            return await self._run(wanted, hooks)

    async def _run(self, wanted: list[signal.Signals], hooks: bool) -> int:
        with trio.open_signal_receiver(*wanted) as signals:
            async with trio.open_nursery() as nursery:
                await nursery.start(self.worker.run)
                await nursery.start(self._watchdog)
                self.report(status_text.starting())
                # READY=1 before the publisher, the guard tasks and the tunnel start: none of them stops the agent
                # when it fails, and what they import and do (the ledger and provisioning modules, the runtime
                # directory's lock, the connection) is not READY's to wait for.
                self._notifier.ready()
                log.info(
                    "ready",
                    client_id=self.prepared.tunnel.client_id,
                    state_dir=str(self.prepared.state_dir),
                    dry_run=self.prepared.config.dry_run,
                    agent_access=self.worker.access_pipeline is not None,
                )
                await nursery.start(self.guard.run)  # runs with or without the backend
                await nursery.start(self.tunnel.run)
                await nursery.start(self.publisher.run)  # its first ledger read does not hold up the connection
                async for signum in signals:
                    if signum == signal.SIGHUP:
                        await self.reload()
                        continue
                    if hooks and signum == signal.SIGUSR2:
                        log.warning("test_hook_hang", note="blocking the event loop on purpose")
                        while True:  # a deliberate hang: no await, so the watchdog pings stop
                            time.sleep(3600)  # noqa: ASYNC251
                    log.info("signal", signal=signal.Signals(signum).name)
                    await self.shutdown()
                    nursery.cancel_scope.cancel()
                    break
        return 0

    async def reload(self) -> None:
        self._notifier.reloading()
        log.info("reloading")
        try:
            new = prepare(self._reload_config(), self._env)
            pipeline = self._pipeline_factory(new.config, new.state_dir, self.audit_trail)
            # The kill switch applies here: off drops the lane's pipeline (its calls answer 403 from now on); on
            # loads the agent-access policy and trust file again, and a bad one fails the whole reload.
            access_pipeline = self._access_factory(new.config, new.state_dir, self.audit_trail)
        except AgentError as exc:
            log.error("reload_failed", error=str(exc))
            self.health.reload_failed(str(exc))
            self._send_status()
            self._notifier.ready()
            return
        old = self.prepared
        self.prepared = new
        self.worker.set_pipeline(pipeline)
        if (self.worker.access_pipeline is None) != (access_pipeline is None):
            log.info("agent_access_switched", agent_access=access_pipeline is not None)
        self.worker.set_access_pipeline(access_pipeline)
        self.audit_trail.reconfigure(new.config)
        self.session_settings.heartbeat_interval = float(new.config.heartbeat_interval_seconds)
        self.session_settings.call_timeout = float(new.config.heartbeat_timeout_seconds)
        self.session_settings.client_id = new.tunnel.client_id
        self.tunnel.set_retry(retry_settings(new.config))
        if tunnel_changed(old.tunnel, new.tunnel):
            log.info("tunnel_settings_changed", url=status_text.display_url(new.tunnel.url))
            self.tunnel.reconnect(new.tunnel)
        self.guard.reloaded()
        # The metrics file may move or change group at once; runtimeDir holds the lock, so it needs a restart.
        self.publisher.metrics_file, self.publisher.metrics_gid = new.metrics_file, new.metrics_gid
        tunnel = new.tunnel
        self.health.reloaded(new.config, new.state_dir, url=tunnel.url, client_id=tunnel.client_id, pipeline=pipeline)
        self._send_status()  # a standing reload failure is gone from STATUS= now
        self._notifier.ready()
        log.info("reloaded", reconnect=tunnel_changed(old.tunnel, new.tunnel))

    async def shutdown(self) -> None:
        self._notifier.stopping()
        self.report(status_text.stopping())
        session = self.tunnel.session
        if session is not None:
            session.stop_reading()
        self.worker.stop_accepting()
        with trio.move_on_after(DRAIN_SECONDS) as drain:
            await self.worker.drain()
        if drain.cancelled_caught:
            log.error("shutdown_drain_timeout", pending=self.worker.pending, seconds=DRAIN_SECONDS)
        self.tunnel.shutdown()
        with trio.move_on_after(CLOSE_SECONDS):
            await self.tunnel.stopped.wait()
        log.info("stopped")

    async def _watchdog(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """WATCHDOG=1 from the event loop itself: if the loop hangs, the pings stop and systemd restarts us."""
        task_status.started()
        interval = self._notifier.watchdog_interval
        if interval is None:
            return
        while True:
            self._notifier.watchdog()
            await trio.sleep(interval)
