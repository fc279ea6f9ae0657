"""Issue 14 item 4, through the running daemon in the namespace sandbox: two deliveries of one request id with
different keys, both in flight at once. The second must never get the first's success (its key would never be
written): it is refused with 409, naming the field that differs and not echoing the key. A retry that repeats the
first's body still merges with it, and the change is applied once.

The first grant is held in flight by the test itself taking the user's file lock (host/locks.py) that the
pipeline takes before it plans; the test sees the daemon's thread wait on it in /proc/locks.
"""

from __future__ import annotations

import os
import pwd
import threading
import time
from pathlib import Path

import pytest

from p0_ssh_agent.host import locks
from provisioning_support import Daemon, authorized_keys, make_keys, running_daemon
from sandbox.fixtures import Sandbox, make_keypair, unique_user_name

pytestmark = pytest.mark.sandbox


class Post(threading.Thread):
    def __init__(self, daemon: Daemon, data: dict[str, object]) -> None:
        super().__init__(daemon=True)
        self.data, self.target_daemon = data, daemon
        self.answer: tuple[int, dict[str, object]] | None = None

    def run(self) -> None:
        self.answer = self.target_daemon.post(self.data, timeout=120)


def waiters_on(path: Path) -> int:
    """Processes blocked in flock(2) on `path` (the "->" lines of /proc/locks for its inode)."""
    info = path.stat()
    device = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    lines = Path("/proc/locks").read_text().splitlines()
    return sum(1 for line in lines if "->" in line and device in line)


def test_same_request_id_with_another_key_is_refused_409_and_never_falsely_succeeds(
    sandbox: Sandbox, tmp_path: Path
) -> None:
    _, first_key = make_keypair(tmp_path, "first")
    _, other_key = make_keypair(tmp_path, "other")
    name = unique_user_name()
    with running_daemon(tmp_path, make_keys(tmp_path)) as daemon:
        status, body = daemon.post({"command": "provisionUser", "userName": name, "action": "grant", "requestId": "u1"})
        assert status == 200 and body.get("success") is True, body
        uid = pwd.getpwnam(name).pw_uid
        grant = {"command": "provisionAuthorizedKeys", "userName": name, "action": "grant", "requestId": "k1"}
        lock_dir = tmp_path / "state" / "locks"
        with locks.user_file_lock(uid, lock_dir=str(lock_dir)):
            first = Post(daemon, {**grant, "publicKey": first_key})
            first.start()
            deadline = time.monotonic() + 60
            while waiters_on(lock_dir / f"uid-{uid}.lock") == 0:  # the first grant is in flight, waiting on us
                assert time.monotonic() < deadline, daemon.log.read_text()[-3000:]
                time.sleep(0.05)
            retry = Post(daemon, {**grant, "publicKey": first_key})
            other = Post(daemon, {**grant, "publicKey": other_key})
            retry.start()
            other.start()
            other.join(timeout=30)  # answered while the first still waits on the lock
            assert other.answer is not None, "the other payload waited for the first instead of being refused"
            assert first.answer is None
        first.join(timeout=60)
        retry.join(timeout=60)
    status, refused = other.answer
    assert status == 409 and refused.get("success") is False, refused
    error = str(refused.get("error"))
    assert "already in progress with another payload (differs in: publickey)" in error
    assert other_key.split()[1] not in error and first_key.split()[1] not in error
    assert first.answer is not None and retry.answer is not None
    assert first.answer[0] == 200 and first.answer[1].get("success") is True, first.answer
    assert retry.answer[1].get("success") is True and retry.answer[1].get("message") == first.answer[1].get("message")
    text = authorized_keys(name).read_text()
    assert text.count(first_key.split()[1]) == 1  # applied once, for the first and its retry together
    assert other_key.split()[1] not in text
