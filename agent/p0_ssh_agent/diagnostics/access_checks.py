"""doctor's agent-access section (issue 17): will an `ssh_*` request work on this host, and if not, why?

    off   one ok line: nothing of the feature is loaded, every ssh_* request is answered 403
    on    each account in agentAccessUsers, judged by eligibility.refusal_for as a request would be (missing,
          root, a system account, locked, root-equivalent: a warning with the fix); the agent-access policy (does
          it compile, does it permit anything at all); the trust file (does it load, how many issuers and
          approvers: none means every UCAN is refused); the confinement agentAccessConfinement resolves to and
          whether its tools are there (systemd-run; for namespace mode, that a PID namespace can be unshared);
          the replay cache (readable, not unusable)

Read-only like the rest of doctor: the replay cache is opened read-only (never rewritten), the namespace probe is a
child process that unshares and exits. agent_access is imported only when agentAccess is on (the idle footprint):
`load_access_files` is what `policy check` shares, and imports it only when called.
"""

from __future__ import annotations

import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc

if TYPE_CHECKING:
    from p0_ssh_agent.agent_access.access_model import TargetAccount
    from p0_ssh_agent.agent_access.access_policy import PolicyShape

STARTERS = "/usr/share/doc/p0-ssh-agent/policies/agent-access/"
RELOAD = "systemctl reload p0-ssh-agent"
PROBE_SECONDS = 10.0
# Run in a child (`python -I -c`): unshare(CLONE_NEWPID) as the worker does in namespace mode, then the fork that
# makes the namespace's first process, which must be its PID 1. Exit 0, or a message on stderr.
UNSHARE_PROBE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x20000000) != 0:
    sys.exit("unshare(CLONE_NEWPID): " + os.strerror(ctypes.get_errno()))
pid = os.fork()
if pid == 0:
    os._exit(0 if os.getpid() == 1 else 3)
_, status = os.waitpid(pid, 0)
sys.exit(0 if os.waitstatus_to_exitcode(status) == 0 else "the new namespace's first process was not its PID 1")
"""


def check_agent_access(config: AgentConfig, state_dir: Path) -> list[Finding]:
    if not config.agent_access:
        return [
            Finding(
                "agent access",
                "ok",
                "off (agentAccess: false): every ssh_* request is answered 403, nothing of the feature is loaded",
            )
        ]
    users = ", ".join(config.agent_access_users) or "no account"
    found = [Finding("agent access", "ok", f"on (agentAccess: true) for {users}")]
    found += check_access_accounts(config.agent_access_users)
    found.append(check_access_policy(config.agent_access_policy_file))
    found.append(check_trust_file(config.agent_access_keys_file))
    found.append(check_confinement(config.agent_access_confinement))
    found.append(check_replay_cache(state_dir))
    return found


# --- the accounts ------------------------------------------------------------------------------------------------


def check_access_accounts(listed: tuple[str, ...]) -> list[Finding]:
    """Each listed account as a request for it would be judged (eligibility.py: read_account, refusal_for)."""
    from p0_ssh_agent.agent_access.eligibility import read_account, refusal_for

    if not listed:
        return [
            Finding(
                "access accounts",
                "warn",
                "agentAccessUsers is empty: every ssh_* request is refused (disabled)",
                "list the accounts operations may run as, e.g. `agentAccessUsers: [deploy]`, then " + RELOAD,
            )
        ]
    found = []
    for name in listed:
        account = read_account(name)
        refusal = refusal_for(account, name=name, listed=listed)
        label = f"access account {name}"
        if refusal is None and account is not None:
            groups = ", ".join(account.groups)
            found.append(Finding(label, "ok", f"UID {account.uid}, groups {groups}: operations may run as it"))
        elif refusal is not None:
            found.append(
                Finding(label, "warn", f"{refusal.message}; every request for it is refused", _fix(name, account))
            )
    return found


def _fix(name: str, account: TargetAccount | None) -> str:
    """What to do about a listed account refusal_for refuses, in refusal_for's order."""
    from p0_ssh_agent.agent_access.eligibility import NOLOGIN_SHELLS, ROOT_EQUIVALENT_GROUPS

    remove = f"remove {name} from agentAccessUsers"
    if account is None:
        return f"create it (useradd -m {name}), or {remove}"
    if account.uid == 0 or name == "root" or account.system:
        return f"{remove}, and list a regular account instead (useradd -m NAME)"
    if account.locked:
        if account.shell.rsplit("/", 1)[-1] in NOLOGIN_SHELLS:
            return f"give it a login shell (usermod -s /bin/bash {name}), or {remove}"
        return f"clear its expiry (usermod --expiredate '' {name}), or {remove}"
    equivalent = sorted(set(account.groups) & ROOT_EQUIVALENT_GROUPS.keys())
    primary = account.groups[0] if account.groups else ""
    steps = [f"gpasswd -d {name} {group}" for group in equivalent if group != primary]
    if primary in equivalent:
        steps.insert(0, f"usermod -g {name} {name} (its primary group is {primary})")
    return f"take it out of {', '.join(equivalent)} ({'; '.join(steps)}), or {remove}"


# --- the policy and the trust file (policy check shares these) ---------------------------------------------------


@dataclass(frozen=True)
class AccessFiles:
    policy_source: str  # the file, or the built-in deny-all
    shape: PolicyShape
    keys_file: Path
    issuers: int
    approvers: int
    keys_file_exists: bool


def load_access_policy_shape(path: Path) -> tuple[str, PolicyShape]:
    """(source, shape) of the agent-access policy at `path`; AgentError (PolicyError naming file:line)."""
    from p0_ssh_agent.agent_access.access_policy import load_access_policy, policy_shape

    policy = load_access_policy(path)
    return policy.source, policy_shape(policy)


def load_trust_counts(path: Path) -> tuple[int, int]:
    """(issuers, approvers) in the trust file at `path`; AgentError (TrustKeysError naming file:line)."""
    from p0_ssh_agent.agent_access.trust_keys import load_trust_keys

    keys = load_trust_keys(path)
    return len(keys.issuers), len(keys.approvers)


def load_access_files(policy_path: Path, keys_path: Path) -> AccessFiles:
    """Both files, loaded as the daemon loads them at start-up and on reload; the first AgentError raised."""
    source, shape = load_access_policy_shape(policy_path)
    issuers, approvers = load_trust_counts(keys_path)
    return AccessFiles(source, shape, keys_path, issuers, approvers, os.path.lexists(keys_path))


def describe_shape(source: str, shape: PolicyShape) -> str:
    if not shape.permits:
        return f"{source}: permits nothing ({shape.forbids} forbid): every ssh_* request is denied (default-deny)"
    return f"{source}: {shape.permits} permit, {shape.forbids} forbid; permits {', '.join(shape.permitted)}"


def describe_trust(path: Path, issuers: int, approvers: int, *, exists: bool) -> str:
    if not issuers:
        return f"{path}: {'no issuers' if exists else 'no file'}: every UCAN will be refused"
    text = f"{path}: {issuers} issuer(s), {approvers} approver(s)"
    return text + ("; no approvers: ssh_exec and every step-up are refused" if not approvers else "")


def check_access_policy(path: Path) -> Finding:
    try:
        source, shape = load_access_policy_shape(path)
    except AgentError as exc:
        return Finding("access policy", "fail", str(exc), f"fix the policy where the message says, then {RELOAD}")
    if not shape.permits:
        fix = f"write the permits this host needs: the starters are in {STARTERS} (docs/ai-agents-policy.md)"
        return Finding("access policy", "warn", describe_shape(source, shape), fix)
    return Finding("access policy", "ok", describe_shape(source, shape))


def check_trust_file(path: Path) -> Finding:
    try:
        issuers, approvers = load_trust_counts(path)
    except AgentError as exc:
        return Finding("access trust", "fail", str(exc), f"fix the entry the message names, then {RELOAD}")
    detail = describe_trust(path, issuers, approvers, exists=os.path.lexists(path))
    if not issuers:
        fix = f"list the UCAN issuers this host trusts in {path}, root's and 0644 (docs/ai-agents.md), then {RELOAD}"
        return Finding("access trust", "warn", detail, fix)
    return Finding("access trust", "ok", detail)


# --- confinement and the replay cache ----------------------------------------------------------------------------


def check_confinement(setting: str) -> Finding:
    """The mode the root daemon would pick (confine.choose_mode) and whether what it runs with is there."""
    from p0_ssh_agent.agent_access.confine import SYSTEMD_RUN, SYSTEMD_RUNTIME_DIR, choose_mode

    mode = choose_mode(setting, as_root=True)
    said = f"{setting} resolves to {mode}" if setting == "auto" else f"{mode} (agentAccessConfinement)"
    name = "access confinement"
    if mode == "systemd":
        if proc.which("systemd-run", (SYSTEMD_RUN,)) is None:
            fix = "install systemd-run (the systemd package), or set `agentAccessConfinement: namespace`"
            return Finding(name, "fail", f"{said}, but {SYSTEMD_RUN} is missing: every operation fails", fix)
        if not SYSTEMD_RUNTIME_DIR.is_dir():
            fix = "set `agentAccessConfinement: auto` (namespace mode where systemd is not PID 1)"
            return Finding(name, "fail", f"{said}, but systemd is not running this host", fix)
        return Finding(name, "ok", f"{said}: a transient unit per operation through {SYSTEMD_RUN}")
    if SYSTEMD_RUNTIME_DIR.is_dir():
        # doctor runs outside the unit, so its probe would pass where the daemon's every operation fails.
        return Finding(
            name, "warn", f"{said} on a host that systemd runs: under the packaged unit (RestrictNamespaces=yes, "
            "no CAP_SYS_ADMIN) the worker cannot unshare its PID namespace, so every operation fails; a probe from "
            "here, outside the unit, would not show it",
            "install systemd-run (the systemd package): auto then picks a transient systemd unit here"
            if setting == "auto"
            else "set `agentAccessConfinement: auto` (it picks a transient systemd unit here), then "
            "`systemctl reload p0-ssh-agent`",
        )  # fmt: skip
    if os.geteuid() != 0:
        return Finding(
            name, "skip", f"{said}: whether the agent (root) can unshare a PID namespace is not known as uid "
            f"{os.geteuid()}", "run doctor as root",
        )  # fmt: skip
    problem = unshare_problem()
    if problem:
        fix = (
            "let the agent unshare a PID namespace (a container needs CAP_SYS_ADMIN and a seccomp profile that "
            "allows unshare), or run it where systemd is PID 1 (`agentAccessConfinement: systemd`)"
        )
        return Finding(name, "fail", f"{said}, but {problem}: every operation fails", fix)
    weaker = "weaker than systemd mode: exec is not confined to the prefix (docs/ai-agents-confinement.md)"
    return Finding(name, "ok", f"{said}: a PID namespace per operation can be made; {weaker}")


def unshare_problem() -> str:
    """ "" when a child can unshare a PID namespace and start its PID 1, else why not."""
    try:
        done = proc.run([sys.executable, "-I", "-c", UNSHARE_PROBE], timeout=PROBE_SECONDS, check=False)
    except AgentError as exc:
        return str(exc)
    if done.returncode == 0:
        return ""
    said = " / ".join(line.strip() for line in done.stderr.splitlines() if line.strip())[-300:]
    return said or f"the probe exited {done.returncode}"


def check_replay_cache(state_dir: Path) -> Finding:
    """The used cosignatures, read as the daemon reads them at start-up (read-only: never rewritten here)."""
    from p0_ssh_agent.agent_access.line import REPLAY_FILE
    from p0_ssh_agent.agent_access.replay_cache import ReplayCache

    path = state_dir / REPLAY_FILE
    name = "access replay cache"
    searchable = not os.path.lexists(state_dir) or os.access(state_dir, os.X_OK)  # else let the read say why
    if searchable and not os.path.lexists(path):
        return Finding(name, "ok", f"{path}: none yet (no cosignature used); the agent creates it")
    cache = ReplayCache(path, read_only=True)
    if cache.error:
        if os.geteuid() != 0:
            return Finding(name, "warn", cache.error, "run doctor as root")
        fix = f"remove {path} (a cosignature lives minutes: forgetting them costs at most that), then {RELOAD}"
        return Finding(name, "warn", f"{cache.error}: every step-up fails until it is fixed", fix)
    return Finding(name, "ok", f"{path}: {cache.live_entries(int(time.time()))} cosignature(s) remembered")
