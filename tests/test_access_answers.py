"""Agent access's answers, audit entry, job plan and configuration keys (pure parts, no host)."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from p0_ssh_agent.agent_access.access_model import (
    AccessCommand,
    Operation,
    Refusal,
    RefusalKind,
    TargetAccount,
    WorkerReply,
)
from p0_ssh_agent.agent_access.answers import STATUS, answered, printable, refused
from p0_ssh_agent.agent_access.job_plan import argv_digest, content_digest, describe, plan_job
from p0_ssh_agent.config import load_config
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.host.audit_events import MESSAGE_IDS, AccessFacts, Event, access_event, json_line
from p0_ssh_agent.protocol.forwarded import forwarded_response

ACCOUNT = TargetAccount("deploy", 1001, 1001, "/home/deploy", "/bin/bash", ("deploy",), False, False)


def operation(command: AccessCommand, *paths: str, **fields: object) -> Operation:
    return Operation(command, "req-1", "deploy", "", paths, "ucan.token.sig", **fields)  # type: ignore[arg-type]


def test_every_refusal_kind_has_its_status_and_its_kind_in_the_result() -> None:
    assert set(STATUS) == set(RefusalKind)
    expected = {"invalid_request": 400, "not_found": 404, "already_exists": 409, "conflict": 409, "too_large": 413}
    expected |= {"busy": 503, "failed": 500}
    for kind in RefusalKind:
        answer = refused(Refusal(kind, f"why {kind.value}"))
        assert answer.http_status == expected.get(kind.value, 403), kind
        assert answer.result == {"kind": kind.value} and answer.error == f"why {kind.value}" and not answer.success
    denial = refused(Refusal(RefusalKind.POLICY, "denied by policy ssh:sftp-upload (forbid)", "ssh:sftp-upload"))
    assert denial.policy_denied and denial.result == {"kind": "denied_by_policy", "policy": "ssh:sftp-upload"}


def test_a_worker_failure_keeps_its_kind_and_a_hostile_one_becomes_failed() -> None:
    read = operation(AccessCommand.FILE_READ, "/var/www/app/missing.txt")
    missing = answered(read, WorkerReply(False, error_kind="not_found", message="/var/www/app/missing.txt"))
    assert (missing.http_status, missing.error) == (404, "not found: /var/www/app/missing.txt")
    # A kind the worker may not report (one the gate decides) or garbage, and a message with control characters.
    invalid = answered(read, WorkerReply(False, error_kind="invalid_request", message="bad prefix"))
    assert (invalid.http_status, invalid.error) == (400, "invalid: bad prefix")
    for kind in ("denied_by_policy", "busy", "x" * 1000):
        forged = answered(read, WorkerReply(False, error_kind=kind, message="a\nb\x1b[31m" + "z" * 2000))
        assert forged.http_status == 500 and forged.result == {"kind": "failed"}
        assert "\n" not in forged.error and "\x1b" not in forged.error and len(forged.error) < 600
    assert printable("ok\x00") == "ok?"


def test_a_success_carries_the_workers_result_and_a_summary() -> None:
    execute = operation(AccessCommand.EXEC, argv=("/bin/echo", "hi"), cwd="/var/www/app")
    result: dict[str, object] = {
        "exitCode": 0,
        "signal": None,
        "stdout": "aGkK",
        "stderr": "",
        "truncatedStreams": ["stdout"],
    }
    answer = answered(execute, WorkerReply(True, result=result))
    assert answer.success and answer.result == result
    assert answer.message == 'ran "/bin/echo" in /var/www/app: exit 0, stdout truncated'
    frame = forwarded_response(answer, client_id="o:h:ssh", command="ssh_exec", now=datetime.now(UTC))
    assert frame["status"] == 200 and frame["data"]["result"] == result  # type: ignore[index]


def test_the_job_is_the_operation_confined_to_the_grants_prefix() -> None:
    write = operation(AccessCommand.FILE_WRITE, "/var/www/app/a.bin", data=b"\x00\x01", offset=4, truncate=True)
    job = plan_job(write, "/var/www/app")
    assert (job.op, job.prefix, job.paths, job.offset, job.truncate) == (
        "ssh_file_write",
        "/var/www/app",
        ("/var/www/app/a.bin",),
        4,
        True,
    )
    assert base64.b64decode(job.data_b64) == b"\x00\x01"
    assert plan_job(operation(AccessCommand.EXEC, argv=("/bin/true",)), "/srv/app").cwd == "/srv/app"


def test_a_dry_run_describes_account_confinement_paths_bytes_and_argv() -> None:
    write = operation(AccessCommand.FILE_WRITE, "/var/www/app/index.html", data=b"<html>", append=True)
    text, plan = describe(
        write,
        plan_job(write, "/var/www/app"),
        ACCOUNT,
        mode="systemd",
        limits=None,
        policies=("ssh:sftp-upload",),
        issuer="did:key:z6Mk",
        cosigner=False,
    )
    assert "would run as deploy (uid 1001" in text and "systemd" in text and "/var/www/app/index.html" in text
    assert f"bytes: 6 appended ({content_digest(b'<html>')})" in text and "<html>" not in text
    assert plan["dry_run"] is True and plan["bytes"] == 6 and plan["paths"] == ["/var/www/app/index.html"]
    execute = operation(AccessCommand.EXEC, argv=("/usr/bin/systemctl", "status", "nginx"))
    text, plan = describe(
        execute,
        plan_job(execute, "/srv/app"),
        ACCOUNT,
        mode="namespace",
        limits=None,
        policies=("ssh:exec-step-up",),
        issuer="did:key:z6Mk",
        cosigner=True,
    )
    assert 'argv: "/usr/bin/systemctl" "status" "nginx"' in text and "cwd: /srv/app" in text
    assert plan["argv"] == ["/usr/bin/systemctl", "status", "nginx"] and plan["cosigner"] is True


def test_the_audit_entry_has_sizes_and_digests_never_content_and_its_own_message_id() -> None:
    content = b"secret build bytes"
    facts = AccessFacts(
        paths=("/var/www/app/a", "/var/www/app/b"),
        issuer="did:key:z6MkIssuer",
        approver="approver-1",
        outcome="ok",
        bytes_written=len(content),
        content_sha256=content_digest(content),
        exit_code=0,
        duration_ms=12,
        argv_sha256=argv_digest(("/bin/true",)),
    )
    event = access_event(
        request_id="r1", command="ssh_file_copy", username="deploy", result="success", facts=facts, dry_run=True
    )
    entry = json.loads(json_line(event.fields(), datetime.now(UTC)))
    assert entry["message_id"] == MESSAGE_IDS[Event.AGENT_ACCESS] and entry["event"] == "agent-access"
    assert entry["path"] == "/var/www/app/a" and entry["destination"] == "/var/www/app/b"
    assert entry["issuer"] == "did:key:z6MkIssuer" and entry["approver"] == "approver-1"
    assert entry["content_sha256"] == "sha256:" + hashlib.sha256(content).hexdigest()
    assert entry["bytes_written"] == "18" and entry["exit_code"] == "0" and entry["dry_run"] is True
    assert entry["message"].startswith("[dry run] ssh_file_copy as deploy /var/www/app/a -> /var/www/app/b")
    assert b"secret build bytes" not in json_line(event.fields(), datetime.now(UTC))
    assert len(set(MESSAGE_IDS.values())) == len(MESSAGE_IDS)
    denied = access_event(
        request_id="r2",
        command="ssh_exec",
        username="deploy",
        result="denied",
        facts=AccessFacts(paths=(), issuer="", outcome="step_up_required"),
        dry_run=False,
    )
    assert denied.priority() == 4 and ("OUTCOME", "step_up_required") in denied.fields()


def test_the_agent_access_keys_load_with_their_defaults_and_refuse_bad_values(tmp_path: Path) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("orgId: o\n")
    defaults = load_config(config, env={})
    assert (defaults.agent_access, defaults.agent_access_users, defaults.agent_access_confinement) == (
        False,
        (),
        "auto",
    )
    assert str(defaults.agent_access_policy_file) == "/etc/p0-ssh-agent/agent-access.cedar"
    assert str(defaults.agent_access_keys_file) == "/etc/p0-ssh-agent/agent-access-keys.json"
    config.write_text(
        "agentAccess: true\nagentAccessUsers: [deploy, logs]\nagentAccessConfinement: namespace\n"
        "agentAccessPolicyFile: /srv/a.cedar\nagentAccessKeysFile: /srv/k.json\n"
    )
    loaded = load_config(config, env={})
    assert loaded.agent_access and loaded.agent_access_users == ("deploy", "logs")
    assert (loaded.agent_access_confinement, str(loaded.agent_access_keys_file)) == ("namespace", "/srv/k.json")
    assert load_config(config, env={"P0_SSH_AGENT_AGENT_ACCESS": "false"}).agent_access is False
    for text, problem in (
        ("agentAccessConfinement: docker\n", "not a confinement mode"),
        ("agentAccessPolicyFile: relative.cedar\n", "not an absolute path"),
        ("agentAccessUsers: [Root!]\n", "not a valid user name"),
        ("agentAccess: yes please\n", "expected true or false"),
    ):
        config.write_text(text)
        with pytest.raises(ConfigError, match=problem):
            load_config(config, env={})
