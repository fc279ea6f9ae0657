"""Which key-store mode is active and whether sshd honours it (issue 14 item 6; core/sshd_key_store.py).

`status` shows check_key_store_mode only (cheap: the configuration, no sshd run). `doctor` adds check_key_store:
the drop-in (absent, installed, or different from what `p0-ssh-agent key-store store` renders), whether sshd
applies it to a member of the group (`sshd -T -C user=<member>`), the modes of the state directory and the store
(root-owned 0711: sshd opens the files as the user, nobody can list them), and the mismatches that mean a switch
was not finished: store mode without the drop-in (sshd still reads the users' own files), home mode with the
drop-in or store files left (members cannot log in with the keys in their home files). Read-only throughout.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.sshd_key_store import KEY_DIR_MODE, KEY_STORE_SUBDIR, SSHD_DROPIN_PATH, STATE_DIR_MODE
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.key_store_mode import sshd_view

NAME = "key store"
RUN_STORE = "run `p0-ssh-agent key-store store` as root (it installs the drop-in, checks it and moves the grants)"
RUN_HOME = "run `p0-ssh-agent key-store home` as root (it moves the grants home and removes the drop-in)"


def check_key_store_mode(config: AgentConfig) -> Finding:
    """The mode, said plainly (no sshd run, no file read)."""
    if config.key_store == "store":
        return Finding(
            NAME,
            "ok",
            "keyStore store: the keys of the accounts the agent created are in root-owned files sshd reads instead "
            "of their ~/.ssh/authorized_keys (`p0-ssh-agent doctor` checks that sshd honours it)",
        )
    return Finding(
        NAME,
        "ok",
        "keyStore home: keys are in each user's ~/.ssh/authorized_keys, which its user can edit "
        "(`p0-ssh-agent key-store store` moves the agent's accounts to root-owned files)",
    )


def _dir_mode(path: Path, want: int) -> Finding | None:
    try:
        info = path.lstat()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return Finding(NAME, "warn", f"{path}: {exc.strerror}", "run doctor as root")
    mode = stat.S_IMODE(info.st_mode)
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        return Finding(NAME, "fail", f"{path} is not a directory", "remove it and run `p0-ssh-agent key-store store`")
    if info.st_uid != 0 or mode & 0o022:
        return Finding(NAME, "fail", f"{path} is uid {info.st_uid}, mode {mode:o}", f"chown root {path}; chmod 711")
    if mode != want:
        return Finding(
            NAME,
            "warn",
            f"{path} has mode {mode:o}, not {want:o}: sshd, reading the store as the user, needs to traverse it",
            f"chmod {want:o} {path} (or `p0-ssh-agent key-store store`)",
        )
    return None


def check_key_store(config: AgentConfig, state_dir: Path) -> list[Finding]:
    key_dir = state_dir / KEY_STORE_SUBDIR
    engine = Engine.describing(config, state_dir, audit_trail=AuditTrail.off())
    try:
        view = sshd_view(engine)
    except (AgentError, OSError) as exc:
        return [Finding(NAME, "warn", f"cannot inspect the key store: {exc}", "run doctor as root")]
    readable = key_dir.is_dir() and os.access(key_dir, os.R_OK)
    stored = sorted(path.name for path in key_dir.iterdir() if not path.name.startswith(".")) if readable else []
    if config.key_store == "home":
        if view.dropin != "absent" or stored:
            left = f"{SSHD_DROPIN_PATH} is {view.dropin}" + (f", {len(stored)} store file(s) left" if stored else "")
            return [Finding(NAME, "warn", f"keyStore home, but {left}: a switch home was not finished", RUN_HOME)]
        return [Finding(NAME, "ok", "keyStore home; no sshd drop-in, no store files")]
    found: list[Finding] = []
    if view.dropin == "absent":
        found.append(
            Finding(
                NAME,
                "fail",
                f"keyStore store, but {SSHD_DROPIN_PATH} is missing: sshd reads the users' files",
                RUN_STORE,
            )
        )
    elif view.dropin == "different":
        found.append(Finding(NAME, "warn", f"{SSHD_DROPIN_PATH} differs from the drop-in for {key_dir}", RUN_STORE))
    if view.honoured is False:
        found.append(Finding(NAME, "fail", f"sshd does not honour the drop-in: {view.detail}", RUN_STORE))
    for path, want in ((state_dir, STATE_DIR_MODE), (key_dir, KEY_DIR_MODE)):
        problem = _dir_mode(path, want)
        if problem is not None:
            found.append(problem)
    if not found:
        honoured = "sshd honours it" if view.honoured else f"not probed: {view.detail}"
        found.append(Finding(NAME, "ok", f"keyStore store; drop-in installed; {honoured}; {key_dir} 0711, root"))
    return found
