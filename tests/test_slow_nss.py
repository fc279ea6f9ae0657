"""Fault injection: slow NSS (issue 8). A small LD_PRELOAD library (tests/fixtures/slow_nss.c, built here with gcc)
makes every passwd and group lookup the agent makes through libc wait before asking the real NSS, as on a host
whose LDAP or sssd backend is timing out. Through the running daemon in the namespace sandbox:

* grants and revokes still come out right, and the connection survives (lookups run off the event loop, so the
  heartbeat is never starved);
* kill -9 while a slow grant is in flight, restart without the fault: every file parses, `visudo -c` passes, the
  user's own line is intact, and the retried grant completes.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest

from provisioning_support import (
    DROPIN,
    Daemon,
    authorized_keys,
    make_keys,
    running_daemon,
    visudo_ok,
)
from reliability.figures import record
from sandbox.fixtures import Sandbox, make_keypair, unique_user_name

pytestmark = pytest.mark.sandbox
SOURCE = Path(__file__).resolve().parent / "fixtures" / "slow_nss.c"
DELAY_MS = 150


@pytest.fixture(scope="module")
def slow_nss(tmp_path_factory: pytest.TempPathFactory) -> Path:
    gcc = shutil.which("gcc")
    assert gcc is not None, "gcc is needed to build the slow-NSS shim (`make test` installs it)"
    library = tmp_path_factory.mktemp("nss") / "slow_nss.so"
    subprocess.run([gcc, "-shared", "-fPIC", "-O2", "-o", str(library), str(SOURCE), "-ldl"], check=True, timeout=120)
    return library


def slow_lookup_seconds(library: Path) -> float:
    """Proof the shim is in force: two lookups through it in a child with the same environment as the agent."""
    started = time.monotonic()
    subprocess.run(
        ["/usr/bin/id", "-un", "root"],
        env={"PATH": "/usr/bin:/bin", "LD_PRELOAD": str(library), "P0_TEST_NSS_DELAY_MS": str(DELAY_MS)},
        capture_output=True,
        check=True,
        timeout=60,
    )
    return time.monotonic() - started


def grant(name: str, request_id: str, public: str) -> list[dict[str, object]]:
    base = {"userName": name, "action": "grant", "requestId": request_id}
    return [
        {"command": "provisionUser", **base},
        {"command": "provisionAuthorizedKeys", **base, "publicKey": public},
        {"command": "provisionSudo", **base, "sudo": True},
    ]


def revoke_everything(daemon: Daemon, name: str, request_id: str) -> None:
    for command in ("provisionSudo", "provisionAuthorizedKeys", "provisionUser"):
        status, body = daemon.post({"command": command, "userName": name, "action": "revoke", "requestId": request_id})
        assert status == 200 and body.get("success") is True, (command, status, body)


def test_grants_and_revokes_come_out_right_with_slow_nss(sandbox: Sandbox, slow_nss: Path, tmp_path: Path) -> None:
    assert slow_lookup_seconds(slow_nss) >= DELAY_MS / 1000  # the shim slows libc's lookups
    _, public = make_keypair(tmp_path)
    name = unique_user_name()
    env = {"LD_PRELOAD": str(slow_nss), "P0_TEST_NSS_DELAY_MS": str(DELAY_MS)}
    with running_daemon(tmp_path, make_keys(tmp_path / "agent"), agent_env=env) as daemon:
        for data in grant(name, "req-N1", public):
            status, body = daemon.post(data)
            assert status == 200 and body.get("success") is True, (data["command"], status, body)
        assert public in authorized_keys(name).read_text()
        assert f"{name} ALL=(ALL) NOPASSWD: ALL" in DROPIN.read_text() and visudo_ok()
        for command in ("provisionSudo", "provisionAuthorizedKeys", "provisionUser"):
            status, body = daemon.post(
                {"command": command, "userName": name, "action": "revoke", "requestId": "req-N1"}
            )
            assert status == 200 and body.get("success") is True, (command, status, body)
        log = daemon.log.read_text()
    assert not DROPIN.exists() or name not in DROPIN.read_text()
    assert "connect_failed" not in log and "heartbeat failed" not in log, log[-3000:]
    assert "Traceback" not in log, log[-3000:]
    record(fault=f"slow NSS ({DELAY_MS} ms per passwd/group lookup, LD_PRELOAD)")


def test_kill_during_a_slow_grant_leaves_nothing_broken(sandbox: Sandbox, slow_nss: Path, tmp_path: Path) -> None:
    _, public = make_keypair(tmp_path)
    name = unique_user_name()
    keys = make_keys(tmp_path / "agent")
    with running_daemon(tmp_path, keys) as daemon:  # the account, then a line of the user's own
        status, body = daemon.post(
            {"command": "provisionUser", "userName": name, "action": "grant", "requestId": "req-K"}
        )
        assert status == 200 and body.get("success") is True, body
    own_line = "# the user's own line\n"
    ssh_dir = authorized_keys(name).parent
    home = Path("/home", name).stat()
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    authorized_keys(name).write_text(own_line)
    for path in (ssh_dir, authorized_keys(name)):
        os.chown(path, home.st_uid, home.st_gid)

    # The same state directory (ledger) throughout: the daemons differ only in the fault.
    env = {"LD_PRELOAD": str(slow_nss), "P0_TEST_NSS_DELAY_MS": "400"}
    with running_daemon(tmp_path, keys, agent_env=env) as daemon:
        (agent,) = _agent_pids(tmp_path / "daemon.yaml")
        answers: list[tuple[int, dict[str, object]]] = []
        requests = grant(name, "req-K", public)[1:]

        def send_all() -> None:
            for request in requests:
                try:
                    answers.append(daemon.post(request, timeout=20))
                except OSError:  # the agent was killed under this call: the backend never answers it
                    answers.append((0, {}))
                    return

        sender = threading.Thread(target=send_all)
        sender.start()
        time.sleep(0.6)  # inside the first slow grant: each of its lookups takes 0.4 s
        os.kill(agent, signal.SIGKILL)
        sender.join(timeout=60)
    assert len(answers) < len(requests) or any(status != 200 for status, _ in answers), "the kill came too late"

    assert authorized_keys(name).read_text().startswith(own_line)
    assert visudo_ok()
    with running_daemon(tmp_path, keys) as daemon:  # restarted without the fault: the retried grants complete
        for data in grant(name, "req-K", public)[1:]:
            status, body = daemon.post(data)
            assert status == 200 and body.get("success") is True, (data["command"], body)
        assert authorized_keys(name).read_text().startswith(own_line) and public in authorized_keys(name).read_text()
        revoke_everything(daemon, name, "req-K")
    assert authorized_keys(name).read_text() == own_line  # exactly what the user had
    assert visudo_ok()
    leftovers = [p for d in (ssh_dir, Path("/etc/sudoers.d")) for p in d.iterdir() if ".tmp." in p.name]
    assert leftovers == []  # a temp file from the killed write is swept by the next edit of that file
    record(fault="kill -9 during a grant slowed by NSS")


def _agent_pids(config: Path) -> list[int]:
    """The `p0-ssh-agent start --config <config>` process (not the dev backend), from /proc."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"start" in argv and str(config).encode() in argv:
            found.append(int(entry.name))
    return found
