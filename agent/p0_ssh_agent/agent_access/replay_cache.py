"""Each cosignature counts once: the jtis already claimed, on disk, so a restart does not make them usable again.

The file holds one line per claim, "<key> <expires>\n": the key is the first 128 bits of the SHA-256 of the jti, in
hex (a 44-byte line for a 10-digit time, whatever the jti's length, so MAX_LIVE_ENTRIES fit well within
MAX_CACHE_BYTES), and expires is the first second the cosignature is no longer accepted (cosign.CosignCheck.expires),
after which the entry may be forgotten. A claim is appended and fsync'd before it is granted. Once the file holds
twice the lines it had at its last rewrite (at least 1024, at most COMPACT_AFTER_LINES), it is rewritten without the
expired entries: a new file, fsync'd, renamed over the old one, the directory fsync'd.

Fails closed: a file that cannot be read, is over MAX_CACHE_BYTES, is not the agent's own private regular file, or
holds a line that is not an entry makes every claim False, with the reason in `error` (the operator removes the
file to start over: a cosignature lives minutes, so forgetting them costs at most that window). A cache holding
MAX_LIVE_ENTRIES live entries refuses further claims until some expire. A last line without its newline is a claim
torn by a crash before it was granted, so it is dropped (the file is rewritten without it).

read_only=True (doctor, and `command --dry-run` run by hand beside the daemon) only reads: the file is never
rewritten nor appended to, and every claim is False. Another process writing the daemon's file would race its
appends, and its claims would not be in the daemon's memory, so a cosignature could be used twice.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import stat
import threading
from pathlib import Path

from p0_ssh_agent.host.plainfile import FileTooLarge, read_at_most

MAX_CACHE_BYTES = 8 * 1024 * 1024
MAX_LIVE_ENTRIES = 100_000
COMPACT_AFTER_LINES = 150_000  # * 44 bytes: 6.6 MB, within MAX_CACHE_BYTES
_MIN_COMPACT_LINES = 1024
_ENTRY = re.compile(r"([0-9a-f]{32}) ([0-9]{1,15})")
_JTI = re.compile(r"[A-Za-z0-9_-]{1,128}\Z")
_MAX_EXPIRES = 10**15  # what _ENTRY reads back


def _key(jti: str) -> str:
    return hashlib.sha256(jti.encode("ascii")).hexdigest()[:32]


class ReplayCache:
    """The claimed jtis at `path` (module docstring). Thread-safe: claim holds a lock around check and record."""

    def __init__(self, path: Path, *, read_only: bool = False) -> None:
        self.path = Path(path)
        self.read_only = read_only
        self.error = ""  # non-empty: the cache is unusable and every claim is False
        self._lock = threading.Lock()
        self._entries: dict[str, int] = {}
        self._file_lines = 0
        self._compact_at = _MIN_COMPACT_LINES
        # A failed append may have left part of a line: the file is rewritten from memory before the next one.
        self._needs_rewrite = False
        self._load()

    def claim(self, jti: str, expires: int, now: int) -> bool:
        """True, once the claim is on disk, when `jti` is not already claimed and live; False otherwise, or when
        the cache cannot record it (unusable, full, a write failed)."""
        if not isinstance(jti, str) or not _JTI.match(jti) or not 0 <= expires < _MAX_EXPIRES:
            return False
        key = _key(jti)
        with self._lock:
            if self.error or self.read_only:
                return False
            known = self._entries.get(key)
            if known is not None and known > now:
                return False
            if len(self._entries) >= MAX_LIVE_ENTRIES:
                self._forget_expired(now)
                if len(self._entries) >= MAX_LIVE_ENTRIES:
                    return False
            try:
                if self._needs_rewrite:
                    self._rewrite()
                self._append(f"{key} {expires}\n".encode("ascii"))
            except OSError:
                self._needs_rewrite = True
                return False  # not durable, so not granted; the next claim tries again
            self._entries[key] = expires
            self._file_lines += 1
            if self._file_lines >= self._compact_at:
                self._compact(now)
            return True

    def live_entries(self, now: int) -> int:
        with self._lock:
            return sum(1 for expires in self._entries.values() if expires > now)

    # --- the file ------------------------------------------------------------------------------------------

    def _load(self) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return
        except OSError as exc:
            self.error = f"{self.path}: cannot read the replay cache: {exc.strerror or exc} (a symlink is refused)"
            return
        try:
            self._check_file(os.fstat(fd))
            data = read_at_most(fd, MAX_CACHE_BYTES, str(self.path))
        except FileTooLarge as exc:
            self.error = str(exc)
            return
        except (OSError, _Unusable) as exc:
            self.error = f"{self.path}: cannot read the replay cache: {exc}"
            return
        finally:
            os.close(fd)
        text = data.decode("ascii", errors="replace")
        lines = text.split("\n")
        torn = lines.pop()  # "" when the file ends in a newline
        for number, line in enumerate(lines, start=1):
            match = _ENTRY.fullmatch(line)
            if match is None:
                self.error = f"{self.path}: line {number} is not a replay-cache entry; remove the file to start over"
                self._entries = {}
                return
            key, expires = match[1], int(match[2])
            self._entries[key] = max(expires, self._entries.get(key, 0))
        self._file_lines = len(lines)
        self._plan_compaction()
        if torn and not self.read_only:
            try:
                self._rewrite()
            except OSError as exc:
                self.error = f"{self.path}: cannot rewrite the replay cache without its torn last line: {exc}"

    def _check_file(self, info: os.stat_result) -> None:
        if not stat.S_ISREG(info.st_mode):
            raise _Unusable("not a regular file")
        if info.st_uid != os.geteuid():
            raise _Unusable(f"owned by UID {info.st_uid}, not the agent's")
        if info.st_mode & 0o077:
            raise _Unusable(f"mode {stat.S_IMODE(info.st_mode):04o}; it must be 0600")

    def _ensure_directory(self) -> None:
        directory = self.path.parent
        if not directory.exists():
            directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            directory.chmod(0o700)  # mkdir's mode is filtered by the umask

    def _append(self, line: bytes) -> None:
        self._ensure_directory()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
        created = not self.path.exists()
        fd = os.open(self.path, flags, 0o600)
        try:
            if created:
                os.fchmod(fd, 0o600)
            _write_all(fd, line)
            os.fsync(fd)
        finally:
            os.close(fd)
        if created:
            self._sync_directory()

    def _forget_expired(self, now: int) -> None:
        self._entries = {key: expires for key, expires in self._entries.items() if expires > now}

    def _compact(self, now: int) -> None:
        self._forget_expired(now)
        with contextlib.suppress(OSError):  # the appended file stays valid; compaction is tried again later
            self._rewrite()

    def _rewrite(self) -> None:
        """The file, replaced atomically by one holding exactly the entries in memory."""
        self._ensure_directory()
        temporary = self.path.with_name(f".{self.path.name}.{os.getpid()}.new")
        body = "".join(f"{key} {expires}\n" for key, expires in self._entries.items()).encode("ascii")
        with contextlib.suppress(FileNotFoundError):
            temporary.unlink()
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            try:
                os.fchmod(fd, 0o600)
                _write_all(fd, body)
                os.fsync(fd)
            finally:
                os.close(fd)
            temporary.replace(self.path)
        except OSError:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        self._sync_directory()
        self._file_lines = len(self._entries)
        self._needs_rewrite = False
        self._plan_compaction()

    def _plan_compaction(self) -> None:
        """The next rewrite: once the file holds twice the entries it had now (so an append costs O(1) amortised),
        and before it could outgrow MAX_CACHE_BYTES."""
        self._compact_at = max(_MIN_COMPACT_LINES, min(COMPACT_AFTER_LINES, 2 * len(self._entries)))

    def _sync_directory(self) -> None:
        fd = os.open(self.path.parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class _Unusable(Exception):
    """The replay-cache file is not one the agent may trust."""
