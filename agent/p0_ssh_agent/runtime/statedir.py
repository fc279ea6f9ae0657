"""Where the agent keeps its state (the ledger): `$STATE_DIRECTORY`, else `stateDir`, else /var/lib/p0-ssh-agent."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from pathlib import Path

from p0_ssh_agent.errors import ConfigError, PermissionProblem

DEFAULT_STATE_DIR = Path("/var/lib/p0-ssh-agent")


def resolve_state_dir(config_state_dir: Path | None, env: Mapping[str, str]) -> Path:
    # systemd sets STATE_DIRECTORY from StateDirectory=; with several directories it is a colon-separated list
    # and ours is the first (systemd.exec(5)).
    from_systemd = env.get("STATE_DIRECTORY", "").split(":")[0]
    if from_systemd:
        return Path(from_systemd)
    return config_state_dir or DEFAULT_STATE_DIR


def ensure_state_dir(path: Path) -> Path:
    """Create the directory 0700 if missing (0711 is kept: the key store); refuse a symlink, a non-directory or one
    owned by someone else."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        info = path.lstat()
    except PermissionError as exc:
        raise PermissionProblem(f"cannot create state directory {path}: {exc.strerror}; run as root") from None
    except OSError as exc:
        raise ConfigError(f"cannot create state directory {path}: {exc.strerror}; set stateDir") from None
    if not stat.S_ISDIR(info.st_mode):
        raise ConfigError(f"state directory {path} is not a directory (a symlink?); remove it or set stateDir")
    if info.st_uid != os.geteuid():
        raise PermissionProblem(
            f"state directory {path} is owned by uid {info.st_uid}, not by the agent (uid {os.geteuid()}); "
            f"fix with: chown {os.geteuid()} {path}"
        )
    if stat.S_IMODE(info.st_mode) & 0o066:
        # Created earlier with a looser umask: the ledger names users and request ids, keep it private. 0711 (the
        # unit's StateDirectoryMode) stays: sshd, acting as a user, must traverse it to the key store, and nobody
        # but root can list it.
        path.chmod(0o700)
    return path
