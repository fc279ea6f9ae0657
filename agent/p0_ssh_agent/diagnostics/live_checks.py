"""The running agent as `status` sees it: the check for its live state, and `status`'s exit code (no trio).

Read by diagnostics/status_checks.py (the checks) and cli/status.py (the exit code and the JSON document).

Exit codes follow the LSB init-script `status` convention that monitoring tools know (0 running, 3 not running,
4 unknown), with the two states LSB has no word for in its application range (150-199); a configuration that
cannot be loaded keeps the sysexits 78 every subcommand uses. docs/status.md and the man page list them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.runtime.livestate import LiveRead

UNIT = "p0-ssh-agent.service"

# `p0-ssh-agent status` exit codes, most important first: the first that applies wins.
EXIT_CONFIG = 78  # the configuration cannot be loaded or is incomplete: nothing else was checked
EXIT_NOT_RUNNING = 3  # no agent runs (a state file left by a killed agent does not count)
EXIT_UNKNOWN = 4  # cannot tell whether it runs (status not run as root)
EXIT_REFUSED = 150  # it runs, and the backend refuses it (HTTP 401/403)
EXIT_UNREACHABLE = 151  # it runs, and is not connected (backend down, network, TLS, starting up)
EXIT_CHECK_FAILED = 1  # it runs and is connected, and another check failed (a reload, a key file mode, ...)
EXIT_OK = 0  # it runs, it is connected, and no check failed

STATE_WORDS = {
    EXIT_NOT_RUNNING: "not-running",
    EXIT_UNKNOWN: "unknown",
    EXIT_REFUSED: "refused",
    EXIT_UNREACHABLE: "unreachable",
}


def agent_checks(live: LiveRead, runtime_dir: Path) -> tuple[list[Finding], int]:
    """The `agent` check (and `reload` when a reload failed), with the exit code the live state implies."""
    doc = live.document or {}
    pid = doc.get("pid")
    if live.running is None:
        return [Finding("agent", "fail", live.problem, "run status as root")], EXIT_UNKNOWN
    if not live.running:
        if live.document is not None:
            detail = (
                f"not running: the state in {runtime_dir} was left by an agent (pid {pid}) that is gone "
                f"(killed, or crashed); it last said: {doc.get('status_text', '-')}"
            )
        else:
            detail = "not running"
        return [Finding("agent", "fail", detail, f"systemctl enable --now {UNIT}; then journalctl -u {UNIT} -e")], (
            EXIT_NOT_RUNNING
        )
    text = str(doc.get("status_text") or "starting (no state written yet)")
    link = doc.get("link")
    checks: list[Finding] = []
    if link == "connected":
        checks.append(Finding("agent", "ok", f"running (pid {pid}): {text}"))
        code = EXIT_OK
    elif link == "refused":
        error = doc.get("last_error") or {}
        checks.append(
            Finding(
                "agent",
                "fail",
                f"running (pid {pid}), refused by the backend with HTTP {error.get('http_status')}: {text}",
                "register this host's key with P0 (p0-ssh-agent register), check orgId/hostId and the clock",
            )
        )
        code = EXIT_REFUSED
    else:
        checks.append(
            Finding(
                "agent",
                "fail",
                f"running (pid {pid}), not connected: {text}",
                "check that tunnelHost is reachable from here: p0-ssh-agent doctor",
            )
        )
        code = EXIT_UNREACHABLE
    if doc.get("reload_failed"):
        checks.append(
            Finding(
                "reload",
                "fail",
                f"the last reload failed, the agent runs on the previous configuration: {doc.get('reload_error')}",
                f"fix the file, then systemctl reload {UNIT}",
            )
        )
    return checks, code


def overall_exit(live_code: int | None, checks: list[Finding], config_failed: bool) -> int:
    if config_failed:
        return EXIT_CONFIG
    if live_code is not None and live_code != EXIT_OK:
        return live_code
    return EXIT_CHECK_FAILED if any(c.level == "fail" for c in checks) else EXIT_OK


def state_word(code: int, live: LiveRead | None) -> str:
    if code in STATE_WORDS:
        return STATE_WORDS[code]
    if live is not None and live.document is not None and live.running:
        return str(live.document.get("link", "unknown"))
    return "unknown"


def live_json(live: LiveRead | None) -> dict[str, Any] | None:
    if live is None:
        return None
    return {"running": live.running, "problem": live.problem or None, "state": live.document}
