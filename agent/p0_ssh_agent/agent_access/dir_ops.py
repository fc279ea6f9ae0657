"""The directory operations of the confined worker (worker_main.py), run as the target account, on the
descriptor resolution of file_ops.py (its docstring has the rules: links never followed, the prefix never
removed). Here:

- ssh_dir_list: the directory's entries sorted by name, at most MAX_LIST_ENTRIES, each with its type, size, mode
  and mtime (a link: its readlink target, bounded); names that are not UTF-8 keep their bytes as backslash escapes.
- ssh_dir_tree: depth first, each directory's names sorted, at most MAX_TREE_ENTRIES; it never follows a link and
  never descends into a mount point (listed as a directory with "mountPoint": true).
- Both stop (truncated) at their entry cap or when their names reach LISTING_BUDGET characters, so a reply stays
  well inside one answer frame; a directory's names are read keeping only the smallest `cap` in memory.
- ssh_dir_create is `mkdir -p` beneath the prefix (mode 0755): a directory that exists is not an error;
  "created" lists what was made.
- ssh_dir_delete removes an empty directory.
- ssh_dir_delete_recursive first walks the whole tree without removing anything and refuses (refused_file) if a
  mount point is inside: a different st_dev, or a different mount id from statx (a bind mount of the same
  filesystem keeps st_dev). Only root can mount, so the account cannot race that scan. The removal walk then
  unlinks every non-directory entry by name (unlinkat never opens nor follows what it removes, so a FIFO, or a
  link to a directory outside, goes as a name and its target is untouched) and checks each directory's mount
  again.
"""

from __future__ import annotations

import errno
import heapq
import os
import stat

from p0_ssh_agent.agent_access.access_model import (
    MAX_LIST_ENTRIES,
    MAX_TREE_DEPTH,
    MAX_TREE_ENTRIES,
    RefusalKind,
    WorkerJob,
)
from p0_ssh_agent.agent_access.file_ops import (
    LIST_FLAGS,
    WALK_FLAGS,
    Beneath,
    OpError,
    display,
    entry_type,
    mount_of,
    refusal,
)

LISTING_BUDGET = 512 * 1024  # characters of names in one listing or tree (the answer frame is 1 MiB)
MAX_LINK_TARGET = 1024
MAX_DELETE_DEPTH = 128  # one descriptor per level, under the worker's RLIMIT_NOFILE of 256
NEW_DIR_MODE = 0o755


def sorted_names(dir_fd: int, limit: int) -> list[str]:
    """The `limit` smallest names of a directory, sorted, holding no more than `limit` in memory."""
    with os.scandir(dir_fd) as entries:
        return heapq.nsmallest(limit, (entry.name for entry in entries))


def list_dir(job: WorkerJob) -> dict[str, object]:
    path = job.paths[0]
    entries: list[dict[str, object]] = []
    with Beneath(job.prefix) as beneath:
        fd = beneath.listing(path)
        names = sorted_names(fd, MAX_LIST_ENTRIES + 1)
        truncated, budget = len(names) > MAX_LIST_ENTRIES, LISTING_BUDGET
        for name in names[:MAX_LIST_ENTRIES]:
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the directory was read
            entry: dict[str, object] = {"name": display(name), "type": entry_type(st.st_mode), "size": st.st_size}
            entry |= {"mode": f"{stat.S_IMODE(st.st_mode):04o}", "mtime": int(st.st_mtime)}
            if stat.S_ISLNK(st.st_mode):
                try:
                    entry["target"] = display(os.readlink(name, dir_fd=fd))[:MAX_LINK_TARGET]
                except OSError:
                    entry["target"] = ""
            budget -= len(name) + len(str(entry.get("target", ""))) + 64
            if budget < 0:
                truncated = True
                break
            entries.append(entry)
    return {"entries": entries, "truncated": truncated}


class _Tree:
    """One ssh_dir_tree walk: depth first, each directory's names sorted, bounded in entries and characters."""

    def __init__(self, beneath: Beneath, depth: int) -> None:
        self.beneath, self.depth = beneath, depth
        self.entries: list[dict[str, object]] = []
        self.budget, self.truncated = LISTING_BUDGET, False

    def visit(self, fd: int, below: str, level: int) -> None:
        mount = mount_of(fd)
        for name in sorted_names(fd, MAX_TREE_ENTRIES - len(self.entries) + 1):
            if len(self.entries) >= MAX_TREE_ENTRIES or self.budget < 0:
                self.truncated = True
                return
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # removed since the directory was read
            relative = f"{below}/{display(name)}" if below else display(name)
            entry: dict[str, object] = {"path": relative, "type": entry_type(st.st_mode), "size": st.st_size}
            self.entries.append(entry)
            self.budget -= len(relative) + 48
            if not stat.S_ISDIR(st.st_mode) or level >= self.depth:
                continue
            try:
                child = self.beneath.keep(os.open(name, LIST_FLAGS, dir_fd=fd))
            except OSError:
                continue  # replaced by a link or removed since it was listed: never followed
            if mount_of(child) != mount:
                entry["mountPoint"] = True
            else:
                self.visit(child, relative, level + 1)
            self.beneath.close_one(child)


def tree(job: WorkerJob) -> dict[str, object]:
    if not 1 <= job.depth <= MAX_TREE_DEPTH:
        raise OpError(RefusalKind.INVALID, f"depth must be between 1 and {MAX_TREE_DEPTH}")
    with Beneath(job.prefix) as beneath:
        walk = _Tree(beneath, job.depth)
        walk.visit(beneath.listing(job.paths[0]), "", 1)
    return {"entries": walk.entries, "truncated": walk.truncated}


def make_dirs(job: WorkerJob) -> dict[str, object]:
    path, created = job.paths[0], []
    with Beneath(job.prefix) as beneath:
        fd, parts = beneath.root, beneath.parts(path)
        for index, name in enumerate(parts):
            try:
                os.mkdir(name, NEW_DIR_MODE, dir_fd=fd)
                created.append(beneath.absolute(parts[: index + 1]))
            except FileExistsError:
                pass  # mkdir -p: what exists is walked into below (a link or a file there refuses)
            except OSError as exc:
                raise refusal(exc, path) from None
            step = beneath.open_at(fd, name, WALK_FLAGS, path)
            if fd != beneath.root:
                beneath.close_one(fd)
            fd = step
    return {"created": created}


def remove_dir(job: WorkerJob) -> dict[str, object]:
    path = job.paths[0]
    with Beneath(job.prefix) as beneath:
        parent, name = beneath.parent(path)
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise refusal(exc, path, parent, name) from None
    return {"removedFiles": 0, "removedDirs": 1}


def _scan_for_mounts(fd: int, mount: tuple[int, int], path: str, level: int) -> None:
    """Refuse the recursive delete, before anything is removed, if a mount point is anywhere inside."""
    if level > MAX_DELETE_DEPTH:
        raise OpError(RefusalKind.TOO_LARGE, f"more than {MAX_DELETE_DEPTH} levels of directories: {path}")
    with os.scandir(fd) as entries:
        directories = [entry.name for entry in entries if entry.is_dir(follow_symlinks=False)]
    for name in directories:
        try:
            child = os.open(name, LIST_FLAGS, dir_fd=fd)
        except OSError:
            continue  # gone, or swapped for a link: the removal walk removes it as a name
        try:
            if mount_of(child) != mount:
                raise OpError(RefusalKind.REFUSED_FILE, f"a mount point is inside (nothing was removed): {path}")
            _scan_for_mounts(child, mount, path, level + 1)
        finally:
            os.close(child)


def _names(fd: int) -> list[str]:
    with os.scandir(fd) as entries:
        return [entry.name for entry in entries]


class _Removal:
    """One recursive delete's removal walk (after _scan_for_mounts found no mount point inside)."""

    def __init__(self, mount: tuple[int, int], path: str) -> None:
        self.mount, self.path = mount, path
        self.files = self.dirs = 0

    def empty(self, fd: int, level: int) -> None:
        if level > MAX_DELETE_DEPTH:
            raise OpError(RefusalKind.TOO_LARGE, f"more than {MAX_DELETE_DEPTH} levels of directories: {self.path}")
        if mount_of(fd) != self.mount:
            raise OpError(RefusalKind.REFUSED_FILE, f"a mount point is inside: {self.path}")
        for name in _names(fd):
            self.remove(fd, name, level)

    def remove(self, fd: int, name: str, level: int) -> None:
        """Remove one entry by name: unlinkat first (a non-directory, whatever it is, goes as a name), and only on
        EISDIR open it as a directory without following, empty it and rmdir it. A few rounds, as the account may
        swap a directory and a link under us: each round acts on what the name is at that moment."""
        for _attempt in range(3):
            try:
                os.unlink(name, dir_fd=fd)
            except FileNotFoundError:
                return
            except IsADirectoryError:
                pass
            except OSError as exc:
                raise refusal(exc, self.path) from None
            else:
                self.files += 1
                return
            try:
                child = os.open(name, LIST_FLAGS, dir_fd=fd)
            except FileNotFoundError:
                return
            except OSError as exc:
                if exc.errno in (errno.ENOTDIR, errno.ELOOP):
                    continue  # a link or a file again: unlink it as a name in the next round
                raise refusal(exc, self.path) from None
            try:
                self.empty(child, level + 1)
            finally:
                os.close(child)
            try:
                os.rmdir(name, dir_fd=fd)
            except OSError as exc:
                raise refusal(exc, self.path) from None
            self.dirs += 1
            return
        raise OpError(RefusalKind.CONFLICT, f"an entry kept changing while it was removed: {self.path}")


def delete_tree(job: WorkerJob) -> dict[str, object]:
    path = job.paths[0]
    with Beneath(job.prefix) as beneath:
        parent, name = beneath.parent(path)
        top = beneath.open_at(parent, name, LIST_FLAGS, path)
        mount = mount_of(top)
        if mount != mount_of(parent):
            raise OpError(RefusalKind.REFUSED_FILE, f"a mount point (nothing was removed): {path}")
        _scan_for_mounts(top, mount, path, 1)
        removal = _Removal(mount, path)
        removal.empty(top, 1)
        try:
            os.rmdir(name, dir_fd=parent)
        except OSError as exc:
            raise refusal(exc, path, parent, name) from None
    return {"removedFiles": removal.files, "removedDirs": removal.dirs + 1}
