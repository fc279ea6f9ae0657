"""The daemon's health, one owner for three views of it: the STATUS= line, status.json and the metrics.

The tunnel tells it what the connection does (connecting, connected, ended and why), the worker what each
request did, the audit trail what the guard did (denials, expiries, drift); the supervisor what a reload did.
From that one record it builds the STATUS= text (so `systemctl status` and `p0-ssh-agent status` cannot
disagree), the state document and the metrics, and pokes the publisher to write them.

The STATUS= text is the connection's own text, followed by the reload failure while there is one: a failed
reload used to replace the text and stay there after a good reload (issue 15); now a successful reload removes
it, and a connection change while the failure stands keeps it visible.

The ledger is read by refresh_ledger (in a thread, after READY=1), which imports the ledger and expiry modules
itself: building the record before READY does not load them (issue 16).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.runtime import status_text
from p0_ssh_agent.runtime.limits import is_access_command
from p0_ssh_agent.runtime.livestate import LiveState, file_digest, stamp
from p0_ssh_agent.runtime.metrics import Metrics, access_result

if TYPE_CHECKING:
    from p0_ssh_agent.config import AgentConfig
    from p0_ssh_agent.host.audit_trail import AuditEvent
    from p0_ssh_agent.protocol.forwarded import CommandResult
    from p0_ssh_agent.provisioning.expiry import LiveGrant
    from p0_ssh_agent.runtime.jobs import JobKey

log = get_logger(__name__)


@dataclass
class _LedgerSummary:
    signature: tuple[int, int, int, int | None] | None = None
    grants: list[LiveGrant] | None = None
    users: int | None = None


def policy_of(pipeline: object) -> tuple[str, str | None]:
    """(policy file, digest of the policy text in force) of a Pipeline; ("", None) for anything else."""
    policy = getattr(getattr(pipeline, "context", None), "policy", None)
    text, source = getattr(policy, "text", None), getattr(policy, "source", "")
    if not isinstance(text, str):
        return "", None
    return str(source), "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


class Health:
    def __init__(self, config: AgentConfig, state_dir: Path, *, url: str, client_id: str, pipeline: object) -> None:
        self.metrics = Metrics()
        self.live = LiveState(
            pid=os.getpid(),
            started_at=datetime.now(UTC),
            backend_url=status_text.display_url(url),
            client_id=client_id,
            dry_run=config.dry_run,
        )
        self._link_text = status_text.starting()
        self._config = config
        self._state_dir = state_dir
        self._ledger = _LedgerSummary()
        # The session's latest setClientId answer (heartbeats included), read when the state is written.
        self.answer_source: Callable[[], tuple[datetime, object] | None] = lambda: None
        self.poke: Callable[[], None] = lambda: None  # the publisher's, once it exists
        self.configured(config, state_dir, url=url, client_id=client_id, pipeline=pipeline)

    # --- what the STATUS= line says ---------------------------------------------------------------------------
    @property
    def status_text(self) -> str:
        if self.live.reload_failed and self.live.reload_error is not None:
            return f"{self._link_text}; {status_text.reload_failed(self.live.reload_error)}"
        return self._link_text

    def link_text(self, text: str) -> None:
        self._link_text = text
        if text == status_text.stopping():
            self.live.link = "stopping"
        self._changed()

    # --- the connection (runtime/tunnel.py) ---------------------------------------------------------------------
    def connecting(self) -> None:
        if self.live.link != "refused":  # a refused agent stays "refused" while it tries again
            self.live.link = "connecting"
        self.live.connected_since = None  # also after a reconnect the tunnel asked for (new settings)
        self.metrics.set_gauge("connected", 0)
        self._changed()

    def connected(self, since: datetime) -> None:
        self.live.link = "connected"
        self.live.connected_since = since
        self.metrics.set_gauge("connected", 1)
        self._changed()

    def set_client_id_answered(self, answer: object, when: datetime) -> None:
        shown = answer if isinstance(answer, dict | list | str | int | float | bool) or answer is None else str(answer)
        self.live.last_set_client_id = {"at": stamp(when), "answer": shown}

    def ended(self, reason: str, http_status: int | None) -> None:
        label = self.live.connection_ended(reason, http_status, datetime.now(UTC))
        self.metrics.reconnect(label)
        self.metrics.set_gauge("connected", 0)
        self._changed()

    # --- configuration -----------------------------------------------------------------------------------------
    def configured(self, config: AgentConfig, state_dir: Path, *, url: str, client_id: str, pipeline: object) -> None:
        """After start-up and after each successful reload: what is in force now."""
        self._config, self._state_dir = config, state_dir
        self._ledger = _LedgerSummary()
        live = self.live
        live.backend_url, live.client_id, live.dry_run = status_text.display_url(url), client_id, config.dry_run
        live.policy_file, live.policy_digest = policy_of(pipeline)
        live.config_file = str(config.source) if config.source else None
        live.config_digest = file_digest(config.source)
        live.reload_failed, live.reload_error = False, None
        live.agent_access = config.agent_access  # what the supervisor built the lane's pipeline from
        self.metrics.set_gauge("reload_failed", 0)
        self.metrics.set_gauge("agent_access", 1 if config.agent_access else 0)
        self._changed()

    def reloaded(self, config: AgentConfig, state_dir: Path, *, url: str, client_id: str, pipeline: object) -> None:
        self.live.last_reload_at = datetime.now(UTC)
        self.configured(config, state_dir, url=url, client_id=client_id, pipeline=pipeline)

    def reload_failed(self, error: str) -> None:
        self.live.last_reload_at = datetime.now(UTC)
        self.live.reload_failed, self.live.reload_error = True, error
        self.metrics.set_gauge("reload_failed", 1)
        self._changed()

    # --- requests and the guard --------------------------------------------------------------------------------
    def request_done(self, key: JobKey, outcome: str, seconds: float, result: CommandResult | None) -> None:
        decision = "deny" if result is not None and result.policy_denied else "allow"
        self.metrics.request_done(key.command, outcome, decision, seconds)
        if is_access_command(key.command):  # also counted by what the answer was (docs/metrics.md)
            success = result is not None and result.success
            kind = result.result.get("kind") if result is not None and isinstance(result.result, dict) else None
            self.metrics.access_done(key.command, access_result(outcome, success, kind))

    def audit_event(self, event: AuditEvent) -> None:
        """From the audit trail, possibly in a worker thread: counters only (they have their own lock)."""
        self.metrics.audit_event(event.event.value)

    # --- publishing --------------------------------------------------------------------------------------------
    def refresh_ledger(self) -> None:
        """Grants in force, next expiry and managed users from the ledger; re-read only when it changed. Runs in
        a thread: a large ledger must not hold up the event loop."""
        from p0_ssh_agent.host.ledger import ledger_path, load_ledger
        from p0_ssh_agent.provisioning.expiry import live_grants, next_expiry

        config, state_dir = self._config, self._state_dir
        try:
            info = ledger_path(state_dir).stat()
            signature: tuple[int, int, int, int | None] | None = (
                info.st_ino,
                info.st_mtime_ns,
                info.st_size,
                config.max_grant_seconds,
            )
        except OSError:
            signature = None
        summary = self._ledger
        if summary.signature != signature or summary.grants is None:
            try:
                ledger = load_ledger(state_dir)
            except AgentError as exc:
                log.warning("live_state_ledger_unreadable", error=str(exc))
                summary = _LedgerSummary(signature)
            else:
                summary = _LedgerSummary(signature, live_grants(ledger, config.max_grant_seconds), len(ledger.users))
            self._ledger = summary
        live = self.live
        grants = summary.grants
        live.grants_in_force = None if grants is None else len(grants)
        live.next_expiry = None if grants is None else next_expiry(grants, datetime.now(UTC))
        live.managed_users = summary.users
        self.metrics.set_gauge("grants_in_force", live.grants_in_force or 0)
        self.metrics.set_gauge("managed_users", live.managed_users or 0)

    def state_bytes(self) -> bytes:
        self.live.status_text = self.status_text
        latest = self.answer_source()
        if latest is not None and self.live.link == "connected":
            self.set_client_id_answered(latest[1], latest[0])
        document = self.live.document()
        document["metrics"] = {
            "requests": self.metrics.total("requests_total"),
            "policy_denials": self.metrics.total("policy_denials_total"),
            "expiries": self.metrics.total("expiries_total"),
        }
        return (json.dumps(document, indent=2) + "\n").encode("utf-8")

    def metrics_bytes(self) -> bytes:
        return self.metrics.render().encode("utf-8")

    def _changed(self) -> None:
        self.live.status_text = self.status_text
        self.poke()
