"""The agent's metrics and their Prometheus text exposition (format 0.0.4), written by hand (no I/O here).

prometheus_client would do this, but it costs the daemon about 1.5 MiB of resident memory and 20 ms of start-up
(its exposition module pulls in http.server, email and wsgiref) for some eighty lines of text; the format is
small and stable, and tests/test_metrics.py checks our output with prometheus_client's own parser.

Label values are bounded: a command name the agent does not know counts as "other", so a backend sending random
command names cannot grow the label set (and the file) without limit. Counters are bumped from the event loop and
from the worker threads that run host changes (audit events), hence the lock.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Iterable
from dataclasses import dataclass

from p0_ssh_agent.core.requests import Command

PREFIX = "p0_ssh_agent"
KNOWN_COMMANDS = frozenset(command.value for command in Command)
# Request durations run from a listUsers (milliseconds) to a slow useradd behind a cold NSS (tens of seconds).
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)
# Audit events counted (host/audit_trail.py Event values) and the metric each one feeds.
AUDIT_COUNTERS = {
    "denied": "policy_denials_total",
    "expired": "expiries_total",
    "drift": "drift_found_total",
    "repaired": "drift_repaired_total",
}
HELP = {
    "requests_total": "Requests from the backend answered, by command, outcome and policy decision.",
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
}


def command_label(command: str) -> str:
    if not command or command == "-":
        return "none"
    return command if command in KNOWN_COMMANDS else "other"


@dataclass
class _Histogram:
    counts: list[int]
    total: float = 0.0
    observations: int = 0


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counters: dict[str, dict[tuple[tuple[str, str], ...], float]] = {}
        self._gauges: dict[str, float] = {"connected": 0, "grants_in_force": 0, "managed_users": 0, "reload_failed": 0}
        self._duration = _Histogram([0] * len(DURATION_BUCKETS))
        for name in ("policy_denials_total", "expiries_total", "drift_found_total", "drift_repaired_total"):
            self._counters[name] = {(): 0}  # present from the start: a rate() over a missing series is empty
        self._counters["requests_total"] = {}
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
            for name in ("requests_total", "policy_denials_total", "expiries_total", "drift_found_total"):
                lines += _family(name, "counter", self._counters[name].items())
            lines += _family("drift_repaired_total", "counter", self._counters["drift_repaired_total"].items())
            lines += _family("reconnects_total", "counter", self._counters["reconnects_total"].items())
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
