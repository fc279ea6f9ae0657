"""Baselines for the grant scenario, run inside the namespace sandbox: the bare system tools, and the Go agent's
method for the same change.

Bare tools: what any implementation must at least pay. `useradd -m` (alone, and the groupadd + useradd pair the
agent runs), `visudo -cf` of a written file then its rename, and an fsynced write + rename of authorized_keys.

The Go agent's method is upstream-protocol.md §6.1 as it runs there: one `sudo` process per step (exec.Command
("sudo", ...), so sudo finds the tool on its secure_path), in this order:
  grant  sudo mkdir -p DIR; [sudo touch FILE; sudo chmod MODE FILE when new]; sudo grep -qF MARKER FILE;
         sudo grep -qF CONTENT FILE; sudo tee -a FILE (stdin "MARKER\\nCONTENT\\n"); sudo chown -R U:U DIR
         (authorized_keys), or then sudo grep -qF '#include sudoers-p0' /etc/sudoers and sudo tee -a (sudo)
  revoke sudo sed -i '/^MARKER$/,/^$/d' FILE
  user   sudo groupadd -g UID NAME; sudo useradd -m -u UID -g UID NAME -s /bin/bash
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

SUDO = "/usr/bin/sudo"
USERADD = "/usr/sbin/useradd"
GROUPADD = "/usr/sbin/groupadd"
USERDEL = "/usr/sbin/userdel"
VISUDO = "/usr/sbin/visudo"
SUDOERS = "/etc/sudoers"
LEGACY_SUDOERS = "/etc/sudoers-p0"
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root"}


def _run(argv: list[str], *, stdin: bytes | None = None, check: bool = True) -> int:
    done = subprocess.run(argv, input=stdin, capture_output=True, env=CHILD_ENV, check=False, timeout=60)
    if check and done.returncode != 0:
        raise RuntimeError(f"{argv} exited {done.returncode}: {done.stderr.decode(errors='replace').strip()}")
    return done.returncode


# --- bare tools -----------------------------------------------------------------------------------------------


def bare_useradd(name: str) -> None:
    """One useradd that makes the user, its group (-U) and its home: the least an account costs."""
    _run([USERADD, "-m", "-U", "-s", "/bin/bash", "-p", "*", name])


def bare_groupadd_useradd(name: str, uid: int) -> None:
    """The two tools the agent runs, with nothing around them."""
    _run([GROUPADD, "-g", str(uid), name])
    _run([USERADD, "-m", "-u", str(uid), "-g", str(uid), "-s", "/bin/bash", "-p", "*", name])


def userdel(name: str) -> None:
    _run([USERDEL, "-r", name], check=False)


def fsynced_replace(directory: Path, name: str, data: bytes) -> None:
    """Write a temporary file, fsync it, rename it over `name`, fsync the directory."""
    temporary = directory / f".{name}.bench-tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    temporary.replace(directory / name)
    directory_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(directory_fd)
    finally:
        os.close(directory_fd)


def bare_visudo_write(text: str, *, directory: Path = Path("/etc/sudoers.d"), name: str = "p0-bench") -> None:
    """Write the drop-in to a temporary file (sudo skips names with a dot), `visudo -cf` it, rename it in place."""
    temporary = directory / ".p0-bench.tmp"
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o440)
    try:
        os.write(fd, text.encode())
        os.fsync(fd)
    finally:
        os.close(fd)
    _run([VISUDO, "-cf", str(temporary)])
    temporary.replace(directory / name)


# --- the Go agent's method ------------------------------------------------------------------------------------


def go_ensure_content(content: str, request_id: str, path: str, mode: str, owner: str) -> None:
    """ensureContentInFile (§6.1), step by step."""
    directory = str(Path(path).parent)
    _run([SUDO, "mkdir", "-p", directory])
    if not Path(path).exists():
        _run([SUDO, "touch", path])
        _run([SUDO, "chmod", mode, path])
    marker = f"# RequestID: {request_id}"
    comment_exists = _run([SUDO, "grep", "-qF", marker, path], check=False) == 0
    content_exists = _run([SUDO, "grep", "-qF", content, path], check=False) == 0
    if comment_exists and content_exists:
        return
    _run([SUDO, "tee", "-a", path], stdin=f"{marker}\n{content}\n".encode())
    if owner and owner != "root":
        _run([SUDO, "chown", "-R", f"{owner}:{owner}", directory], check=False)


def go_remove_content(request_id: str, path: str) -> None:
    """removeContentFromFile (§6.1): sed from the marker line through the next empty line."""
    if not Path(path).exists():
        return
    marker = quote_meta(f"# RequestID: {request_id}")
    _run([SUDO, "sed", "-i", f"/^{marker}$/,/^$/d", path])


def quote_meta(text: str) -> str:
    """Go's regexp.QuoteMeta: a backslash before each of \\.+*?()|[]{}^$ (and nothing else)."""
    return re.sub(r"([\\.+*?()|\[\]{}^$])", r"\\\1", text)


def go_key_grant(user: str, home: str, request_id: str, key_line: str) -> None:
    go_ensure_content(key_line, request_id, f"{home}/.ssh/authorized_keys", "600", user)


def go_key_revoke(home: str, request_id: str) -> None:
    go_remove_content(request_id, f"{home}/.ssh/authorized_keys")


def go_sudo_grant(user: str, request_id: str) -> None:
    go_ensure_content(f"{user} ALL=(ALL) NOPASSWD: ALL", request_id, LEGACY_SUDOERS, "440", "root")
    include = "#include sudoers-p0"
    if _run([SUDO, "grep", "-qF", include, SUDOERS], check=False) != 0:
        _run([SUDO, "tee", "-a", SUDOERS], stdin=f"{include}\n".encode())


def go_sudo_revoke(request_id: str) -> None:
    go_remove_content(request_id, LEGACY_SUDOERS)


def go_useradd(name: str, uid: int) -> None:
    _run([SUDO, "groupadd", "-g", str(uid), name])
    _run([SUDO, "useradd", "-m", "-u", str(uid), "-g", str(uid), name, "-s", "/bin/bash"])
