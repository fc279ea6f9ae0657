"""collectSudoshRecordings through `p0-ssh-agent command` in the namespace sandbox, on a real /var/log/sudosh.

Real accounts (useradd) own the files as sudosh would leave them: root for `sudo sudosh`, the user for sudosh as a
login shell. Another user's file named like the victim's is not exported, and one 1 MiB recording of "$ a" lines
(262,144 commands, so about 100 MiB of event JSON before the 1 MiB cap) is exported in bounded memory.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from peak_rss import measured_argv, read_peak_rss
from provisioning_support import AGENT, make_keys, write_config
from sandbox.fixtures import CHILD_ENV, Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox

LOG_DIR = Path("/var/log/sudosh")
# The agent's own size (Python, trio, the config) is some 50-70 MiB; the whole export under the cap adds a few tens.
# Before the export was streamed this recording took 500-700 MiB.
PEAK_RSS_BOUND_KIB = 256 * 1024


@pytest.fixture
def log_dir(sandbox: Sandbox) -> Iterator[Path]:
    """/var/log/sudosh as sudosh2's package makes it (0733 root); /var/log is the sandbox's scratch copy."""
    LOG_DIR.mkdir(mode=0o733)
    LOG_DIR.chmod(0o733)
    yield LOG_DIR
    for entry in LOG_DIR.iterdir():
        entry.unlink()
    LOG_DIR.rmdir()


def recording(log_dir: Path, name: str, script: bytes, *, owner: int, timing: bytes = b"1.0 4\n") -> str:
    """A script/timing pair as sudosh writes it: mode 0600, owned by the account sudosh ran as."""
    for path, data in ((log_dir / name, script), (log_dir / name.replace("-script-", "-time-"), timing)):
        path.write_bytes(data)
        path.chmod(0o600)
        os.chown(path, owner, owner)
    return name


def export(config: Path, user: str, out: Path) -> tuple[dict[str, object], int]:
    """`p0-ssh-agent command --command collectSudoshRecordings`: its result and its peak RSS in KiB."""
    argv = [str(AGENT), "command", "--config", str(config), "--command", "collectSudoshRecordings", "--username", user]
    rss_file = out.with_suffix(".rss")
    with out.open("wb") as stdout_file:
        code = subprocess.run(
            measured_argv(rss_file, argv), stdout=stdout_file, stderr=subprocess.STDOUT, env=CHILD_ENV, timeout=300,
            check=False,
        ).returncode  # fmt: skip
    peak = read_peak_rss(rss_file) // 1024
    stdout = out.read_text()
    _head, marker, tail = stdout.partition("Execution Result:\n")
    assert marker and code == 0, stdout[-3000:]
    return json.loads(tail), peak


def session_ids(output: str) -> list[str]:
    return [line.removeprefix("SESSION_ID: ") for line in output.splitlines() if line.startswith("SESSION_ID: ")]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    return write_config(tmp_path, make_keys(tmp_path))


def test_a_file_planted_by_another_user_is_not_exported_as_the_victims(
    sandbox: Sandbox, log_dir: Path, config: Path, tmp_path: Path
) -> None:
    alice, mallory = unique_user_name(), unique_user_name()
    alice_uid = sandbox.useradd(alice).pw_uid
    mallory_uid = sandbox.useradd(mallory).pw_uid
    try:
        as_root = recording(log_dir, f"{alice}-root-script-1710000000-r", b"$ id\n", owner=0)
        own = recording(log_dir, f"{alice}-{alice}-script-1710000001-o", b"$ ls\n", owner=alice_uid)
        planted = recording(log_dir, f"{alice}-root-script-1710000002-p", b"$ rm -rf /srv\n", owner=mallory_uid)

        result, _peak = export(config, alice, tmp_path / "out")
        assert result["success"] is True, result
        output = str(result["output"])
        assert session_ids(output) == sorted([as_root, own])  # name order, as upstream
        assert "rm -rf" not in output and base64.b64encode(b"$ rm -rf /srv\n").decode() not in output
        assert f"WARNING: {planted} is owned by uid {mallory_uid}, not root or {alice}" in output
        assert "Found 2 matching session(s)" in output
    finally:
        sandbox.userdel(alice)
        sandbox.userdel(mallory)


def test_a_one_mebibyte_recording_exports_in_bounded_memory(
    sandbox: Sandbox, log_dir: Path, config: Path, tmp_path: Path
) -> None:
    alice = unique_user_name()
    sandbox.useradd(alice)
    try:
        name = recording(log_dir, f"{alice}-root-script-1710000000-big", b"$ a\n" * (1 << 18), owner=0)
        result, peak_kib = export(config, alice, tmp_path / "out")
        assert result["success"] is True, result
        output = str(result["output"])
        assert session_ids(output) == [name]
        assert output.endswith("...[truncated: output exceeded 1 MiB]\n")
        assert len(output.encode()) <= 1024 * 1024
        assert peak_kib < PEAK_RSS_BOUND_KIB, f"peak RSS {peak_kib} KiB"
        print(f"collectSudoshRecordings of a 1 MiB recording: peak RSS {peak_kib} KiB")
    finally:
        sandbox.userdel(alice)
