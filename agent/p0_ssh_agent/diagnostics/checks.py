"""`p0-ssh-agent doctor` (issue 6): find what on a real host makes grants fail, each finding with its fix.

`status` asks "is the agent set up?"; doctor asks "will a grant work?": sshd's effective settings, sudo's
includes and visudo, SELinux labels, the name service (diagnostics/host_checks.py), the proxy, TLS and clock skew
against the backend (diagnostics/network_checks.py), drift between the ledger and the host
(provisioning/reconcile.py, in report mode), grants on the host that no ledger knows about
(diagnostics/orphan_checks.py), and agent access (diagnostics/access_checks.py: one line when it is off). Read-only
throughout: no file, lock, ledger entry or log record is written.

Exit status: 0 when no finding fails (warnings and skips allowed), 1 when one does; a configuration that cannot
be loaded is exit 78 before any check runs (cli/doctor.py).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.diagnostics.access_checks import check_agent_access
from p0_ssh_agent.diagnostics.config_checks import check_config, check_revoke_mode
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.diagnostics.host_checks import (
    check_nss,
    check_selinux,
    check_sshd,
    check_sudoers,
    check_visudo,
)
from p0_ssh_agent.diagnostics.key_store_checks import check_key_store
from p0_ssh_agent.diagnostics.network_checks import DEFAULT_TIMEOUT, offline_findings, probe_backend
from p0_ssh_agent.diagnostics.orphan_checks import check_orphans
from p0_ssh_agent.errors import AgentError, ExitCode
from p0_ssh_agent.provisioning.reconcile import inspect_drift
from p0_ssh_agent.runtime.statedir import resolve_state_dir

__all__ = ["DEFAULT_TIMEOUT", "Finding", "check_config", "check_ledger", "collect", "exit_code", "host_findings"]


def check_ledger(config: AgentConfig, state_dir: Path) -> Finding:
    """Ledger vs host: the same comparison the agent's reconciliation makes, through a dry-run engine, which
    takes no lock and repairs nothing; record=False keeps the findings out of the log and the audit trail."""
    if not state_dir.exists():
        return Finding("ledger", "ok", f"{state_dir} does not exist yet: nothing granted, nothing to compare")
    try:
        drift = inspect_drift(config, state_dir)
    except AgentError as exc:
        fix = "run doctor as root" if os.geteuid() != 0 else "restore the ledger, or move it aside (see the message)"
        return Finding("ledger", "fail", str(exc), fix)
    if not drift:
        return Finding("ledger", "ok", "ledger and host agree")
    return Finding(
        "ledger",
        "warn",
        f"{len(drift)} difference(s) between the ledger and the host",
        "set `reconcile: repair` to let the agent undo what it owns, or fix the files by hand",
        tuple(f"{' '.join(p for p in (d.kind, d.user, d.request_id) if p)} {d.path}: {d.detail}" for d in drift),
    )


def host_findings() -> list[Finding]:
    found = []
    if os.geteuid() != 0:
        found.append(
            Finding(
                "privileges",
                "warn",
                f"running as uid {os.geteuid()}: sshd -T, /etc/sudoers and the ledger need root to read",
                "run doctor as root (sudo p0-ssh-agent doctor)",
            )
        )
    return [*found, *check_sshd(), check_sudoers(), *check_visudo(), *check_selinux(), *check_nss()]


def collect(
    config: AgentConfig, env: Mapping[str, str], *, offline: bool = False, timeout: float = DEFAULT_TIMEOUT
) -> list[Finding]:
    """Every finding, host checks first. Runs its own trio loop for the network: call it from sync code."""
    state_dir = resolve_state_dir(config.state_dir, env)
    found = [
        check_config(config),
        check_revoke_mode(config),
        *host_findings(),
        check_ledger(config, state_dir),
        check_orphans(config, state_dir),
        *check_key_store(config, state_dir),
        *check_agent_access(config, state_dir),  # one ok line when off; agent_access is imported only when on
    ]
    if offline:
        return found + offline_findings()
    network = trio.run(
        lambda: probe_backend(
            config.tunnel_host,
            config_proxy=config.proxy,
            env=env,
            ca_file=config.tunnel_ca_file,
            pins=config.tunnel_pins,
            timeout=timeout,
        )
    )
    return found + network


def exit_code(findings: list[Finding]) -> int:
    return int(ExitCode.FAILURE) if any(f.level == "fail" for f in findings) else int(ExitCode.OK)
