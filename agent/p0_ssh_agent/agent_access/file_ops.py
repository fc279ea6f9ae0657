"""The file operations of the confined worker (worker_main.py), run as the target account: every path is resolved
beneath the capability's prefix with descriptors, so nothing a name points to can lead out of it.

Resolution: the prefix is opened from "/" one component at a time (O_PATH|O_DIRECTORY|O_NOFOLLOW: a symlink
anywhere in the prefix refuses the operation), then each component of the request's path below it the same way;
the last component is looked at with fstatat(AT_SYMLINK_NOFOLLOW) and, where an operation reads or writes it,
opened with O_NOFOLLOW|O_NONBLOCK|O_NOCTTY and fstat'ed again (what the descriptor is decides, not what the name was
a moment earlier; O_NONBLOCK keeps a FIFO swapped in meanwhile from blocking the open). O_PATH because traversal
needs only search permission, as the kernel's own path walk does.

Decisions (dir_ops.py's docstring has the directory operations'):
- Symlinks are NEVER followed, not even ones that stay inside the prefix: following one means resolving its text,
  a second resolver to get right, through a link the account can rewrite at any moment. A listing shows a link
  as "symlink" with its bounded target; delete removes the link itself; read, write and copy refuse it.
- Opening operations (read, write, copy, and the file create-with-overwrite replaces) refuse regular files with
  more than one hard link (the other name may be outside the prefix), FIFOs, device nodes and sockets
  (refused_file). ssh_file_delete removes a single-link regular file or a symlink, nothing else; ssh_file_move
  moves those or a directory (its content stays beneath the prefix).
- The prefix itself can never be deleted, moved, replaced or removed (refused_file).
- A write at an offset beyond the file's end is refused (invalid_request): chunks go in order, leaving no holes.
  `sha256` in a read's or write's result is the digest of the bytes that call moved; create's and copy's is the
  new file's. Create and copy write a temp file beside the target (O_CREAT|O_EXCL), fsync it and rename it into
  place (renameat2 RENAME_NOREPLACE unless overwrite), so a new file appears whole or not at all: mode 0644, or an
  overwritten file's permission bits.
What descriptor walks do not stop: a concurrent process of the same account renaming a directory we hold out of
the prefix while we work in it. That needs the account's own rights over both places, which it could use directly.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import ctypes
import errno
import hashlib
import os
import stat
import sys
from collections.abc import Callable
from types import TracebackType

from p0_ssh_agent.agent_access.access_model import (
    MAX_READ_BYTES,
    MAX_WRITE_BYTES,
    RefusalKind,
    WorkerJob,
)
from p0_ssh_agent.agent_access.scoped_paths import PathRefused, clean_prefix, components, relative_parts

WALK_FLAGS = os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LIST_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
LEAF_FLAGS = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
NEW_FILE_MODE = 0o644
COPY_CHUNK = 1024 * 1024
RENAME_NOREPLACE = 1
AT_EMPTY_PATH = 0x1000
STATX_MNT_ID = 0x1000
_libc = ctypes.CDLL(None, use_errno=True)
# Declared, so ctypes passes each argument at its C width (glibc has both since 2.28).
_libc.statx.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p]
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


class OpError(Exception):
    """An operation refused or failed; `kind` is the reply's error_kind, `message` names the request's path."""

    def __init__(self, kind: RefusalKind, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


def refusal(exc: OSError, path: str, dir_fd: int | None = None, name: str = "") -> OpError:
    """The OpError for an OSError met on `path`. With dir_fd and name, an ENOTDIR is looked at again: opening a
    link with O_DIRECTORY|O_NOFOLLOW fails with ENOTDIR, not ELOOP, and a name that is a link, or a directory, by
    the time we look was a link (or was swapped) when the open failed: refused_file, not a conflict."""
    code = exc.errno
    if code == errno.ENOTDIR and dir_fd is not None:
        try:
            mode = os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode
        except OSError:
            mode = 0
        if stat.S_ISLNK(mode) or stat.S_ISDIR(mode):
            code = errno.ELOOP
    if code == errno.ENOENT:
        return OpError(RefusalKind.NOT_FOUND, f"no such file or directory: {path}")
    if code == errno.EEXIST:
        return OpError(RefusalKind.EXISTS, f"already exists: {path}")
    if code in (errno.ENOTDIR, errno.EISDIR, errno.ENOTEMPTY):
        what = {errno.ENOTDIR: "not a directory", errno.EISDIR: "is a directory"}.get(code, "directory not empty")
        return OpError(RefusalKind.CONFLICT, f"{what}: {path}")
    if code == errno.ELOOP:
        return OpError(RefusalKind.REFUSED_FILE, f"a symbolic link is in the way (links are never followed): {path}")
    if code == errno.EBUSY:
        return OpError(RefusalKind.REFUSED_FILE, f"a mount point or busy: {path}")
    return OpError(RefusalKind.FAILED, f"{os.strerror(code) if code else exc}: {path}")


def require_openable(st: os.stat_result, path: str, *, directory_ok: bool = False) -> None:
    """Refuse what an opening operation must not open: links, hard-linked files, FIFOs, devices, sockets."""
    mode = st.st_mode
    if stat.S_ISDIR(mode) and not directory_ok:
        raise OpError(RefusalKind.CONFLICT, f"is a directory: {path}")
    if stat.S_ISLNK(mode):
        raise OpError(RefusalKind.REFUSED_FILE, f"a symbolic link (links are never followed): {path}")
    if stat.S_ISREG(mode) and st.st_nlink > 1:
        raise OpError(RefusalKind.REFUSED_FILE, f"a file with more than one hard link: {path}")
    if not (stat.S_ISREG(mode) or stat.S_ISDIR(mode)):
        raise OpError(RefusalKind.REFUSED_FILE, f"not a regular file (FIFO, device or socket): {path}")


def mount_of(fd: int) -> tuple[int, int]:
    """(st_dev, mount id) of an open descriptor; the mount id is -1 where statx cannot tell it."""
    buffer = ctypes.create_string_buffer(256)
    mount_id = -1
    if _libc.statx(fd, b"", AT_EMPTY_PATH, STATX_MNT_ID, buffer) == 0:
        mask = int.from_bytes(buffer.raw[0:4], sys.byteorder)
        if mask & STATX_MNT_ID:
            mount_id = int.from_bytes(buffer.raw[144:152], sys.byteorder)  # struct statx's stx_mnt_id
    return os.fstat(fd).st_dev, mount_id


def rename_at(src_fd: int, src: str, dst_fd: int, dst: str, *, replace: bool, path: str) -> None:
    """renameat2(2): RENAME_NOREPLACE unless `replace` (os.rename cannot refuse to replace)."""
    flags = 0 if replace else RENAME_NOREPLACE
    if _libc.renameat2(src_fd, os.fsencode(src), dst_fd, os.fsencode(dst), flags) != 0:
        raise refusal(OSError(ctypes.get_errno(), ""), path)


def display(name: str) -> str:
    """A name as JSON text: bytes that are not UTF-8 become backslash escapes."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


class Beneath:
    """The descriptors one operation opens beneath one prefix, closed together (a context manager)."""

    def __init__(self, prefix: str) -> None:
        try:
            self.prefix_parts = components(clean_prefix(prefix), "path_prefix")
        except PathRefused as exc:
            raise OpError(RefusalKind.INVALID, str(exc)) from None
        self.prefix = prefix
        self._fds: list[int] = []
        self.root = self.keep(os.open("/", WALK_FLAGS))
        try:
            self.root = self.walk(self.root, self.prefix_parts, prefix)
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> Beneath:
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.close()

    def close(self) -> None:
        for fd in reversed(self._fds):
            os.close(fd)
        self._fds.clear()

    def keep(self, fd: int) -> int:
        self._fds.append(fd)
        return fd

    def close_one(self, fd: int) -> None:
        self._fds.remove(fd)
        os.close(fd)

    def open_at(self, dir_fd: int, name: str, flags: int, path: str, mode: int = 0o777) -> int:
        try:
            return self.keep(os.open(name, flags, mode, dir_fd=dir_fd))
        except OSError as exc:
            raise refusal(exc, path, dir_fd, name) from None

    def walk(self, start: int, names: tuple[str, ...], path: str) -> int:
        """Open `names` one by one from `start`, closing each step behind it (a deep path holds two descriptors)."""
        fd = start
        for name in names:
            step = self.open_at(fd, name, WALK_FLAGS, path)
            if fd != start:
                self.close_one(fd)
            fd = step
        return fd

    def parts(self, path: str) -> tuple[str, ...]:
        try:
            return relative_parts(path, self.prefix)
        except PathRefused as exc:
            raise OpError(RefusalKind.INVALID, str(exc)) from None

    def absolute(self, parts: tuple[str, ...]) -> str:
        return "/" + "/".join(self.prefix_parts + parts)

    def directory(self, path: str) -> int:
        """An O_PATH descriptor of the directory at `path` (the prefix itself for the prefix)."""
        return self.walk(self.root, self.parts(path), path)

    def parent(self, path: str) -> tuple[int, str]:
        """(descriptor of the parent directory, last name) of `path`, which may not be the prefix itself."""
        parts = self.parts(path)
        if not parts:
            raise OpError(RefusalKind.REFUSED_FILE, f"the capability's path_prefix itself is refused here: {path}")
        return self.walk(self.root, parts[:-1], path), parts[-1]

    def lstat(self, dir_fd: int, name: str, path: str) -> os.stat_result:
        try:
            return os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
        except OSError as exc:
            raise refusal(exc, path) from None

    def open_file(self, path: str, flags: int) -> tuple[int, os.stat_result]:
        """A descriptor of the regular, single-link file at `path`, and its fstat."""
        parent, name = self.parent(path)
        require_openable(self.lstat(parent, name, path), path)
        fd = self.open_at(parent, name, flags | LEAF_FLAGS, path)
        st = os.fstat(fd)
        require_openable(st, path)
        return fd, st

    def listing(self, path: str) -> int:
        """A readable descriptor of the directory at `path` (getdents needs more than O_PATH)."""
        return self.open_at(self.directory(path), ".", LIST_FLAGS, path)


def _decode(data_b64: str) -> bytes:
    if len(data_b64) > 4 * (MAX_WRITE_BYTES // 3 + 1):
        raise OpError(RefusalKind.TOO_LARGE, f"data is larger than {MAX_WRITE_BYTES} bytes")
    try:
        data = base64.b64decode(data_b64, validate=True)
    except (binascii.Error, ValueError):
        raise OpError(RefusalKind.INVALID, "data is not valid base64") from None
    if len(data) > MAX_WRITE_BYTES:
        raise OpError(RefusalKind.TOO_LARGE, f"data is larger than {MAX_WRITE_BYTES} bytes")
    return data


def _write_all(fd: int, data: bytes, offset: int | None = None) -> None:
    view = memoryview(data)
    while view:
        done = os.write(fd, view) if offset is None else os.pwrite(fd, view, offset)
        view = view[done:]
        offset = None if offset is None else offset + done


def _fsync_dir(beneath: Beneath, dir_fd: int, path: str) -> None:
    os.fsync(beneath.open_at(dir_fd, ".", LIST_FLAGS, path))


def _temp_name() -> str:
    return f".p0-agent-access-{os.urandom(8).hex()}.tmp"  # not `secrets`: its import costs the worker 1.5 ms


def read_file(job: WorkerJob) -> dict[str, object]:
    path, offset = job.paths[0], 0 if job.offset is None else job.offset
    length = MAX_READ_BYTES if job.length is None else job.length
    if length > MAX_READ_BYTES:
        raise OpError(RefusalKind.TOO_LARGE, f"length is larger than {MAX_READ_BYTES} bytes")
    with Beneath(job.prefix) as beneath:
        fd, _ = beneath.open_file(path, os.O_RDONLY)
        chunks: list[bytes] = []
        got = 0
        while got < length and (chunk := os.pread(fd, length - got, offset + got)):
            chunks.append(chunk)
            got += len(chunk)
        data, size = b"".join(chunks), os.fstat(fd).st_size
    return {
        "data": base64.b64encode(data).decode("ascii"),
        "offset": offset,
        "length": len(data),
        "size": size,
        "eof": offset + len(data) >= size,
        "sha256": hashlib.sha256(data).hexdigest(),
    }


def write_file(job: WorkerJob) -> dict[str, object]:
    path, data = job.paths[0], _decode(job.data_b64)
    if (job.offset is not None) == job.append:
        raise OpError(RefusalKind.INVALID, "a write takes exactly one of offset and append")
    with Beneath(job.prefix) as beneath:
        fd, st = beneath.open_file(path, os.O_WRONLY | (os.O_APPEND if job.append else 0))
        if job.offset is not None and job.offset > st.st_size:
            raise OpError(RefusalKind.INVALID, f"offset {job.offset} is beyond the end of {path} ({st.st_size})")
        try:
            _write_all(fd, data, job.offset)
            if job.truncate:
                os.ftruncate(fd, os.lseek(fd, 0, os.SEEK_CUR) if job.offset is None else job.offset + len(data))
            os.fsync(fd)
        except OSError as exc:
            raise refusal(exc, path) from None
        size = os.fstat(fd).st_size
    return {"written": len(data), "size": size, "sha256": hashlib.sha256(data).hexdigest()}


def _replaceable(beneath: Beneath, dir_fd: int, name: str, path: str) -> os.stat_result | None:
    """What an overwrite would replace: None (nothing there) or a regular, single-link file."""
    try:
        st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise refusal(exc, path) from None
    require_openable(st, path)
    return st


def _publish(
    beneath: Beneath, dir_fd: int, name: str, path: str, *, fill: Callable[[int], None], mode: int, replace: bool
) -> None:
    """Write a temp file beside `name` with `fill`, fsync it, rename it into place (replacing only if asked)."""
    temp = _temp_name()
    fd = beneath.open_at(dir_fd, temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | LEAF_FLAGS, path, 0o600)
    try:
        fill(fd)
        os.fchmod(fd, mode)
        os.fsync(fd)
        rename_at(dir_fd, temp, dir_fd, name, replace=replace, path=path)
    except BaseException:
        with contextlib.suppress(OSError):  # already renamed, or gone: nothing of ours is left behind either way
            os.unlink(temp, dir_fd=dir_fd)
        raise
    _fsync_dir(beneath, dir_fd, path)


def create_file(job: WorkerJob) -> dict[str, object]:
    path, data = job.paths[0], _decode(job.data_b64)
    with Beneath(job.prefix) as beneath:
        parent, name = beneath.parent(path)
        existing = _replaceable(beneath, parent, name, path) if job.overwrite else None
        mode = NEW_FILE_MODE if existing is None else stat.S_IMODE(existing.st_mode) & 0o777
        _publish(
            beneath, parent, name, path, fill=lambda fd: _write_all(fd, data), mode=mode, replace=existing is not None
        )
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest(), "replaced": existing is not None}


def delete_file(job: WorkerJob) -> dict[str, object]:
    path = job.paths[0]
    with Beneath(job.prefix) as beneath:
        parent, name = beneath.parent(path)
        st = beneath.lstat(parent, name, path)
        if not stat.S_ISLNK(st.st_mode):
            require_openable(st, path)
        try:
            os.unlink(name, dir_fd=parent)
        except OSError as exc:
            raise refusal(exc, path) from None
    return {"type": "symlink" if stat.S_ISLNK(st.st_mode) else "file"}


def move(job: WorkerJob) -> dict[str, object]:
    source, destination = job.paths[0], job.paths[1]
    with Beneath(job.prefix) as beneath:
        src_dir, src_name = beneath.parent(source)
        dst_dir, dst_name = beneath.parent(destination)
        st = beneath.lstat(src_dir, src_name, source)
        if not stat.S_ISLNK(st.st_mode):
            require_openable(st, source, directory_ok=True)
        replaced = job.overwrite and _replaceable(beneath, dst_dir, dst_name, destination) is not None
        rename_at(src_dir, src_name, dst_dir, dst_name, replace=job.overwrite, path=destination)
    return {"type": entry_type(st.st_mode), "replaced": replaced}


def copy(job: WorkerJob) -> dict[str, object]:
    source, destination = job.paths[0], job.paths[1]
    digest = hashlib.sha256()
    with Beneath(job.prefix) as beneath:
        src_fd, st = beneath.open_file(source, os.O_RDONLY)
        dst_dir, dst_name = beneath.parent(destination)
        replaced = job.overwrite and _replaceable(beneath, dst_dir, dst_name, destination) is not None

        def fill(fd: int) -> None:
            while chunk := os.read(src_fd, COPY_CHUNK):
                digest.update(chunk)
                _write_all(fd, chunk)

        mode = stat.S_IMODE(st.st_mode) & 0o755  # as cp under the worker's umask 022
        _publish(beneath, dst_dir, dst_name, destination, fill=fill, mode=mode, replace=job.overwrite)
        size = os.fstat(src_fd).st_size
    return {"size": size, "sha256": digest.hexdigest(), "replaced": replaced}


def entry_type(mode: int) -> str:
    if stat.S_ISREG(mode):
        return "file"
    if stat.S_ISDIR(mode):
        return "dir"
    return "symlink" if stat.S_ISLNK(mode) else "other"
