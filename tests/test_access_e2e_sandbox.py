"""Agent access end to end (issue 17): the real daemon behind the dev backend, in the namespace sandbox.

`p0-ssh-agent start` with agentAccess on, accounts made by useradd and listed, a trust file and UCANs and
cosignatures made with agent_access/minting.py from local keys, and the five starter policies
(docs/policies/agent-access/) copied into the agent-access policy file with their host kept, their accounts and
paths replaced by the test's. Every command goes through the dev backend's HTTP side, the tunnel, the worker's
agent-access lane, the line and the confined worker (namespace mode: there is no systemd here), and every claim is
checked in the answer and on disk. /var/www is the host's, so the deploy bot's "/var/www/app" is a directory under
/var/lib (the sandbox's overlay); /var/log is the sandbox's own, so the log scraper reads a real /var/log/myapp-*.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import signal
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from access_support import (
    APPROVER,
    STARTER_NAMES,
    access_config,
    access_files,
    b64,
    body,
    call,
    cosigned,
    entries,
    refused,
    result_of,
    starter_text,
    ucan_for,
)
from p0_ssh_agent.agent_access.access_model import MAX_WRITE_BYTES
from provisioning_support import Daemon, make_keys, running_daemon
from sandbox.fixtures import Sandbox, unique_user_name

pytestmark = pytest.mark.sandbox

STRANGER_KEY = Ed25519PrivateKey.generate()


@dataclass
class AccessHost:
    """The test's host: its accounts (role -> name), their prefixes, the agent's files and configuration."""

    directory: Path
    keys: Path
    users: dict[str, str]
    www: Path  # the deploy bot's /var/www/app
    srv: Path  # the incident-recovery agent's /srv/app
    logs: Path  # the log scraper's /var/log/myapp
    audit: Path
    extra: dict[str, object] = field(default_factory=dict)

    def daemon(self, **changes: object) -> contextlib.AbstractContextManager[Daemon]:
        return running_daemon(self.directory, self.keys, extra={**self.extra, **changes})


@pytest.fixture
def host(sandbox: Sandbox, tmp_path: Path) -> Iterator[AccessHost]:
    tag = uuid.uuid4().hex[:8]
    root = Path("/var/lib") / f"p0-e2e-{tag}"  # /var/lib is the sandbox's overlay: writes stay in its tmpfs
    users = {role: unique_user_name() for role in ("deploy", "recovery", "logs", "stranger")}
    for name in users.values():
        sandbox.useradd(name)
    www, srv, logs = root / "www" / "app", root / "srv" / "app", Path("/var/log") / f"myapp-{tag}"
    for prefix, owner in ((www, users["deploy"]), (srv, users["recovery"]), (logs, None)):
        prefix.mkdir(parents=True, mode=0o755)
        for parent in (prefix, *prefix.parents):
            if parent in (Path("/var/lib"), Path("/var/log"), Path("/var"), Path("/")):
                break
            parent.chmod(0o755)
        if owner is not None:
            shutil.chown(prefix, owner, owner)
    text = starter_text(
        STARTER_NAMES,
        (
            ("/var/www/app", str(www)),
            ("/srv/app", str(srv)),
            ("/var/log/myapp", str(logs)),
            ('"deploy"', f'"{users["deploy"]}"'),
            ('"recovery"', f'"{users["recovery"]}"'),
            ('"log-reader"', f'"{users["logs"]}"'),
        ),
    )
    policy, trust = access_files(tmp_path, text)
    audit = tmp_path / "audit.jsonl"
    listed = [users["deploy"], users["recovery"], users["logs"]]
    extra: dict[str, object] = access_config(listed, policy, trust, audit)
    yield AccessHost(tmp_path, make_keys(tmp_path), users, www, srv, logs, audit, extra)
    shutil.rmtree(root, ignore_errors=True)
    shutil.rmtree(logs, ignore_errors=True)
    for name in users.values():
        sandbox.userdel(name)


def audit_entries(host: AccessHost) -> list[dict[str, object]]:
    lines = host.audit.read_text().splitlines() if host.audit.exists() else []
    return [entry for entry in map(json.loads, lines) if entry.get("event") == "agent-access"]


# --- the three use cases -------------------------------------------------------------------------------------


def test_deploy_bot_uploads_a_build_in_chunks_and_may_never_exec(host: AccessHost) -> None:
    user, app = host.users["deploy"], host.www
    token = ucan_for(user, app)  # everything on the prefix: the policy (ssh:sftp-upload) narrows it
    build = os.urandom(2 * MAX_WRITE_BYTES + 12_345)
    chunks = [build[at : at + MAX_WRITE_BYTES] for at in range(0, len(build), MAX_WRITE_BYTES)]
    release, target = f"{app}/releases/v1", f"{app}/releases/v1/app.tar"
    with host.daemon() as daemon:
        assert result_of(call(daemon, body("ssh_dir_create", user, token, path=release)))
        created = call(daemon, body("ssh_file_create", user, token, path=target, data=b64(chunks[0])))
        assert created["success"] is True and result_of(created)["size"] == len(chunks[0])
        for index, chunk in enumerate(chunks[1:], start=1):
            offset = index * MAX_WRITE_BYTES
            written = result_of(
                call(daemon, body("ssh_file_write", user, token, path=target, data=b64(chunk), offset=offset))
            )
            assert written["written"] == len(chunk) and written["sha256"] == hashlib.sha256(chunk).hexdigest()
        [listed] = entries(result_of(call(daemon, body("ssh_dir_list", user, token, path=release))))
        assert (listed["name"], listed["type"], listed["size"], listed["mode"]) == (
            "app.tar",
            "file",
            len(build),
            "0644",
        )
        # Exec: refused without a cosignature (step-up by default), and by the policy's forbid with one.
        refused(
            daemon, body("ssh_exec", user, token, argv=["/usr/bin/id"]), 403, "step_up_required", "needs a cosignature"
        )
        error = refused(
            daemon, cosigned(body("ssh_exec", user, token, argv=["/usr/bin/id"])), 403, "denied_by_policy", "denied"
        )
        assert error == "denied by policy ssh:sftp-upload:no-exec (forbid)"
        refused(daemon, body("ssh_file_read", user, token, path=target), 403, "denied_by_policy", "default-deny")
        sibling = f"{app}2/evil.html"  # a string prefix of the capability's, not a directory beneath it
        error = refused(
            daemon, body("ssh_file_create", user, token, path=sibling, data=b64(b"x")), 403, "outside_capability", ""
        )
        assert error == f"outside the capability: {sibling} is not under {app}"
    assert Path(target).read_bytes() == build
    info = Path(target).stat()
    assert info.st_uid == Path(app).stat().st_uid and info.st_nlink == 1  # written as the account itself
    assert not Path(f"{app}2").exists()
    writes = [
        e for e in audit_entries(host) if e["command"] in ("ssh_file_create", "ssh_file_write") and e["outcome"] == "ok"
    ]
    assert [e["content_sha256"] for e in writes] == ["sha256:" + hashlib.sha256(c).hexdigest() for c in chunks]
    denied = [e for e in audit_entries(host) if e["command"] == "ssh_exec"]
    assert [e["outcome"] for e in denied] == ["step_up_required", "denied_by_policy"]
    assert denied[1]["policy"] == "ssh:sftp-upload:no-exec" and denied[1]["approver"] == APPROVER


def test_incident_recovery_full_crud_deletes_and_exec_need_step_up_once(host: AccessHost) -> None:
    user, app = host.users["recovery"], host.srv
    token = ucan_for(user, app)
    conf, backup = f"{app}/app.conf", f"{app}/old/app.conf.bak"
    with host.daemon() as daemon:
        call(daemon, body("ssh_file_create", user, token, path=conf, data=b64(b"broken=1\n")))
        read = result_of(call(daemon, body("ssh_file_read", user, token, path=conf)))
        assert base64.b64decode(str(read["data"])) == b"broken=1\n" and read["eof"] is True
        call(daemon, body("ssh_file_write", user, token, path=conf, data=b64(b"fixed=1\n"), offset=0, truncate=True))
        call(daemon, body("ssh_dir_create", user, token, path=f"{app}/old"))
        call(daemon, body("ssh_file_copy", user, token, source=conf, destination=f"{app}/app.conf.copy"))
        call(daemon, body("ssh_file_move", user, token, source=f"{app}/app.conf.copy", destination=backup))
        tree = result_of(call(daemon, body("ssh_dir_tree", user, token, path=str(app), depth=3)))
        assert [(e["path"], e["type"]) for e in entries(tree)] == [
            ("app.conf", "file"),
            ("old", "dir"),
            ("old/app.conf.bak", "file"),
        ]
        # Deletes need the cosigner (ssh:delete-step-up), exec too (always).
        error = refused(daemon, body("ssh_file_delete", user, token, path=backup), 403, "denied_by_policy", "")
        assert error == "denied by policy ssh:delete-step-up (forbid)" and Path(backup).exists()
        call(daemon, cosigned(body("ssh_file_delete", user, token, path=backup)))
        assert not Path(backup).exists()
        refused(daemon, body("ssh_exec", user, token, argv=["/usr/bin/id", "-un"]), 403, "step_up_required", "")
        whoami = cosigned(body("ssh_exec", user, token, argv=["/usr/bin/id", "-un"], cwd=str(app)))
        ran = result_of(call(daemon, whoami))
        assert ran["exitCode"] == 0 and base64.b64decode(str(ran["stdout"])) == f"{user}\n".encode()
        refused(daemon, whoami, 403, "step_up_required", "cosignature already used")  # the same body again
        # The cosignature of `id` on a destructive command line: another digest, refused before anything runs.
        other = {**body("ssh_exec", user, token, argv=["/bin/rm", "-rf", str(app)]), "requestId": whoami["requestId"]}
        other["cosignature"] = whoami["cosignature"]
        refused(daemon, other, 403, "step_up_required", "digest does not match")
        assert Path(conf).read_bytes() == b"fixed=1\n"
        # A P0 revoke for the same account answers while an exec of that account runs (its own lane).
        sleeping = cosigned(body("ssh_exec", user, token, argv=["/bin/sleep", "5"]))
        answers: list[dict[str, object]] = []
        runner = threading.Thread(target=lambda: answers.append(call(daemon, sleeping)), daemon=True)
        runner.start()
        uid = Path(app).stat().st_uid
        deadline = time.monotonic() + 30
        while not any(_is_sleep_of(proc, uid) for proc in Path("/proc").iterdir() if proc.name.isdigit()):
            assert time.monotonic() < deadline, "the exec never started"
            time.sleep(0.05)
        revoke = {"command": "provisionAuthorizedKeys", "userName": user, "action": "revoke", "requestId": "rev-1"}
        got, revoked = daemon.post(revoke, timeout=30)
        assert got == 200 and revoked["success"] is True, revoked
        assert runner.is_alive(), "the revoke waited for the exec"
        runner.join(timeout=60)
        assert answers and result_of(answers[0])["exitCode"] == 0
    with host.daemon() as daemon:  # the replay cache survives a restart of the agent
        refused(daemon, whoami, 403, "step_up_required", "cosignature already used")
    log = (host.directory / "daemon.log").read_text()
    for secret in (token, str(whoami["cosignature"])):
        assert secret not in log and secret not in host.audit.read_text()


def _is_sleep_of(proc: Path, uid: int) -> bool:
    try:
        status = (proc / "status").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    uids = next((line.split()[1:] for line in status.splitlines() if line.startswith("Uid:")), [])
    return cmdline == b"/bin/sleep\x005\x00" and str(uid) in uids


def test_log_scraper_reads_a_log_directory_and_nothing_else(host: AccessHost) -> None:
    user, logs = host.users["logs"], host.logs
    (logs / "archive").mkdir(mode=0o755)
    content = b"".join(f"2026-12-06T10:{n % 60:02d}:00 GET /health 200\n".encode() for n in range(4000))
    (logs / "app.log").write_bytes(content)
    (logs / "archive" / "app.log.1").write_bytes(b"older\n")
    for path in (logs / "app.log", logs / "archive" / "app.log.1"):
        path.chmod(0o644)  # root's files, readable by all, as logs are
    token = ucan_for(user, logs, ("ssh/file/read", "ssh/dir/list", "ssh/dir/tree"))
    with host.daemon() as daemon:
        names = [e["name"] for e in entries(result_of(call(daemon, body("ssh_dir_list", user, token, path=str(logs)))))]
        assert names == ["app.log", "archive"]
        tree = result_of(call(daemon, body("ssh_dir_tree", user, token, path=str(logs), depth=2)))
        assert "archive/app.log.1" in [e["path"] for e in entries(tree)]
        got, offset = b"", 0
        while True:  # in chunks, as a scraper tails a file
            part = result_of(
                call(daemon, body("ssh_file_read", user, token, path=f"{logs}/app.log", offset=offset, length=50_000))
            )
            got += base64.b64decode(str(part["data"]))
            offset += int(str(part["length"]))
            if part["eof"]:
                break
        assert got == content
        error = refused(
            daemon,
            body("ssh_file_write", user, token, path=f"{logs}/app.log", data=b64(b"x"), offset=0),
            403,
            "outside_capability",
            "",
        )
        assert error == "outside the capability: it grants no ssh/file/write"
        refused(
            daemon,
            body("ssh_file_read", user, token, path="/var/log/auth.log"),
            403,
            "outside_capability",
            "is not under",
        )
    assert (logs / "app.log").read_bytes() == content
    reads = [e for e in audit_entries(host) if e["command"] == "ssh_file_read" and e["result"] == "success"]
    assert sum(int(str(e["bytes_read"])) for e in reads) == len(content)


# --- the gate through the daemon -------------------------------------------------------------------------------


def test_the_switch_accounts_and_capabilities_are_checked_by_the_daemon(host: AccessHost) -> None:
    user, app = host.users["recovery"], host.srv
    token = ucan_for(user, app)
    read = body("ssh_dir_list", user, token, path=str(app))
    with host.daemon(agentAccess=False) as daemon:
        refused(daemon, read, 403, "disabled", "agent access is off (agentAccess: false)")
        assert daemon.config is not None
        daemon.config.write_text(daemon.config.read_text().replace("agentAccess: false", "agentAccess: true"))
        os.kill(daemon.agent_pid, signal.SIGHUP)  # the kill switch is applied on reload
        deadline = time.monotonic() + 30
        while "agent_access_switched" not in daemon.log.read_text():
            assert time.monotonic() < deadline, daemon.log.read_text()[-2000:]
            time.sleep(0.05)
        assert call(daemon, body("ssh_dir_list", user, token, path=str(app)))["success"] is True
        stranger = host.users["stranger"]
        refused(
            daemon,
            body("ssh_dir_list", stranger, ucan_for(stranger, app), path=str(app)),
            403,
            "disabled",
            "not in agentAccess",
        )
        for forged, words in (
            (ucan_for(user, app, key=STRANGER_KEY), "signature does not verify"),
            (ucan_for(user, app, now=int(time.time()) - 4000), "expired"),
            (ucan_for(user, app, audience="did:web:db-01.example.com"), "audience is not this host"),
        ):
            refused(daemon, body("ssh_dir_list", user, forged, path=str(app)), 403, "capability_rejected", words)
        elsewhere = ucan_for(user, app, host="db-01.example.com")
        refused(
            daemon, body("ssh_dir_list", user, elsewhere, path=str(app)), 403, "outside_capability", "no host named"
        )
        refused(
            daemon, {**read, "requestId": "req-h", "host": "db-01.example.com"}, 403, "outside_capability", "names host"
        )
        flagged = {**body("ssh_exec", user, token, argv=["/usr/bin/id"]), "cosigner": True}
        refused(daemon, flagged, 400, "invalid_request", "cosigner is not a request member")
        assert daemon.post({"command": "listUsers"})[0] == 200  # P0's commands are untouched
    assert not any(Path(app).iterdir())


def test_a_dry_run_describes_and_changes_nothing_and_uses_no_cosignature(host: AccessHost) -> None:
    user, app = host.users["recovery"], host.srv
    token = ucan_for(user, app)
    target = f"{app}/index.html"
    execute = cosigned(body("ssh_exec", user, token, argv=["/usr/bin/touch", f"{app}/ran"]))
    with host.daemon(dryRun=True) as daemon:
        answer = call(daemon, body("ssh_file_create", user, token, path=target, data=b64(b"<html>")))
        assert answer["message"] == f"DRY-RUN: Would execute ssh_file_create for user {user}"
        assert f"would run as {user}" in str(answer["output"]) and "namespace" in str(answer["output"])
        assert result_of(answer)["dry_run"] is True and result_of(answer)["bytes"] == 6
        described = call(daemon, execute)
        assert result_of(described)["argv"] == ["/usr/bin/touch", f"{app}/ran"]
    assert not Path(target).exists() and not Path(f"{app}/ran").exists()
    entries = audit_entries(host)
    assert entries and all(e["dry_run"] is True for e in entries)
    assert "<html>" not in host.audit.read_text() and b64(b"<html>") not in host.audit.read_text()
    with host.daemon() as daemon:  # the cosignature a dry run described is still good for one real run
        assert result_of(call(daemon, execute))["exitCode"] == 0
    assert Path(f"{app}/ran").exists()
