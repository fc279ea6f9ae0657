"""Every hostile request through the running daemon: a clear error naming the field, and no file anywhere changed.

The agent runs for real (`p0-ssh-agent start`, not in dry-run) against the dev backend, inside the namespace
sandbox, after a legitimate grant has created a user with a key (so the hostile requests have something to
damage). /etc, /home and the agent's state directory are hashed before and after the corpus
(tests/hostile_corpus.py, over 500 cases).
"""

from __future__ import annotations

import http.client
import json
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from hostile_corpus import GOOD_ID, GOOD_KEY, GOOD_USER, cases
from provisioning_support import tree_digest
from reliability.figures import record

pytestmark = pytest.mark.sandbox

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
ORG, HOST = "hostile-org", "host-1"
CLIENT_ID = f"{ORG}:{HOST}:ssh"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def post(port: int, data: object) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request("POST", f"/client/{CLIENT_ID}", json.dumps(data), {"content-type": "application/json"})
        response = connection.getresponse()
        body = json.loads(response.read() or b"{}")
        return response.status, body
    finally:
        connection.close()


@pytest.fixture
def daemon(sandbox: object, tmp_path: Path) -> Iterator[int]:
    """A real agent connected to a dev backend; yields the backend's HTTP port."""
    keys = tmp_path / "keys"
    subprocess.run([str(AGENT), "keygen", "--key-path", str(keys)], check=True, capture_output=True)
    rpc_port, http_port = _free_port(), _free_port()
    config = tmp_path / "config.yaml"
    config.write_text(
        f"orgId: {ORG}\nhostId: {HOST}\ntunnelHost: ws://127.0.0.1:{rpc_port}\nkeyPath: {keys}\n"
        f"stateDir: {tmp_path / 'state'}\nheartbeatIntervalSeconds: 30\n"
    )
    log = (tmp_path / "daemon.log").open("w")
    backend = subprocess.Popen(
        [str(AGENT), "dev-backend", "--rpc-listen", f"127.0.0.1:{rpc_port}", "--http-listen",
         f"127.0.0.1:{http_port}", "--public-key", str(keys / "jwk.public.json"), "--call-timeout-ms", "20000"],
        stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    agent = subprocess.Popen([str(AGENT), "start", "--config", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                status, _ = post(http_port, {"command": "listUsers"})
                if status == 200:
                    break
            except OSError:
                pass
            assert time.monotonic() < deadline, (tmp_path / "daemon.log").read_text()[-3000:]
            time.sleep(0.1)
        yield http_port
    finally:
        for process in (agent, backend):
            process.terminate()
        for process in (agent, backend):
            process.wait(timeout=15)
        log.close()


def test_hostile_requests_change_nothing_and_name_the_field(daemon: int, tmp_path: Path) -> None:
    grant = {"userName": GOOD_USER, "action": "grant", "requestId": GOOD_ID}
    assert post(daemon, {"command": "provisionUser", **grant})[1]["success"] is True
    assert post(daemon, {"command": "provisionAuthorizedKeys", "publicKey": GOOD_KEY, **grant})[1]["success"] is True
    roots = (Path("/etc"), Path("/home"), tmp_path / "state")
    before = tree_digest(*roots)

    corpus = list(cases())
    assert len(corpus) >= 300
    wrong: list[str] = []
    for label, data, field in corpus:
        status, body = post(daemon, data)
        error = str(body.get("error", ""))
        if status < 400 or body.get("success") is not False or field.lower() not in error.lower():
            wrong.append(f"{label}: HTTP {status} {json.dumps(body)[:200]}")
    assert not wrong, f"{len(wrong)} of {len(corpus)} hostile requests were not refused by field:\n" + "\n".join(
        wrong[:30]
    )

    after = tree_digest(*roots)
    changed = sorted(path for path in before.keys() | after.keys() if before.get(path) != after.get(path))
    record(hostile_cases=len(corpus), hostile_not_refused=len(wrong), hostile_files_changed=len(changed))
    assert changed == [], f"hostile requests changed files: {changed[:20]}"
    # The daemon is still healthy afterwards: a legitimate revoke works.
    revoke = {"command": "provisionAuthorizedKeys", "userName": GOOD_USER, "action": "revoke", "requestId": GOOD_ID}
    assert post(daemon, revoke)[1]["success"] is True
