"""The checks of `p0-ssh-agent status` (cli/status.py parses the arguments and renders what these return): the
configuration, the running agent (diagnostics/live_checks.py, from its live state), directory and key modes, the live
grants and the drift a read-only reconciliation finds (provisioning/reconcile.py), and the systemd unit.

Read-only: it creates nothing (not even the state directory) and never returns key material, only the key's
RFC 7638 thumbprint and SSH key fingerprints. The configuration check is doctor's (diagnostics/config_checks.py):
the same question, asked once. It pulls in trio (through provisioning/): cli/status.py imports it inside run().
"""

from __future__ import annotations

import dataclasses
import os
import stat
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from p0_ssh_agent.config import AgentConfig, load_config
from p0_ssh_agent.diagnostics.config_checks import check_access_switch, check_config, check_revoke_mode
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.diagnostics.key_store_checks import check_key_store_mode
from p0_ssh_agent.diagnostics.live_checks import UNIT, agent_checks, overall_exit
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc
from p0_ssh_agent.host.ledger import load_ledger
from p0_ssh_agent.host.sessions import SYSTEMCTL_CANDIDATES
from p0_ssh_agent.identity.signing_key import load_private_key, load_public_jwk
from p0_ssh_agent.provisioning.expiry import LiveGrant, live_grants
from p0_ssh_agent.provisioning.reconcile import Drift, inspect_drift
from p0_ssh_agent.runtime.livestate import LiveRead, read_live_state, resolve_runtime_dir
from p0_ssh_agent.runtime.statedir import resolve_state_dir

SystemctlRunner = Callable[[list[str]], tuple[int, str]]

# A status check is a finding like doctor's (one renderer for both); status never reports "skip" or items.
Check = Finding


def check_mode(name: str, path: Path, *, max_mode: int, want_uid: int, fix_mode: int | None = None) -> Check:
    """`path` is a directory owned by want_uid and no looser than max_mode; the fix suggests fix_mode (max_mode)."""
    fix_mode = max_mode if fix_mode is None else fix_mode
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
        return Check(name, "fail", f"{path} has mode {mode:o}, looser than {max_mode:o}", f"chmod {fix_mode:o} {path}")
    return Check(name, "ok", f"{path} ({mode:o}, uid {info.st_uid})")


def key_fix(key_dir: Path) -> str:
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
    run: SystemctlRunner | None = None,
) -> Status:
    """Every status check, in the order they are shown; `run` answers the systemctl queries (tests pass theirs)."""
    checks: list[Check] = []
    try:
        config = load_config(config_path, env=env)
    except AgentError as exc:
        checks.append(Check("config", "fail", str(exc), "fix the file, or run 'p0-ssh-agent register'"))
        return Status(checks)
    settings = check_config(config)  # the same check doctor makes: does the file hold what `start` needs?
    if settings.level != "ok":
        return Status([settings])
    source = str(config.source) if config.source else "defaults, environment and flags (no file)"
    checks.append(dataclasses.replace(settings, detail=f"{source}: {settings.detail}"))
    runtime_dir = resolve_runtime_dir(config.runtime_dir)
    live = read_live_state(runtime_dir)
    live_checks, live_code = agent_checks(live, runtime_dir)
    checks.extend(live_checks)
    if config.dry_run:
        checks.append(Check("dry-run", "warn", "dryRun is on: requests are planned, nothing changes on the host"))
    checks.append(check_revoke_mode(config))
    checks.append(check_key_store_mode(config))
    in_force = (live.document or {}).get("agent_access") if live.running else None
    checks.append(check_access_switch(config, in_force if isinstance(in_force, bool) else None))

    uid = os.geteuid()
    if config.source is not None:
        checks.append(check_mode("config directory", config.source.parent, max_mode=0o755, want_uid=uid))
    checks.append(check_mode("key directory", config.key_path, max_mode=0o700, want_uid=uid))
    try:
        key = load_private_key(config.key_path)
        public = load_public_jwk(config.key_path)
    except AgentError as exc:
        checks.append(Check("keys", "fail", str(exc), key_fix(config.key_path)))
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
        # 0711 is the unit's StateDirectoryMode: sshd traverses it to the key store (core/sshd_key_store.py).
        fix_mode = 0o711 if config.key_store == "store" else 0o700
        checks.append(check_mode("state directory", state_dir, max_mode=0o711, want_uid=uid, fix_mode=fix_mode))
    else:
        checks.append(Check("state directory", "warn", f"{state_dir} does not exist yet; the agent creates it"))
    guard_checks, guard = gather_guard(config, state_dir)
    checks.extend(guard_checks)
    checks.extend(systemd_checks(run or run_systemctl))
    return Status(checks, guard, live, live_code)


# --- guardrails: live grants, expiry, drift (issue 6) ----------------------------------------------------------


@dataclass
class GuardView:
    now: datetime
    grants: list[LiveGrant]
    drift: list[Drift]


def gather_guard(config: AgentConfig, state_dir: Path) -> tuple[list[Check], GuardView | None]:
    """Live grants from the ledger and a read-only reconciliation (no repair, no lock, nothing logged)."""

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


# --- the systemd unit ---------------------------------------------------------------------------------------


def run_systemctl(argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout) of one systemctl query, through host/proc.py like every other program the agent runs
    (absolute path, fixed environment, a deadline); a systemctl that cannot run or hangs is 127 and why."""

    try:
        done = proc.run(argv, timeout=10, check=False)
    except AgentError as exc:  # the deadline passed
        return proc.EXIT_CANNOT_RUN, str(exc)
    if done.returncode == proc.EXIT_CANNOT_RUN and not done.stdout:
        return done.returncode, done.stderr.strip()
    return done.returncode, done.stdout.strip()


def systemd_checks(run: SystemctlRunner) -> list[Check]:
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
