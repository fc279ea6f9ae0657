"""sshd, as `p0-ssh-agent key-store` drives it: the drop-in, `sshd -t`, `sshd -T`, the reload, SELinux labels.

Run as root from a shell, never by the daemon: under the unit /etc/ssh is read-only (ProtectSystem=strict), so the
drop-in is written here and a read-only /etc/ssh is reported as "run it from a root shell" (ConfigReadOnly), never
as a bare EROFS. Every tool runs through host/proc.py (absolute path, no shell, a deadline).

Reloading sshd: with systemd as PID 1, `systemctl reload` of whichever of ssh.service (Debian) and sshd.service
(RHEL) is active; otherwise SIGHUP to the pid in sshd's PidFile (as `sshd -T` prints it), after checking that the
pid is an sshd: a stale pid file must not make root signal some other process.
"""

from __future__ import annotations

import errno
import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.core.sshd_key_store import SSHD_DROPIN_DIR, SSHD_DROPIN_PATH
from p0_ssh_agent.errors import AgentError, PermissionProblem
from p0_ssh_agent.host import proc
from p0_ssh_agent.host.openssh import SSHD_CANDIDATES
from p0_ssh_agent.host.rootfile import read_root_file, remove_root_file, write_root_file
from p0_ssh_agent.host.safefile import FileEdit, FileEditFailed
from p0_ssh_agent.host.selinux import RESTORECON_CANDIDATES
from p0_ssh_agent.host.sessions import SYSTEMCTL_CANDIDATES, SYSTEMD_RUNTIME_DIR

SEMANAGE_CANDIDATES = ("/usr/sbin/semanage", "/sbin/semanage")
SSHD_UNITS = ("ssh.service", "sshd.service")
AGENT_UNIT = "p0-ssh-agent.service"
DROPIN_MODE = 0o644
TOOL_TIMEOUT = 60.0
RELOAD_WAIT_SECONDS = 10.0  # how long a SIGHUP-ed sshd gets to re-execute itself and rewrite its pid file
OUTSIDE_UNIT = "run `p0-ssh-agent key-store` from a root shell, not from the p0-ssh-agent unit"


class ConfigReadOnly(PermissionProblem):
    """/etc/ssh cannot be written here (read-only under the unit, or not root)."""


def sshd_binary() -> str:
    path = proc.which("sshd", SSHD_CANDIDATES)
    if path is None:
        raise AgentError(f"sshd was not found in {', '.join(SSHD_CANDIDATES)}: is openssh-server installed?")
    return path


def systemd_is_pid1() -> bool:
    return SYSTEMD_RUNTIME_DIR.is_dir()


# --- sshd's own view ---------------------------------------------------------------------------------------------


def check_config() -> str | None:
    """`sshd -t`: None when sshd accepts its whole configuration (drop-ins included), else what it said."""
    result = proc.run([sshd_binary(), "-t"], timeout=TOOL_TIMEOUT, check=False)
    if result.returncode == 0:
        return None
    return (result.stderr or result.stdout).strip() or f"sshd -t exited {result.returncode}"


def parse_sshd_t(text: str) -> dict[str, list[str]]:
    """`sshd -T` output as {keyword: [value, ...]}: one "keyword value" per line, keywords in lower case.

    A list because some keywords appear once per value (hostkey, listenaddress, subsystem ...).
    """
    settings: dict[str, list[str]] = {}
    for line in text.splitlines():
        keyword, _, value = line.strip().partition(" ")
        if keyword:
            settings.setdefault(keyword.lower(), []).append(value.strip())
    return settings


def effective_config(user: str | None = None) -> dict[str, list[str]]:
    """`sshd -T` (with `-C user=<user>,host=localhost,addr=127.0.0.1`: as a login of `user` from here would see
    it), parsed by parse_sshd_t."""
    argv = [sshd_binary(), "-T"]
    if user is not None:
        argv += ["-C", f"user={user},host=localhost,addr=127.0.0.1"]
    result = proc.run(argv, timeout=TOOL_TIMEOUT, check=False)
    if result.returncode != 0:
        raise AgentError(f"sshd -T failed: {(result.stderr or result.stdout).strip()[:500]}")
    return parse_sshd_t(result.stdout)


# --- the drop-in -------------------------------------------------------------------------------------------------


def _writable_here(directory: str) -> None:
    if os.geteuid() != 0:
        raise ConfigReadOnly(f"{directory}: only root can change sshd's configuration; {OUTSIDE_UNIT}")
    try:
        read_only = bool(os.statvfs(directory).f_flag & os.ST_RDONLY)
    except FileNotFoundError:
        missing = f"{directory} does not exist: this sshd reads no drop-ins (create it and Include it)"
        raise AgentError(missing) from None
    if read_only:
        raise ConfigReadOnly(f"{directory} is read-only here (under the p0-ssh-agent unit?); {OUTSIDE_UNIT}")


def installed_dropin() -> bytes | None:
    return read_root_file(SSHD_DROPIN_PATH)


def install_dropin(text: str) -> FileEdit:
    """Write the drop-in atomically (root:root 0644). A read-only /etc/ssh is ConfigReadOnly."""
    _writable_here(SSHD_DROPIN_DIR)
    try:
        return write_root_file(SSHD_DROPIN_PATH, text.encode("utf-8"), mode=DROPIN_MODE)
    except (FileEditFailed, OSError) as exc:
        _read_only_failure(exc)
        raise


def remove_dropin() -> FileEdit:
    """Remove the drop-in; a missing one is no change. A read-only /etc/ssh is ConfigReadOnly."""
    if not Path(SSHD_DROPIN_PATH).exists():
        return FileEdit(SSHD_DROPIN_PATH, None, None, changed=False)
    _writable_here(SSHD_DROPIN_DIR)
    try:
        return remove_root_file(SSHD_DROPIN_PATH)
    except (FileEditFailed, OSError) as exc:
        _read_only_failure(exc)
        raise


def _read_only_failure(exc: Exception) -> None:
    text = str(exc)
    denied = isinstance(exc, OSError) and exc.errno in (errno.EROFS, errno.EACCES, errno.EPERM)
    if denied or any(words in text for words in ("Read-only file system", "Permission denied")):
        raise ConfigReadOnly(f"{SSHD_DROPIN_DIR}: {text}; {OUTSIDE_UNIT}") from None


# --- reload ------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Reloaded:
    how: str  # what was done, for the operator


def reload_sshd() -> Reloaded:
    """Make the running sshd read its configuration again (see the module docstring). An sshd that is not running
    is no failure: it reads the new configuration when it starts."""
    systemctl = proc.which("systemctl", SYSTEMCTL_CANDIDATES)
    if systemd_is_pid1() and systemctl is not None:
        for unit in SSHD_UNITS:
            if proc.run([systemctl, "is-active", "--quiet", unit], timeout=TOOL_TIMEOUT, check=False).returncode == 0:
                proc.run([systemctl, "reload", unit], timeout=TOOL_TIMEOUT)
                return Reloaded(f"systemctl reload {unit}")
    pid_file = effective_config().get("pidfile", [""])[0]
    pid = _sshd_pid(pid_file)
    if pid is None:
        return Reloaded(f"no running sshd found (pid file {pid_file or 'none'}): it reads the drop-in when it starts")
    before = _mtime(pid_file)
    os.kill(pid, signal.SIGHUP)
    deadline = time.monotonic() + RELOAD_WAIT_SECONDS
    while time.monotonic() < deadline and _mtime(pid_file) == before:  # re-executed: it writes its pid file again
        time.sleep(0.05)
    return Reloaded(f"SIGHUP to sshd (pid {pid}, from {pid_file})")


def _mtime(path: str) -> int | None:
    try:
        return Path(path).stat().st_mtime_ns
    except OSError:
        return None


def _sshd_pid(pid_file: str) -> int | None:
    """The pid in sshd's pid file if that process runs the sshd binary; None otherwise."""
    if not pid_file.startswith("/"):
        return None
    try:
        pid = int(Path(pid_file).read_text(encoding="ascii").strip())
        running_sshd = pid > 1 and Path(f"/proc/{pid}/exe").samefile(sshd_binary())
    except (OSError, ValueError):
        return None
    if not running_sshd:
        return None
    return pid


def try_restart_agent() -> str:
    """Restart the agent's unit if it runs (it reads keyStore at start and moves what a change left behind)."""
    systemctl = proc.which("systemctl", SYSTEMCTL_CANDIDATES)
    if not systemd_is_pid1() or systemctl is None:
        return "systemd is not PID 1: restart a running p0-ssh-agent yourself so that it reads keyStore"
    proc.run([systemctl, "try-restart", AGENT_UNIT], timeout=TOOL_TIMEOUT)
    return f"systemctl try-restart {AGENT_UNIT}"


# --- SELinux -------------------------------------------------------------------------------------------------------


def label_key_dir(key_dir: str) -> list[str]:
    """On an SELinux host, give the store sshd's ssh_home_t (a persistent rule when semanage exists) and apply it;
    what was done, or why not, for the operator."""
    notes: list[str] = []
    semanage = proc.which("semanage", SEMANAGE_CANDIDATES)
    if semanage is None:
        notes.append(
            "semanage is not installed (policycoreutils-python-utils): no persistent file context for "
            f"{key_dir}; a relabel may make it unreadable to sshd"
        )
    else:
        rule = f"{key_dir.rstrip('/')}(/.*)?"
        added = proc.run([semanage, "fcontext", "-a", "-t", "ssh_home_t", rule], timeout=TOOL_TIMEOUT, check=False)
        if added.returncode != 0 and "already defined" not in added.stderr:
            raise AgentError(f"semanage fcontext failed: {added.stderr.strip()[:500]}")
        notes.append(f"semanage fcontext -a -t ssh_home_t '{rule}'")
    restorecon = proc.which("restorecon", RESTORECON_CANDIDATES)
    if restorecon is None:
        notes.append("restorecon is not installed: labels not applied")
    else:
        proc.run([restorecon, "-R", key_dir], timeout=TOOL_TIMEOUT)
        notes.append(f"restorecon -R {key_dir}")
    return notes
