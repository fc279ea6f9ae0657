"""The worker's file, directory and exec operations in-process, as the current user, in tmp_path (issue 17 item 4):
every operation, the path rules, links never followed, hard links and special files refused, the caps."""

from __future__ import annotations

import base64
import hashlib
import os
import signal
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from p0_ssh_agent.agent_access.access_model import (
    MAX_LIST_ENTRIES,
    MAX_READ_BYTES,
    MAX_STREAM_BYTES,
    MAX_WRITE_BYTES,
    WorkerJob,
)
from p0_ssh_agent.agent_access.file_ops import OpError
from p0_ssh_agent.agent_access.worker_main import decode_job, encode_job, run_job


@pytest.fixture
def app(tmp_path: Path) -> Path:
    """The capability's prefix: <tmp>/www/app, with a sibling app2 and a directory outside holding a secret."""
    prefix = tmp_path / "www" / "app"
    prefix.mkdir(parents=True)
    (tmp_path / "www" / "app2").mkdir()
    (tmp_path / "www" / "app2" / "other.txt").write_text("app2's\n")
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text("SECRET\n")
    (prefix / "hello.txt").write_text("hello world\n")
    return prefix


@pytest.fixture(autouse=True)
def _never_hang() -> Iterator[None]:
    """A FIFO that blocked an open would hang the test: fail it instead."""
    previous = signal.signal(signal.SIGALRM, signal.default_int_handler)
    signal.alarm(60)
    yield
    signal.alarm(0)
    signal.signal(signal.SIGALRM, previous)


def do(op: str, prefix: Path, *paths: Path | str, **fields: Any) -> dict[str, Any]:
    """One job through the worker's own decoding and dispatch, as worker_main runs it."""
    job = WorkerJob(op=op, prefix=str(prefix), paths=tuple(str(path) for path in paths), **fields)
    return run_job(decode_job(encode_job(job)), home="/nonexistent", user="tester", namespace_init=False)


def ok(reply: dict[str, Any]) -> dict[str, Any]:
    """The result of a reply that must be a success (JSON-shaped: Any, as the tests index into it)."""
    assert reply["ok"] is True, reply
    result = reply["result"]
    assert isinstance(result, dict)
    return result


def refused(reply: dict[str, Any], kind: str) -> str:
    assert reply["ok"] is False and reply["error_kind"] == kind, reply
    return str(reply["message"])


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


# --- the path rules, before anything is touched ------------------------------------------------------------


@pytest.mark.parametrize("bad", ["{p}/../app2/other.txt", "/etc/passwd", "{p}/a\x00b", "{p}/./hello.txt", "{p}/"])
def test_traversal_absolute_outside_and_nul_are_invalid(app: Path, bad: str) -> None:
    message = refused(do("ssh_file_read", app, bad.format(p=app)), "invalid_request")
    assert "SECRET" not in message


def test_a_sibling_with_a_longer_name_is_not_under_the_prefix(app: Path) -> None:
    sibling = app.parent / "app2" / "other.txt"
    refused(do("ssh_file_read", app, sibling), "invalid_request")
    refused(do("ssh_file_delete", app, sibling), "invalid_request")
    assert sibling.read_text() == "app2's\n"


def test_a_refused_prefix_is_refused_again_by_the_worker(app: Path) -> None:
    refused(do("ssh_dir_list", Path("/etc"), "/etc"), "invalid_request")
    refused(do("ssh_dir_list", Path("/srv/a b"), "/srv/a b"), "invalid_request")


def test_a_symlink_in_the_prefix_itself_refuses_everything(app: Path, tmp_path: Path) -> None:
    (tmp_path / "link-to-www").symlink_to(tmp_path / "www")
    linked = tmp_path / "link-to-www" / "app"
    refused(do("ssh_file_read", linked, linked / "hello.txt"), "refused_file")


def test_a_symlink_component_is_refused_even_inside_the_prefix(app: Path, tmp_path: Path) -> None:
    (app / "real").mkdir()
    (app / "real" / "f.txt").write_text("inside\n")
    (app / "inside-link").symlink_to(app / "real")
    (app / "outside-link").symlink_to(tmp_path / "outside")
    for link in ("inside-link", "outside-link"):
        refused(do("ssh_file_read", app, app / link / "f.txt"), "refused_file")
        refused(do("ssh_dir_list", app, app / link), "refused_file")
        refused(do("ssh_file_create", app, app / link / "new.txt", data_b64=b64(b"x")), "refused_file")
    assert not (tmp_path / "outside" / "new.txt").exists()


def test_a_symlink_leaf_is_never_followed(app: Path, tmp_path: Path) -> None:
    (app / "secret-link").symlink_to(tmp_path / "outside" / "secret.txt")
    refused(do("ssh_file_read", app, app / "secret-link"), "refused_file")
    refused(do("ssh_file_write", app, app / "secret-link", data_b64=b64(b"x"), offset=0), "refused_file")
    refused(do("ssh_file_copy", app, app / "secret-link", app / "copy.txt"), "refused_file")
    refused(do("ssh_file_create", app, app / "secret-link", data_b64=b64(b"x")), "already_exists")
    refused(do("ssh_file_create", app, app / "secret-link", data_b64=b64(b"x"), overwrite=True), "refused_file")
    assert ok(do("ssh_file_delete", app, app / "secret-link")) == {"type": "symlink"}
    assert (tmp_path / "outside" / "secret.txt").read_text() == "SECRET\n"


def test_a_hard_link_is_refused(app: Path, tmp_path: Path) -> None:
    os.link(tmp_path / "outside" / "secret.txt", app / "hard.txt")
    assert "hard link" in refused(do("ssh_file_read", app, app / "hard.txt"), "refused_file")
    refused(do("ssh_file_write", app, app / "hard.txt", data_b64=b64(b"x"), append=True), "refused_file")
    refused(do("ssh_file_copy", app, app / "hard.txt", app / "c.txt"), "refused_file")
    refused(do("ssh_file_delete", app, app / "hard.txt"), "refused_file")
    assert (tmp_path / "outside" / "secret.txt").read_text() == "SECRET\n"


def test_a_fifo_is_refused_without_blocking(app: Path) -> None:
    os.mkfifo(app / "pipe")
    started = time.monotonic()
    assert "FIFO" in refused(do("ssh_file_read", app, app / "pipe"), "refused_file")
    refused(do("ssh_file_write", app, app / "pipe", data_b64=b64(b"x"), offset=0), "refused_file")
    assert time.monotonic() - started < 5


def test_a_missing_path_names_the_request_path_only(app: Path) -> None:
    message = refused(do("ssh_file_read", app, app / "no" / "such.txt"), "not_found")
    assert message.endswith(str(app / "no" / "such.txt"))
    refused(do("ssh_file_read", app, app / "hello.txt" / "x"), "conflict")  # a file where a directory must be


# --- files --------------------------------------------------------------------------------------------------


def test_read_in_chunks_with_sizes_digests_and_eof(app: Path) -> None:
    whole = ok(do("ssh_file_read", app, app / "hello.txt"))
    assert base64.b64decode(str(whole["data"])) == b"hello world\n"
    assert whole["sha256"] == hashlib.sha256(b"hello world\n").hexdigest()
    assert (whole["size"], whole["eof"], whole["offset"]) == (12, True, 0)
    part = ok(do("ssh_file_read", app, app / "hello.txt", offset=6, length=3))
    assert base64.b64decode(str(part["data"])) == b"wor" and part["eof"] is False and part["length"] == 3
    beyond = ok(do("ssh_file_read", app, app / "hello.txt", offset=100))
    assert beyond["length"] == 0 and beyond["eof"] is True


def test_read_is_capped(app: Path) -> None:
    (app / "big.bin").write_bytes(b"\x07" * (MAX_READ_BYTES + 100))
    refused(do("ssh_file_read", app, app / "big.bin", length=MAX_READ_BYTES + 1), "too_large")
    first = ok(do("ssh_file_read", app, app / "big.bin"))
    assert first["length"] == MAX_READ_BYTES and first["eof"] is False
    rest = ok(do("ssh_file_read", app, app / "big.bin", offset=MAX_READ_BYTES))
    assert rest["length"] == 100 and rest["eof"] is True
    refused(do("ssh_file_read", app, app), "refused_file")  # the prefix itself


def test_write_in_place_append_and_truncate(app: Path) -> None:
    target = app / "hello.txt"
    assert ok(do("ssh_file_write", app, target, data_b64=b64(b"HELLO"), offset=0))["size"] == 12
    assert target.read_bytes() == b"HELLO world\n"
    appended = ok(do("ssh_file_write", app, target, data_b64=b64(b"more\n"), append=True))
    assert appended == {"written": 5, "size": 17, "sha256": hashlib.sha256(b"more\n").hexdigest()}
    ok(do("ssh_file_write", app, target, data_b64=b64(b"J"), offset=0, truncate=True))
    assert target.read_bytes() == b"J"
    refused(do("ssh_file_write", app, target, data_b64=b64(b"x"), offset=5), "invalid_request")  # no holes
    refused(do("ssh_file_write", app, target, data_b64=b64(b"x")), "invalid_request")  # neither offset nor append
    refused(do("ssh_file_write", app, target, data_b64=b64(b"x"), offset=0, append=True), "invalid_request")
    refused(do("ssh_file_write", app, app / "new.txt", data_b64=b64(b"x"), offset=0), "not_found")
    refused(do("ssh_file_write", app, target, data_b64="not base64!", offset=0), "invalid_request")


def test_write_and_create_are_capped(app: Path) -> None:
    over = b64(b"x" * (MAX_WRITE_BYTES + 1))
    refused(do("ssh_file_write", app, app / "hello.txt", data_b64=over, offset=0), "too_large")
    refused(do("ssh_file_create", app, app / "big.txt", data_b64=over), "too_large")
    assert not (app / "big.txt").exists()
    assert ok(do("ssh_file_create", app, app / "max.txt", data_b64=b64(b"x" * MAX_WRITE_BYTES)))["size"] == (
        MAX_WRITE_BYTES
    )


def test_create_new_exclusive_and_overwrite(app: Path) -> None:
    created = ok(do("ssh_file_create", app, app / "new.txt", data_b64=b64(b"v1")))
    assert created == {"size": 2, "sha256": hashlib.sha256(b"v1").hexdigest(), "replaced": False}
    assert stat.S_IMODE((app / "new.txt").stat().st_mode) == 0o644
    refused(do("ssh_file_create", app, app / "new.txt", data_b64=b64(b"v2")), "already_exists")
    (app / "new.txt").chmod(0o750)
    assert ok(do("ssh_file_create", app, app / "new.txt", data_b64=b64(b"v2"), overwrite=True))["replaced"] is True
    assert (app / "new.txt").read_bytes() == b"v2" and stat.S_IMODE((app / "new.txt").stat().st_mode) == 0o750
    (app / "dir").mkdir()
    refused(do("ssh_file_create", app, app / "dir", data_b64=b64(b"x"), overwrite=True), "conflict")
    refused(do("ssh_file_create", app, app, data_b64=b64(b"x"), overwrite=True), "refused_file")
    assert not [path for path in app.iterdir() if path.name.endswith(".tmp")]  # no temp file left behind


def test_delete_a_file_not_a_directory_not_the_prefix(app: Path) -> None:
    assert ok(do("ssh_file_delete", app, app / "hello.txt")) == {"type": "file"}
    assert not (app / "hello.txt").exists()
    refused(do("ssh_file_delete", app, app / "hello.txt"), "not_found")
    (app / "dir").mkdir()
    refused(do("ssh_file_delete", app, app / "dir"), "conflict")
    refused(do("ssh_file_delete", app, app), "refused_file")


def test_move_renames_without_replacing_unless_asked(app: Path) -> None:
    (app / "b.txt").write_text("b\n")
    refused(do("ssh_file_move", app, app / "hello.txt", app / "b.txt"), "already_exists")
    assert (app / "b.txt").read_text() == "b\n"
    assert ok(do("ssh_file_move", app, app / "hello.txt", app / "b.txt", overwrite=True))["replaced"] is True
    assert (app / "b.txt").read_text() == "hello world\n" and not (app / "hello.txt").exists()
    (app / "d").mkdir()
    assert ok(do("ssh_file_move", app, app / "d", app / "e")) == {"type": "dir", "replaced": False}
    refused(do("ssh_file_move", app, app, app / "x"), "refused_file")
    refused(do("ssh_file_move", app, app / "b.txt", app.parent / "app2" / "b.txt"), "invalid_request")
    assert not (app.parent / "app2" / "b.txt").exists()


def test_copy_through_descriptors(app: Path) -> None:
    copied = ok(do("ssh_file_copy", app, app / "hello.txt", app / "copy.txt"))
    assert copied == {"size": 12, "sha256": hashlib.sha256(b"hello world\n").hexdigest(), "replaced": False}
    assert (app / "copy.txt").read_text() == "hello world\n"
    refused(do("ssh_file_copy", app, app / "hello.txt", app / "copy.txt"), "already_exists")
    (app / "hello.txt").write_text("v2\n")
    assert ok(do("ssh_file_copy", app, app / "hello.txt", app / "copy.txt", overwrite=True))["replaced"] is True
    assert (app / "copy.txt").read_text() == "v2\n"
    (app / "dir").mkdir()
    refused(do("ssh_file_copy", app, app / "dir", app / "dir2"), "conflict")


# --- directories --------------------------------------------------------------------------------------------


def test_list_sorted_with_types_modes_and_link_targets(app: Path) -> None:
    (app / "sub").mkdir(mode=0o750)
    (app / "sub").chmod(0o750)
    (app / "link").symlink_to("/etc/shadow")
    os.mkfifo(app / "fifo")
    listing = ok(do("ssh_dir_list", app, app))
    entries = listing["entries"]
    assert isinstance(entries, list) and listing["truncated"] is False
    by_name = {entry["name"]: entry for entry in entries}
    assert [entry["name"] for entry in entries] == ["fifo", "hello.txt", "link", "sub"]
    assert by_name["hello.txt"]["type"] == "file" and by_name["hello.txt"]["size"] == 12
    assert by_name["sub"]["type"] == "dir" and by_name["sub"]["mode"] == "0750"
    assert by_name["link"]["type"] == "symlink" and by_name["link"]["target"] == "/etc/shadow"
    assert by_name["fifo"]["type"] == "other"


def test_a_name_that_is_not_utf8_is_listed_with_backslash_escapes(app: Path) -> None:
    os.close(os.open(os.fsencode(app) + b"/caf\xe9", os.O_CREAT | os.O_WRONLY, 0o644))
    names = [entry["name"] for entry in ok(do("ssh_dir_list", app, app))["entries"]]
    assert "caf\\xe9" in names


def test_list_is_capped(app: Path) -> None:
    many = app / "many"
    many.mkdir()
    for index in range(MAX_LIST_ENTRIES + 1):
        (many / f"f{index:05d}").touch()
    listing = ok(do("ssh_dir_list", app, many))
    entries = listing["entries"]
    assert isinstance(entries, list) and len(entries) == MAX_LIST_ENTRIES and listing["truncated"] is True
    assert entries[0]["name"] == "f00000" and entries[-1]["name"] == f"f{MAX_LIST_ENTRIES - 1:05d}"


def test_tree_is_flat_bounded_by_depth_and_never_follows_links(app: Path, tmp_path: Path) -> None:
    (app / "a" / "b" / "c").mkdir(parents=True)
    (app / "a" / "b" / "c" / "deep.txt").write_text("d")
    (app / "a" / "out").symlink_to(tmp_path / "outside")
    tree = ok(do("ssh_dir_tree", app, app, depth=3))
    paths = [entry["path"] for entry in tree["entries"]]
    assert paths == ["a", "a/b", "a/b/c", "a/out", "hello.txt"]
    deeper = ok(do("ssh_dir_tree", app, app, depth=4))
    assert "a/b/c/deep.txt" in [entry["path"] for entry in deeper["entries"]]
    assert not any("secret" in str(entry) for entry in deeper["entries"])
    refused(do("ssh_dir_tree", app, app, depth=0), "invalid_request")
    refused(do("ssh_dir_tree", app, app, depth=17), "invalid_request")


def test_dir_create_makes_missing_parents_like_mkdir_p(app: Path, tmp_path: Path) -> None:
    made = ok(do("ssh_dir_create", app, app / "x" / "y" / "z"))
    assert made == {"created": [str(app / "x"), str(app / "x" / "y"), str(app / "x" / "y" / "z")]}
    assert stat.S_IMODE((app / "x" / "y").stat().st_mode) & 0o755 == 0o755
    assert ok(do("ssh_dir_create", app, app / "x" / "y")) == {"created": []}
    refused(do("ssh_dir_create", app, app / "hello.txt" / "sub"), "conflict")
    (app / "out").symlink_to(tmp_path / "outside")
    refused(do("ssh_dir_create", app, app / "out" / "planted"), "refused_file")
    assert not (tmp_path / "outside" / "planted").exists()


def test_dir_delete_only_an_empty_directory(app: Path) -> None:
    (app / "full").mkdir()
    (app / "full" / "f").touch()
    refused(do("ssh_dir_delete", app, app / "full"), "conflict")
    (app / "empty").mkdir()
    assert ok(do("ssh_dir_delete", app, app / "empty")) == {"removedFiles": 0, "removedDirs": 1}
    refused(do("ssh_dir_delete", app, app / "hello.txt"), "conflict")
    refused(do("ssh_dir_delete", app, app), "refused_file")


def test_recursive_delete_removes_the_tree_but_never_what_a_link_points_to(app: Path, tmp_path: Path) -> None:
    top = app / "build"
    (top / "a" / "b").mkdir(parents=True)
    (top / "a" / "b" / "f1").write_text("1")
    (top / "f2").write_text("2")
    (top / "to-outside").symlink_to(tmp_path / "outside")  # a link to a directory outside
    (top / "a" / "to-secret").symlink_to(tmp_path / "outside" / "secret.txt")
    os.mkfifo(top / "fifo")
    os.link(tmp_path / "outside" / "secret.txt", top / "hard")  # removed as a name: its other name survives
    counts = ok(do("ssh_dir_delete_recursive", app, top))
    assert counts == {"removedFiles": 6, "removedDirs": 3}
    assert not top.exists()
    assert (tmp_path / "outside" / "secret.txt").read_text() == "SECRET\n"
    assert [path.name for path in (tmp_path / "outside").iterdir()] == ["secret.txt"]


def test_recursive_delete_refuses_the_prefix_and_a_link(app: Path, tmp_path: Path) -> None:
    refused(do("ssh_dir_delete_recursive", app, app), "refused_file")
    (app / "link").symlink_to(tmp_path / "outside")
    refused(do("ssh_dir_delete_recursive", app, app / "link"), "refused_file")
    assert (tmp_path / "outside" / "secret.txt").exists() and app.exists()


# --- the job's own checks -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"[]",
        b'{"op": "ssh_file_read"}',
        b'{"op": "ssh_file_read", "prefix": "/srv", "paths": ["/srv/a"], "extra": 1}',
        b'{"op": "ssh_file_read", "prefix": "/srv", "paths": "/srv/a"}',
        b'{"op": "ssh_file_read", "prefix": "/srv", "paths": ["/srv/a"], "offset": -1}',
        b'{"op": "ssh_file_read", "prefix": "/srv", "paths": ["/srv/a"], "offset": true}',
        b'{"op": "ssh_file_move", "prefix": "/srv", "paths": ["/srv/a"]}',
        b'{"op": "rm -rf", "prefix": "/srv", "paths": ["/srv/a"]}',
        b"[" * 100_000,
        b" " * (256 * 1024 + 1),
    ],
)
def test_a_malformed_job_is_invalid_not_a_crash(raw: bytes) -> None:
    with pytest.raises(OpError) as refusal:
        decode_job(raw)
    assert refusal.value.kind == "invalid_request"


# --- exec ---------------------------------------------------------------------------------------------------


def run(app: Path, *argv: str, timeout: int = 30, cwd: str = "") -> dict[str, Any]:
    result = ok(do("ssh_exec", app, argv=argv, cwd=cwd or str(app), timeout_seconds=timeout))
    for stream in ("stdout", "stderr"):
        result[stream] = base64.b64decode(str(result[stream]))
    return result


def test_exec_scrubbed_environment_working_directory_and_streams(app: Path) -> None:
    (app / "sub").mkdir()
    ran = run(app, "/bin/sh", "-c", "pwd; env | sort; echo oops >&2; cat; exit 3", cwd=str(app / "sub"))
    assert ran["exitCode"] == 3 and ran["signal"] is None and ran["timedOut"] is False
    lines = ran["stdout"].decode().splitlines()
    assert lines[0] == str(app / "sub")
    names = {line.split("=", 1)[0] for line in lines[1:]}
    assert names <= {"HOME", "LANG", "LOGNAME", "PATH", "PWD", "USER", "SHLVL", "_"}, names
    assert "PATH=/usr/local/bin:/usr/bin:/bin" in lines and "HOME=/nonexistent" in lines and "USER=tester" in lines
    assert ran["stderr"] == b"oops\n"  # and `cat` read /dev/null: it returned at once


def test_exec_finds_a_bare_name_in_the_fixed_path_only(app: Path) -> None:
    assert run(app, "true")["exitCode"] == 0
    refused(do("ssh_exec", app, argv=("no-such-program-p0",), cwd=str(app)), "not_found")
    refused(do("ssh_exec", app, argv=("./true",), cwd=str(app)), "invalid_request")
    refused(do("ssh_exec", app, argv=(), cwd=str(app)), "invalid_request")


def test_exec_working_directory_is_resolved_without_links(app: Path, tmp_path: Path) -> None:
    (app / "out").symlink_to(tmp_path / "outside")
    refused(do("ssh_exec", app, argv=("/bin/pwd",), cwd=str(app / "out")), "refused_file")
    refused(do("ssh_exec", app, argv=("/bin/pwd",), cwd=str(tmp_path / "outside")), "invalid_request")
    assert run(app, "/bin/pwd")["stdout"] == f"{app}\n".encode()


def test_exec_timeout_kills_the_command_and_its_group(app: Path) -> None:
    started = time.monotonic()
    ran = run(app, "/bin/sh", "-c", "sleep 100 & echo started; sleep 100", timeout=1)
    assert ran["timedOut"] is True and ran["signal"] == signal.SIGKILL and ran["exitCode"] is None
    assert ran["stdout"] == b"started\n"
    assert 0.9 <= time.monotonic() - started < 5


def test_exec_output_flood_is_truncated_at_the_cap(app: Path) -> None:
    started = time.monotonic()
    ran = run(app, "/usr/bin/yes", timeout=30)
    assert len(ran["stdout"]) == MAX_STREAM_BYTES
    assert ran["truncated"] is True and ran["truncatedStreams"] == ["stdout"]
    assert ran["signal"] == signal.SIGPIPE and ran["timedOut"] is False  # ended by the closed pipe
    assert time.monotonic() - started < 10
    exact = run(app, "/bin/sh", "-c", f"head -c {MAX_STREAM_BYTES} /dev/zero")
    assert exact["truncated"] is False and len(exact["stdout"]) == MAX_STREAM_BYTES
