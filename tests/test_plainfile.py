"""host.plainfile: the read bound and the one-link rule every reader of a user's file shares (issue 11)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from p0_ssh_agent.host.plainfile import FileTooLarge, UnsafePath, check_plain_file, read_at_most

LIMIT = 1000
HUGE = 64 << 30


def test_a_file_of_exactly_the_limit_is_read_whole(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"k" * LIMIT)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert read_at_most(fd, LIMIT, str(path)) == b"k" * LIMIT
    finally:
        os.close(fd)


def test_a_file_that_grows_after_the_fstat_is_refused_after_limit_plus_one_bytes(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"k" * LIMIT)
    fd = os.open(path, os.O_RDONLY)
    try:
        assert os.fstat(fd).st_size == LIMIT  # what a reader trusting fstat saw
        os.truncate(path, HUGE)  # then the user makes it 64 GiB (sparse)
        with pytest.raises(FileTooLarge, match=rf"refusing {path}: it holds more than {LIMIT} bytes"):
            read_at_most(fd, LIMIT, str(path))
        assert os.lseek(fd, 0, os.SEEK_CUR) == LIMIT + 1  # exactly one byte past the limit was read
    finally:
        os.close(fd)


def test_the_one_link_rule(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_text("x")
    check_plain_file(path.stat(), str(path))
    os.link(path, tmp_path / "second-name")
    with pytest.raises(UnsafePath, match=r"it has 2 hard links, so it may be another file under a second name"):
        check_plain_file(path.stat(), str(path))
    with pytest.raises(UnsafePath, match="it is a directory, not a regular file"):
        check_plain_file(tmp_path.stat(), str(tmp_path))
    assert issubclass(FileTooLarge, UnsafePath)  # refused like any unsafe file: the grant forgets its ledger entry
