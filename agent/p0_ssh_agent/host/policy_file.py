"""Reading the local Cedar policy from disk: the operator's file, or the built-in default shipped in the package.

The evaluation is core/local_policy.py (pure); this is its I/O. The file must be root's (or the agent's own user's,
for an unprivileged dry run), a regular file not writable by group or others, and not a symlink: whoever can write
it can grant root. It is read whole up to MAX_POLICY_BYTES or refused, never cut. read_operator_file is that rule for
any such file (agent_access/trust_keys.py reads the agent-access keys with it).
"""

from __future__ import annotations

import os
import stat
from importlib import resources
from pathlib import Path

from p0_ssh_agent.core.local_policy import BUILTIN_SOURCE, LocalPolicy, PolicyError, compile_policy
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.host.plainfile import FileTooLarge, read_at_most

MAX_POLICY_BYTES = 1 << 20


def builtin_text() -> str:
    return resources.files("p0_ssh_agent.core").joinpath("default_policy.cedar").read_text(encoding="utf-8")


def builtin_policy() -> LocalPolicy:
    return compile_policy(builtin_text(), BUILTIN_SOURCE)


def load_policy(path: Path) -> LocalPolicy:
    """The policy in `path`, or the built-in default when there is no such file. Raises PolicyError."""
    text = read_policy_text(path)
    return builtin_policy() if text is None else compile_policy(text, str(path))


def read_policy_text(path: Path) -> str | None:
    """The text of a policy file after the checks of the module docstring, or None when there is no such file (the
    caller's built-in default applies). Raises PolicyError. Also reads the agent-access policy."""
    # Refused whole above the limit, never cut: a cut policy could have lost the forbid rules at its end.
    data = read_operator_file(
        path,
        max_bytes=MAX_POLICY_BYTES,
        error=PolicyError,
        what="the policy",
        why="anyone who can write it can grant root",
    )
    if data is None:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PolicyError(f"{path}: not UTF-8 text (byte {exc.start})") from exc


def read_operator_file(path: Path, *, max_bytes: int, error: type[ConfigError], what: str, why: str) -> bytes | None:
    """The whole of a configuration file only root may write (this policy; agent_access/trust_keys.py's keys), or
    None when there is none. Not a symlink (opened O_NOFOLLOW), a regular file, root's (or the agent's own user's,
    for an unprivileged dry run), not writable by group or others; at most `max_bytes`, refused whole above that.
    `what` names the file in messages ("the policy"), `why` says what a writer could do. Raises `error`."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc} (a symlink is refused)") from exc
    try:
        # Checked on the descriptor, so what was checked is what is read.
        _check_ownership(path, os.fstat(fd), error=error, what=what, why=why)
        return read_at_most(fd, max_bytes, str(path))
    except FileTooLarge as exc:
        raise error(str(exc)) from None
    except OSError as exc:
        raise error(f"{path}: cannot read {what}: {exc.strerror or exc}") from None
    finally:
        os.close(fd)


def _check_ownership(path: Path, info: os.stat_result, *, error: type[ConfigError], what: str, why: str) -> None:
    if not stat.S_ISREG(info.st_mode):
        raise error(f"{path}: not a regular file")
    if info.st_uid not in (0, os.geteuid()):
        raise error(f"{path}: owned by UID {info.st_uid}; {what} must be root's (chown root: {path})")
    if info.st_mode & 0o022:
        raise error(
            f"{path}: writable by group or others (mode {stat.S_IMODE(info.st_mode):04o}); {why} (chmod 644 {path})"
        )
