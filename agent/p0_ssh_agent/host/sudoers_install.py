"""The sudoers files the agent writes, always checked by visudo, never left broken (upstream-protocol.md §12 item 3).

The drop-in /etc/sudoers.d/p0-ssh-agent is rewritten whole from the grants the agent holds (core/sudoers.py
renders it). A write goes through rootfile.write_root_file: the temp file `.p0-ssh-agent.tmp.<random>` has a '.',
so sudo ignores it while it exists; it is 0440 root:root, and `visudo -cf` checks it before the rename. After the
rename `visudo -c` checks the whole tree, because a file can be fine on its own and still clash with another (a
duplicate alias); if that fails, the previous file is put back (or the new one removed) and SudoersInvalid is
raised. If the tree is already broken before we touch it, nothing is written: the agent must not pile a change on
a sudo that refuses everyone, and cannot tell which file is at fault.

The Go agent's /etc/sudoers-p0 is only ever edited to remove its grants (edit_legacy_file), with the same checks.

The caller holds locks.global_lock("sudoers") around reading its grants, rendering and installing. Everything
here blocks (visudo runs as a subprocess, timeout 30 s): async callers use trio.to_thread.run_sync.

    AgentError
    ├── SudoUnavailable   no visudo; /etc/sudoers does not include /etc/sudoers.d; an unsafe drop-in directory
    └── SudoersInvalid    visudo rejected the new content or the whole tree (its message is included)
"""

from __future__ import annotations

import stat
from collections.abc import Callable
from pathlib import Path

from p0_ssh_agent.core.sudoers import DROPIN_DIR, DROPIN_NAME, LEGACY_FILE, includes_sudoers_d
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc
from p0_ssh_agent.host.rootfile import (
    preview_root_file,
    preview_root_removal,
    read_root_file,
    remove_root_file,
    write_root_file,
)
from p0_ssh_agent.host.safefile import FileEdit

VISUDO_CANDIDATES = ("/usr/sbin/visudo", "/sbin/visudo", "/usr/bin/visudo")
VISUDO_TIMEOUT = 30.0
SUDOERS = "/etc/sudoers"
SUDOERS_MODE = 0o440
_MESSAGE_LIMIT = 600


class SudoUnavailable(AgentError):
    """sudo cannot be configured safely on this host; the message says what to install or fix. A request that
    meets it is refused with 412 (the host lacks what the grant needs), not answered as an agent failure (500)."""

    http_status = 412


class SudoersInvalid(AgentError):
    """visudo rejected a sudoers file or the whole tree; nothing was left changed."""


def find_visudo() -> str:
    tool = proc.which("visudo", VISUDO_CANDIDATES)
    if tool is None:
        raise SudoUnavailable(
            f"visudo not found (looked for {', '.join(VISUDO_CANDIDATES)}); install sudo. The agent never writes a "
            "sudoers file it cannot check"
        )
    return tool


def check_sudoers_layout(sudoers: str = SUDOERS, dropin_dir: str = DROPIN_DIR) -> None:
    """Refuse unless `sudoers` includes /etc/sudoers.d and `dropin_dir` is a real, root-owned, non-writable dir."""
    try:
        text = Path(sudoers).read_text(encoding="utf-8", errors="replace")
    except OSError as exc:
        raise SudoUnavailable(f"cannot read {sudoers}: {exc.strerror}; is sudo installed?") from None
    if not includes_sudoers_d(text):
        raise SudoUnavailable(
            f"{sudoers} does not include {DROPIN_DIR}, so a drop-in there would grant nothing; add the line "
            f"'@includedir {DROPIN_DIR}' with visudo"
        )
    try:
        info = Path(dropin_dir).lstat()
    except OSError as exc:
        raise SudoUnavailable(
            f"cannot use {dropin_dir}: {exc.strerror}; is sudo installed? If it is, create the directory: "
            f"install -d -m 750 {dropin_dir}"
        ) from None
    if stat.S_ISLNK(info.st_mode):
        raise SudoUnavailable(f"refusing {dropin_dir}: it is a symlink (to {Path(dropin_dir).readlink()})")
    if not stat.S_ISDIR(info.st_mode):
        raise SudoUnavailable(f"refusing {dropin_dir}: it is not a directory")
    if info.st_uid != 0 or stat.S_IMODE(info.st_mode) & 0o022:
        raise SudoUnavailable(
            f"refusing {dropin_dir}: owned by uid {info.st_uid} with mode {stat.S_IMODE(info.st_mode):04o}; "
            "it must be root-owned and not group/world-writable"
        )


def check_sudo_installed() -> None:
    """What a sudo grant needs, checked before anything is read or written, by a real run and a dry run alike
    (issue 14 item 7): visudo, an /etc/sudoers that includes /etc/sudoers.d, and a safe /etc/sudoers.d."""
    find_visudo()
    check_sudoers_layout()


def _visudo(args: list[str], *, stdin: str | None = None) -> str | None:
    """Run visudo with `args`; None if it accepts, else its complaint (stderr and stdout, trimmed)."""
    result = proc.run([find_visudo(), *args], timeout=VISUDO_TIMEOUT, check=False, input=stdin)
    if result.returncode == 0:
        return None
    complaint = " / ".join(line.strip() for line in (result.stderr + result.stdout).splitlines() if line.strip())
    return complaint[:_MESSAGE_LIMIT] or f"visudo exited {result.returncode}"


def visudo_check_file(path: str) -> None:
    """`visudo -cf path`: SudoersInvalid with visudo's message if the file is not valid sudoers on its own."""
    problem = _visudo(["-c", "-f", path])
    if problem is not None:
        raise SudoersInvalid(f"visudo rejects {path}: {problem}")


def visudo_check_text(text: str) -> None:
    """`visudo -cf -` on text, without writing it anywhere (dry runs)."""
    problem = _visudo(["-c", "-f", "-"], stdin=text)
    if problem is not None:
        raise SudoersInvalid(f"visudo rejects the new sudoers content: {problem}")


def visudo_check_all() -> None:
    """`visudo -c`: the whole tree, /etc/sudoers and everything it includes, as sudo will read it."""
    problem = _visudo(["-c"])
    if problem is not None:
        raise SudoersInvalid(f"visudo -c rejects the sudoers configuration: {problem}")


def _tree_problem() -> str | None:
    return _visudo(["-c"])


def _restore(edit: FileEdit) -> None:
    if edit.before is None:
        remove_root_file(edit.path)
    else:
        write_root_file(edit.path, edit.before, mode=SUDOERS_MODE)


def _verify_or_restore(edit: FileEdit) -> None:
    """After a rename: if the whole tree fails, put the previous file back and raise."""
    problem = _tree_problem()
    if problem is None:
        return
    _restore(edit)
    raise _restored(edit, problem)


def _restored(edit: FileEdit, problem: str) -> SudoersInvalid:
    return SudoersInvalid(
        f"with the new {edit.path} in place, visudo -c rejects the sudoers configuration, so the previous "
        f"{'content was restored' if edit.before is not None else 'state (no file) was restored'}: {problem}"
    )


def _write_checked(path: str, data: bytes, *, removes_only: bool = False) -> FileEdit:
    """Write a sudoers file through visudo -cf, then check the whole tree, restoring the old file on failure.

    With a tree that is already broken the file is left as it was, unless `removes_only` (the change only takes
    rules away): then it is written, and since the tree was broken before, not rolled back for still being broken.

    The tree is checked once, after the rename, and only a failure asks whether it was broken before: two visudo
    runs per grant instead of three (a third of a sudo grant's time). While the new file is briefly live next to
    a tree that fails, sudo refuses every rule anyway (a tree visudo rejects is one sudo will not parse).
    """
    edit = write_root_file(path, data, mode=SUDOERS_MODE, validate=visudo_check_file)
    if not edit.changed:
        return edit
    problem = _tree_problem()
    if problem is None:
        return edit
    _restore(edit)
    broken_before = _tree_problem()
    if broken_before is None:
        raise _restored(edit, problem)
    if removes_only:
        return write_root_file(path, data, mode=SUDOERS_MODE, validate=visudo_check_file)
    raise SudoersInvalid(
        f"sudo's configuration is already invalid, so {path} was not changed; fix it with `visudo -c`: {broken_before}"
    )


def _check_dropin_name(name: str) -> None:
    # sudo's #includedir skips names with a '.' or ending in '~': a drop-in named so would silently grant nothing.
    if not name or "/" in name or "." in name or "~" in name:
        raise ValueError(f"a sudoers drop-in name must not contain '/', '.' or '~': {name!r}")


def _dropin_path(directory: str, name: str) -> str:
    _check_dropin_name(name)
    find_visudo()
    return f"{directory.rstrip('/')}/{name}"


def install_dropin(text: str | None, *, directory: str = DROPIN_DIR, name: str = DROPIN_NAME) -> FileEdit:
    """Make <directory>/<name> hold `text` (0440 root:root, checked by visudo), or remove it when text is None."""
    path = _dropin_path(directory, name)
    if text is None:
        # Removing grants is allowed even when the tree is already broken: it can only take rights away.
        broken_before = _tree_problem() is not None
        edit = remove_root_file(path)
        if edit.changed and not broken_before:
            _verify_or_restore(edit)
        return edit
    check_sudoers_layout(dropin_dir=directory)
    return _write_checked(path, text.encode("utf-8"))


def preview_dropin(text: str | None, *, directory: str = DROPIN_DIR, name: str = DROPIN_NAME) -> FileEdit:
    """What install_dropin would do: the text checked by visudo (through stdin) and the layout; nothing written."""
    path = _dropin_path(directory, name)
    if text is None:
        return preview_root_removal(path)
    check_sudoers_layout(dropin_dir=directory)
    visudo_check_text(text)
    return preview_root_file(path, text.encode("utf-8"))


def edit_legacy_file(transform: Callable[[bytes], bytes], *, path: str = LEGACY_FILE) -> FileEdit:
    """Rewrite the Go agent's /etc/sudoers-p0 as transform(content), checked like the drop-in.

    Only for taking grants away (authorized_keys.remove_block works on its bytes): a missing file stays missing,
    the agent never adds to it, and the edit goes ahead even when the tree is already broken (the Go agent could
    break it with an append after a missing newline, which a removal may repair). The file is kept, even empty,
    because /etc/sudoers may still `#include` it.
    """
    find_visudo()
    before = read_root_file(path)
    if before is None:
        return FileEdit(path, None, None, changed=False)
    return _write_checked(path, transform(before), removes_only=True)


def preview_legacy_file(transform: Callable[[bytes], bytes], *, path: str = LEGACY_FILE) -> FileEdit:
    """What edit_legacy_file would do: the new content checked by visudo through stdin; nothing written."""
    find_visudo()
    before = read_root_file(path)
    if before is None:
        return FileEdit(path, None, None, changed=False)
    after = transform(before)
    visudo_check_text(after.decode("utf-8", errors="replace"))
    return FileEdit(path, before, after, changed=after != before)
