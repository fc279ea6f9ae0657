"""The agent's metrics and their Prometheus text exposition (format 0.0.4), written by hand (no I/O here).

prometheus_client would do this, but it costs the daemon about 1.5 MiB of resident memory and 20 ms of start-up
(its exposition module pulls in http.server, email and wsgiref) for some eighty lines of text; the format is
small and stable, and tests/test_metrics.py checks our output with prometheus_client's own parser.

Label values are bounded: a command name the agent does not know counts as "other", so a backend sending random
command names cannot grow the label set (and the file) without limit. The agent-access commands (`ssh_*`) are
known names too (ACCESS_COMMANDS, held equal to agent_access/access_model.py's by tests/test_metrics.py: this
module must not import agent_access, which loads only when the feature is on), and their answers are also counted
by what they were (access_requests_total's `result`: "ok", a refusal kind from the fixed ACCESS_RESULTS, or the
worker's own outcome), so a hostile `result.kind` cannot add a label value either. Counters are bumped from the
event loop and from the worker threads that run host changes (audit events), hence the lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from p0_ssh_agent.core.requests import Command

PREFIX = "p0_ssh_agent"
ACCESS_COMMANDS = frozenset(
    {
        "ssh_file_read",
        "ssh_file_write",
        "ssh_file_create",
        "ssh_file_delete",
        "ssh_file_move",
        "ssh_file_copy",
        "ssh_dir_list",
        "ssh_dir_tree",
        "ssh_dir_create",
        "ssh_dir_delete",
        "ssh_dir_delete_recursive",
        "ssh_exec",
    }
)
KNOWN_COMMANDS = frozenset(command.value for command in Command) | ACCESS_COMMANDS
# What an agent-access answer was: "ok", agent_access's RefusalKind values (answers.py puts one in result.kind),
# and the worker's outcomes that carry no kind (runtime/worker.py: no answer in time, the worker full or stopping,
# a delivery that reused a request id with another body).
ACCESS_RESULTS = frozenset(
    {
        "ok",
        "invalid_request",
        "disabled",
        "account_not_allowed",
        "capability_rejected",
        "outside_capability",
        "step_up_required",
        "denied_by_policy",
        "not_found",
        "already_exists",
        "conflict",
        "refused_file",
        "too_large",
        "busy",
        "failed",
        "timeout",
        "stopping",
    }
)
_WORKER_OUTCOMES = frozenset({"timeout", "busy", "stopping", "conflict"})
# Request durations run from a listUsers (milliseconds) to a slow useradd behind a cold NSS (tens of seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Audit events counted (host/audit_trail.py Event values) and the metric each one feeds.
AUDIT_COUNTERS = {
    "denied": "policy_denials_total",
    "expired": "expiries_total",
    "drift": "drift_found_total",
    "repaired": "drift_repaired_total",
}
# The counter families in the order the exposition lists them.
COUNTERS = (
    "requests_total",
    "access_requests_total",
    "policy_denials_total",
    "expiries_total",
    "drift_found_total",
    "drift_repaired_total",
    "reconnects_total",
)
HELP = {
    "requests_total": "Requests from the backend answered, by command, outcome and policy decision.",
    "access_requests_total": "Agent-access (ssh_*) requests answered, by command and result (ok or why not).",
    "request_duration_seconds": "Time from a request's arrival to its answer.",
    "policy_denials_total": "Changes the local policy refused.",
    "expiries_total": "Grants the agent revoked because they outlived maxGrantSeconds.",
    "drift_found_total": "Differences reconciliation found between the ledger and the host.",
    "drift_repaired_total": "Differences reconciliation repaired (reconcile: repair).",
    "reconnects_total": "Connections to the tunnel server that ended (or failed to open), by reason.",
    "connected": "1 while the tunnel server has accepted the agent's client id, else 0.",
    "grants_in_force": "Key and sudo grants in the ledger.",
    "managed_users": "Local users the ledger says the agent manages.",
    "reload_failed": "1 when the last configuration reload failed (the agent runs on the previous one).",
    "agent_access": "1 when agent access (agentAccess) is on in the configuration in force, else 0.",
}


def command_label(command: str) -> str:
    if not command or command == "-":
        return "none"
    return command if command in KNOWN_COMMANDS else "other"


def access_result(outcome: str, success: bool, kind: object) -> str:
    """access_requests_total's `result` for one answer: the worker's outcome when it answered for the pipeline
    (timeout, busy, stopping, conflict), else "ok" or the answer's result.kind, if it is one of ACCESS_RESULTS,
    else "failed". A repeated delivery counts as what the first one was answered."""
    if outcome in _WORKER_OUTCOMES:
        return outcome
    if success:
        return "ok"
    return kind if isinstance(kind, str) and kind in ACCESS_RESULTS else "failed"


@dataclass
class _Histogram:
    counts: list[int]
    total: float = 0.0
    observations: int = 0


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._gauges: dict[str, float] = {
            "connected": 0,
            "grants_in_force": 0,
            "managed_users": 0,
            "reload_failed": 0,
            "agent_access": 0,
        }
        self._duration = _Histogram([0] * len(DURATION_BUCKETS))
        for name in ("policy_denials_total", "expiries_total", "drift_found_total", "drift_repaired_total"):
            self._counters[name] = {(): 0}  # present from the start: a rate() over a missing series is empty
        self._counters["requests_total"] = {}
        self._counters["access_requests_total"] = {}
        self._counters["reconnects_total"] = {}

    def _add(self, name: str, labels: dict[str, str], amount: float = 1) -> None:
        key = tuple(sorted(labels.items()))
        with self._lock:
            series = self._counters[name]
            series[key] = series.get(key, 0) + amount

    def request_done(self, command: str, outcome: str, decision: str, seconds: float) -> None:
        self._add("requests_total", {"command": command_label(command), "outcome": outcome, "decision": decision})
        seconds = seconds if math.isfinite(seconds) and seconds >= 0 else 0.0
        with self._lock:
            for index, bound in enumerate(DURATION_BUCKETS):
                if seconds <= bound:
                    self._duration.counts[index] += 1
            self._duration.total += seconds
            self._duration.observations += 1

    def access_done(self, command: str, result: str) -> None:
        """One agent-access answer, by access_result's `result` (bounded here too: anything else is "failed")."""
        label = command_label(command)
        if label not in ACCESS_COMMANDS:  # an unknown ssh_* name: "other" in requests_total, and here
            label = "other"
        self._add(
            "access_requests_total", {"command": label, "result": result if result in ACCESS_RESULTS else "failed"}
        )

    def reconnect(self, reason: str) -> None:
        self._add("reconnects_total", {"reason": reason})

    def audit_event(self, event: str) -> None:
        name = AUDIT_COUNTERS.get(event)
        if name is not None:
            self._add(name, {})

    def set_gauge(self, name: str, value: float) -> None:
        with self._lock:
            if name not in self._gauges:
                raise KeyError(name)
            self._gauges[name] = value

    def counter(self, name: str, **labels: str) -> float:
        """One counter's value (for status --json and the tests)."""
        with self._lock:
            return self._counters[name].get(tuple(sorted(labels.items())), 0)

    def total(self, name: str) -> float:
        """A counter summed over its labels."""
        with self._lock:
            return sum(self._counters[name].values())

    def render(self) -> str:
        """The whole exposition, one metric family after another, ending with a newline."""
        with self._lock:
            lines: list[str] = []
            for name in COUNTERS:
                lines += _family(name, "counter", self._counters[name].items())
            for name, value in self._gauges.items():
                lines += _family(name, "gauge", [((), value)])
            lines += self._histogram_lines()
        return "\n".join(lines) + "\n"

    def _histogram_lines(self) -> list[str]:
        name = f"{PREFIX}_request_duration_seconds"
        lines = [f"# HELP {name} {HELP['request_duration_seconds']}", f"# TYPE {name} histogram"]
        for bound, count in zip(DURATION_BUCKETS, self._duration.counts, strict=True):
            lines.append(f'{name}_bucket{{le="{_number(bound)}"}} {count}')
        lines.append(f'{name}_bucket{{le="+Inf"}} {self._duration.observations}')
        lines.append(f"{name}_sum {_number(self._duration.total)}")
        lines.append(f"{name}_count {self._duration.observations}")
        return lines


def _family(short: str, kind: str, series: Iterable[tuple[tuple[tuple[str, str], ...], float]]) -> list[str]:
    # Format 0.0.4 (what node_exporter's textfile collector reads) names the family by its sample name, _total
    # included; only OpenMetrics drops the suffix from HELP and TYPE.
    name = f"{PREFIX}_{short}"
    lines = [f"# HELP {name} {HELP[short]}", f"# TYPE {name} {kind}"]
    for labels, value in sorted(series):
        lines.append(f"{name}{_labels(labels)} {_number(value)}")
    return lines


def _labels(labels: tuple[tuple[str, str], ...]) -> str:
    if not labels:
        return ""
    return "{" + ",".join(f'{key}="{escape_label(value)}"' for key, value in labels) + "}"


def escape_label(value: str) -> str:
    """Label values escape backslash, double quote and line feed (the exposition format's only three)."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(value: float) -> str:
    if isinstance(value, int) or (math.isfinite(value) and value == int(value) and abs(value) < 2**53):
        return str(int(value))
    return repr(float(value))
