"""What a file the agent reads in a directory a user controls must be, and how much of it is read (issue 11).

Two rules, used by every reader of such a file: the edits and reconciliation (host/safefile.py), runAudit
(host/inventory.py), and through them `status` and `doctor`:

* check_plain_file: a regular file with exactly one link, checked on the opened descriptor;
* read_at_most: at most limit + 1 bytes are ever read, and more than the limit is refused whole (FileTooLarge),
  never cut. The bound is what read() returns, not what fstat said: a user can grow their file between the two
  (`truncate -s 64G` makes a sparse file that costs them no disk), and a reader that trusted fstat read on to the
  end: 2.2 GiB of memory for one grant, MemoryError in the periodic reconciliation.

    PermissionProblem
    └── UnsafePath          a symlink, hard link, foreign owner, wrong type, or a group/world-writable directory
        └── FileTooLarge    more than the limit could be read from the file
"""

from __future__ import annotations

import os
import stat

from p0_ssh_agent.errors import PermissionProblem

# authorized_keys and sudoers files are small; a bigger one is a user stuffing their file to exhaust our memory.
MAX_FILE_BYTES = 4 * 1024 * 1024
_READ_CHUNK = 1 << 16


class UnsafePath(PermissionProblem):
    """A path the agent refuses to read or write through: symlink, hard link, foreign owner, wrong type, loose
    directory."""


class FileTooLarge(UnsafePath):
    """More than the limit could be read from a file: refused whole, never cut (a cut file is another file)."""


def file_kind(mode: int) -> str:
    for test, text in (
        (stat.S_ISLNK, "a symlink"),
        (stat.S_ISDIR, "a directory"),
        (stat.S_ISREG, "a regular file"),
        (stat.S_ISFIFO, "a FIFO"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
    ):
        if test(mode):
            return text
    return "an unknown kind of file"


def check_plain_file(info: os.stat_result, shown: str) -> None:
    """The one rule for a file opened (without following a symlink) in a directory a user controls, whether the
    agent is about to rewrite it or only to show it (runAudit): a regular file with exactly one link. Anything else
    is UnsafePath. A second link is the same inode under another name, which may be a file the user could never
    read or write (/etc/shadow, where fs.protected_hardlinks is off or the link predates it)."""
    if not stat.S_ISREG(info.st_mode):
        raise UnsafePath(f"refusing {shown}: it is {file_kind(info.st_mode)}, not a regular file")
    if info.st_nlink > 1:
        raise UnsafePath(
            f"refusing {shown}: it has {info.st_nlink} hard links, so it may be another file under a second name "
            f"(find them with: find / -xdev -samefile {shown}); remove the extra links"
        )


def read_at_most(fd: int, max_bytes: int, shown: str) -> bytes:
    """The rest of the file behind `fd`, or FileTooLarge if it holds more than max_bytes.

    Bounded by what read() returns, never by fstat: at most max_bytes + 1 bytes are read (the one extra byte tells
    a file of exactly the limit from a bigger one), however large the file is or becomes while we read. OSError is
    the caller's to translate.
    """
    chunks: list[bytes] = []
    remaining = max_bytes + 1
    while remaining > 0:
        chunk = os.read(fd, min(remaining, _READ_CHUNK))
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        remaining -= len(chunk)
    raise FileTooLarge(f"refusing {shown}: it holds more than {max_bytes} bytes, the most the agent reads; shrink it")
