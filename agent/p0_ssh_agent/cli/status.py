"""`p0-ssh-agent status`: is the agent running and connected, and is this host set up correctly? Computes a list
of checks, then renders text or JSON.

Read-only: it creates nothing (not even the state directory) and never prints key material, only the key's
RFC 7638 thumbprint and SSH key fingerprints. The running agent is read from its live state in the runtime
directory (cli/status_live.py, which also has the exit codes): 0 only when the agent runs, is connected and
every check passes (warnings allowed).

It also lists the live grants from the ledger (age, expiry under maxGrantSeconds) and the drift a read-only
reconciliation finds between the ledger and the host (provisioning/reconcile.py); drift is a warning, never a failure.
"""

from __future__ import annotations

import argparse
import json
import os
import stat
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p0_ssh_agent.cli.status_live import agent_checks, live_json, overall_exit, state_word
from p0_ssh_agent.diagnostics.findings import Finding, render
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.runtime.livestate import LiveRead, read_live_state, resolve_runtime_dir

if TYPE_CHECKING:  # imported inside the functions at run time: they pull in trio
    from p0_ssh_agent.config import AgentConfig
    from p0_ssh_agent.provisioning.expiry import LiveGrant
    from p0_ssh_agent.provisioning.reconcile import Drift

SYSTEMCTL_CANDIDATES = ("/usr/bin/systemctl", "/bin/systemctl")
UNIT = "p0-ssh-agent.service"


# A status check is a finding like doctor's (one renderer for both); status never reports "skip" or items.
Check = Finding


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "status",
        parents=parents,
        help="check configuration, keys, directories and the systemd unit",
        description="Check that this host is set up to run the agent, and say how to fix what is not.",
    )
    parser.add_argument("--json", action="store_true", help="machine-readable output")
    return parser


def _mode_check(name: str, path: Path, *, max_mode: int, want_uid: int) -> Check:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return Check(name, "fail", f"{path} does not exist", f"create it: install -d -m {max_mode:o} {path}")
    except OSError as exc:
        return Check(name, "fail", f"{path}: {exc.strerror}", "")
    if stat.S_ISLNK(info.st_mode):
        return Check(name, "fail", f"{path} is a symlink", f"replace it with a real directory ({max_mode:o})")
    if not stat.S_ISDIR(info.st_mode):
        return Check(name, "fail", f"{path} is not a directory", f"remove it and run: install -d -m {max_mode:o}")
    mode = stat.S_IMODE(info.st_mode)
    if info.st_uid != want_uid:
        return Check(name, "fail", f"{path} is owned by uid {info.st_uid}", f"chown {want_uid} {path}")
    if mode & ~max_mode:
        return Check(name, "fail", f"{path} has mode {mode:o}, looser than {max_mode:o}", f"chmod {max_mode:o} {path}")
    return Check(name, "ok", f"{path} ({mode:o}, uid {info.st_uid})")


def _key_fix(key_dir: Path) -> str:
    """keygen only when there is no key: re-keying a host breaks its registration, so a fixable key is fixed."""
    private = key_dir / "jwk.private.json"
    try:
        info = private.lstat()
    except FileNotFoundError:
        return f"p0-ssh-agent keygen --key-path {key_dir}"
    except OSError:
        return "run status as root"
    if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
        return f"chmod 600 {private}"
    return f"restore the key files, or re-key (p0-ssh-agent keygen --force --key-path {key_dir}) and register again"


@dataclass
class Status:
    checks: list[Check]
    guard: GuardView | None = None  # live grants and drift; None when the configuration is unusable
    live: LiveRead | None = None  # the running agent's state; None when the configuration is unusable
    live_code: int | None = None

    @property
    def exit_code(self) -> int:
        config_failed = any(c.name == "config" and c.level == "fail" for c in self.checks)
        return overall_exit(self.live_code, self.checks, config_failed)


def collect(
    config_path: str | None,
    env: Mapping[str, str],
    *,
    run: Callable[[list[str]], tuple[int, str]] | None = None,
) -> Status:
    from p0_ssh_agent.config import load_config, require_connection_settings
    from p0_ssh_agent.identity.signing_key import load_private_key, load_public_jwk
    from p0_ssh_agent.runtime.statedir import resolve_state_dir

    checks: list[Check] = []
    try:
        config = load_config(config_path, env=env)
        require_connection_settings(config)
    except AgentError as exc:
        checks.append(Check("config", "fail", str(exc), "fix the file, or run 'p0-ssh-agent register'"))
        return Status(checks)
    source = str(config.source) if config.source else "defaults, environment and flags (no file)"
    checks.append(Check("config", "ok", f"{source}: client id {config.client_id}, tunnel {config.tunnel_host}"))
    runtime_dir = resolve_runtime_dir(config.runtime_dir)
    live = read_live_state(runtime_dir)
    live_checks, live_code = agent_checks(live, runtime_dir)
    checks.extend(live_checks)
    if config.dry_run:
        checks.append(Check("dry-run", "warn", "dryRun is on: requests are planned, nothing changes on the host"))

    uid = os.geteuid()
    if config.source is not None:
        checks.append(_mode_check("config directory", config.source.parent, max_mode=0o755, want_uid=uid))
    checks.append(_mode_check("key directory", config.key_path, max_mode=0o700, want_uid=uid))
    try:
        key = load_private_key(config.key_path)
        public = load_public_jwk(config.key_path)
    except AgentError as exc:
        checks.append(Check("keys", "fail", str(exc), _key_fix(config.key_path)))
    except OSError as exc:  # not root: the key directory is 0700 (status must report this, not crash)
        checks.append(Check("keys", "fail", f"{config.key_path}: {exc.strerror}", "run status as root"))
    else:
        if {k: public.get(k) for k in ("x", "y")} != {k: key.public_jwk.get(k) for k in ("x", "y")}:
            checks.append(
                Check(
                    "keys",
                    "fail",
                    "jwk.public.json does not belong to jwk.private.json",
                    "re-run 'p0-ssh-agent keygen --force' and register again",
                )
            )
        else:
            checks.append(Check("keys", "ok", f"ES384 P-384 key, thumbprint {key.thumbprint}"))

    state_dir = resolve_state_dir(config.state_dir, env)
    if os.path.lexists(state_dir) or not os.access(state_dir.parent, os.X_OK):  # unsearchable: let lstat say why
        checks.append(_mode_check("state directory", state_dir, max_mode=0o700, want_uid=uid))
    else:
        checks.append(Check("state directory", "warn", f"{state_dir} does not exist yet; the agent creates it"))
    guard_checks, guard = gather_guard(config, state_dir)
    checks.extend(guard_checks)
    checks.extend(_systemd_checks(run or _run))
    return Status(checks, guard, live, live_code)


# --- guardrails: live grants, expiry, drift (issue 6) ----------------------------------------------------------


@dataclass
class GuardView:
    now: datetime
    grants: list[LiveGrant]
    drift: list[Drift]


def gather_guard(config: AgentConfig, state_dir: Path) -> tuple[list[Check], GuardView | None]:
    """Live grants from the ledger and a read-only reconciliation (no repair, no lock, nothing logged)."""
    from p0_ssh_agent.host.ledger import load_ledger
    from p0_ssh_agent.provisioning.expiry import live_grants
    from p0_ssh_agent.provisioning.reconcile import inspect_drift

    now = datetime.now(UTC)
    limit = config.max_grant_seconds
    expiry = f"maxGrantSeconds {limit}" if limit else "no maxGrantSeconds: grants last until the backend revokes them"
    offline = config.offline_revoke_after_seconds
    checks = [
        Check("offline revoke", "ok", f"after {offline}s without the backend" if offline else "off (the default)")
    ]
    if not os.path.lexists(state_dir) and os.access(state_dir.parent, os.X_OK):
        return [Check("grants", "ok", f"none yet; {expiry}"), *checks], GuardView(now, [], [])
    try:
        grants = live_grants(load_ledger(state_dir), limit)
    except OSError as exc:  # not root: the state directory is 0700
        return [Check("grants", "fail", f"{state_dir}: {exc.strerror}", "run status as root"), *checks], None
    except AgentError as exc:
        fix = "run status as root" if os.geteuid() != 0 else "restore the ledger, or move it aside (see the message)"
        return [Check("grants", "fail", str(exc), fix), *checks], None
    overdue = [g for g in grants if g.expired(now)]
    if overdue:
        detail = f"{len(overdue)} of {len(grants)} grant(s) past their expiry and not yet revoked; {expiry}"
        checks.insert(0, Check("grants", "warn", detail, f"is the agent running? systemctl status {UNIT}"))
    else:
        checks.insert(0, Check("grants", "ok", f"{len(grants)} live grant(s); {expiry}"))
    drift = inspect_drift(config, state_dir)
    if drift:
        checks.append(
            Check(
                "drift",
                "warn",
                f"{len(drift)} difference(s) between the ledger and the host (listed below)",
                "set 'reconcile: repair' to let the agent fix what it owns, or fix the files by hand",
            )
        )
    else:
        checks.append(Check("drift", "ok", f"ledger and host agree (reconcile: {config.reconcile})"))
    return checks, GuardView(now, grants, drift)


def _duration(seconds: float) -> str:
    seconds = int(abs(seconds))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s"


def _stamp(when: datetime) -> str:
    return when.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _expires(grant: LiveGrant, now: datetime) -> str:
    if grant.expires_at is None:
        return "never (backend revokes)"
    left = (grant.expires_at - now).total_seconds()
    when = _stamp(grant.expires_at)
    return f"{when} (in {_duration(left)})" if left > 0 else f"{when} (overdue {_duration(left)})"


def render_guard(view: GuardView) -> str:
    lines = [f"live grants ({len(view.grants)}):"]
    rows = [
        (g.kind, g.user, g.request_id, _duration(g.age(view.now).total_seconds()), _expires(g, view.now), g.detail)
        for g in view.grants
    ]
    if rows:
        header = ("KIND", "USER", "REQUEST", "AGE", "EXPIRES", "DETAIL")
        widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header) - 1)]
        for row in [header, *rows]:
            lines.append("  " + "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    lines.append(f"drift ({len(view.drift)}):")
    for d in view.drift:
        where = " ".join(part for part in (d.user, d.request_id) if part)
        lines.append(f"  {d.kind:<13} {where}  {d.path}: {d.detail}")
    return "\n".join(lines)


def guard_json(view: GuardView) -> dict[str, Any]:
    return {
        "grants": [
            {
                "kind": g.kind,
                "user": g.user,
                "request_id": g.request_id,
                "granted_at": _stamp(g.granted_at),
                "age_seconds": int(g.age(view.now).total_seconds()),
                "expires_at": _stamp(g.expires_at) if g.expires_at else None,
                "expires_in_seconds": int((g.expires_at - view.now).total_seconds()) if g.expires_at else None,
                "detail": g.detail,
            }
            for g in view.grants
        ],
        "drift": [asdict(d) for d in view.drift],
    }


def _run(argv: list[str]) -> tuple[int, str]:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return 127, str(exc)
    return done.returncode, done.stdout.strip()


def _systemd_checks(run: Callable[[list[str]], tuple[int, str]]) -> list[Check]:
    if not Path("/run/systemd/system").is_dir():
        return [Check("systemd", "warn", "systemd is not running here; unit checks skipped")]
    systemctl = next((p for p in SYSTEMCTL_CANDIDATES if Path(p).exists()), None)
    if systemctl is None:
        return [Check("systemd", "warn", "systemctl not found; unit checks skipped")]
    checks: list[Check] = []
    code, enabled = run([systemctl, "is-enabled", UNIT])
    if code == 0:
        checks.append(Check("unit enabled", "ok", enabled))
    else:
        checks.append(Check("unit enabled", "fail", enabled or "not enabled", f"systemctl enable --now {UNIT}"))
    code, active = run([systemctl, "is-active", UNIT])
    _, status_text = run([systemctl, "show", "--property=StatusText", "--value", UNIT])
    detail = f"{active}: {status_text}" if status_text else active
    if code == 0:
        checks.append(Check("unit active", "ok", detail))
    else:
        checks.append(Check("unit active", "fail", detail, f"journalctl -u {UNIT} -e  (then systemctl start)"))
    return checks


def render_text(checks: list[Check]) -> str:
    return render(checks, all_clear="all checks passed")


def run(args: argparse.Namespace) -> int:
    status = collect(args.config, os.environ)
    checks = status.checks
    code = status.exit_code
    if args.json:
        document: dict[str, Any] = {
            "ok": code == 0,
            "exit_code": code,
            "state": state_word(code, status.live),
            "checks": [asdict(c) for c in checks],
            "agent": live_json(status.live),
        }
        if status.guard is not None:
            document.update(guard_json(status.guard))
        print(json.dumps(document, indent=2))
    else:
        print(render_text(checks))
        if status.guard is not None:
            print("\n" + render_guard(status.guard))
    return code
