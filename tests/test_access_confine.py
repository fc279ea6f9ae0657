"""confine.py without root: the worker's reply parsed as hostile input, hostile worker processes (real ones, run
through run_confined), the mode choice and the systemd-run command line."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from p0_ssh_agent.agent_access.access_model import TargetAccount, WorkerJob
from p0_ssh_agent.agent_access.confine import (
    MAX_REPLY_BYTES,
    SYSTEMD_RUN,
    SYSTEMD_RUNTIME_DIR,
    WorkerLimits,
    choose_mode,
    parse_reply,
    run_confined,
    run_worker,
    unit_seconds,
    worker_argv,
)

ACCOUNT = TargetAccount("deploy", 1234, 1234, "/home/deploy", "/bin/bash", ("deploy",), locked=False, system=False)


def test_a_well_formed_reply_is_taken() -> None:
    good = parse_reply(b'{"ok": true, "result": {"size": 3}}')
    assert good.ok and good.result == {"size": 3}
    refusal = parse_reply(b'{"ok": false, "error_kind": "not_found", "message": "no such file: /srv/a"}')
    assert (refusal.ok, refusal.error_kind, refusal.message) == (False, "not_found", "no such file: /srv/a")


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"not json",
        b"[1, 2]",
        b'"ok"',
        b'{"ok": "yes", "result": {}}',
        b'{"ok": 1, "result": {}}',
        b'{"ok": true}',
        b'{"ok": true, "result": [1]}',
        b'{"ok": true, "result": "x"}',
        b"[" * 100_000 + b"]" * 100_000,
        b'{"ok": true, "result": {"n": ' + b"9" * 5000 + b"}}",
    ],
)
def test_garbage_is_a_failure(raw: bytes) -> None:
    reply = parse_reply(raw)
    assert (reply.ok, reply.error_kind) == (False, "failed")


def test_a_huge_reply_is_a_failure_without_being_parsed() -> None:
    huge = json.dumps({"ok": True, "result": {"data": "A" * MAX_REPLY_BYTES}}).encode()
    assert parse_reply(huge).message == "the worker's reply was too large"


def test_an_unknown_error_kind_becomes_failed_and_the_message_is_bounded_and_printable() -> None:
    kinds = ("denied_by_policy", "step_up_required", 7, None, ["not_found"], {"kind": "not_found"})  # lists: unhashable
    for kind in kinds:
        reply = parse_reply(json.dumps({"ok": False, "error_kind": kind, "message": "m"}).encode())
        assert (reply.ok, reply.error_kind) == (False, "failed"), kind
    long = parse_reply(
        json.dumps({"ok": False, "error_kind": "conflict", "message": "\x1b[31m\n" + "x" * 5000}).encode()
    )
    assert long.error_kind == "conflict" and len(long.message) == 512 and long.message.isprintable()
    assert "\x1b" not in long.message
    assert parse_reply(b'{"ok": false, "error_kind": "conflict", "message": 5}').message == "the worker gave no message"


# Real processes behaving like a broken or hostile worker.


async def hostile(code: str, seconds: int = 5) -> tuple[bool, str, float]:
    started = time.monotonic()
    reply = await run_confined([sys.executable, "-I", "-c", code], b'{"op": "x"}', seconds=seconds)
    assert reply.error_kind == "failed" or reply.ok
    return reply.ok, reply.message, time.monotonic() - started


async def test_a_worker_that_floods_its_reply_is_killed_and_failed() -> None:
    code = "import sys\nwhile True: sys.stdout.write('A' * 65536)"
    ok, message, took = await hostile(code, seconds=60)
    assert (ok, message) == (False, "the worker's reply was too large") and took < 30


async def test_a_worker_that_hangs_is_killed_at_the_deadline() -> None:
    ok, message, took = await hostile("import time; time.sleep(100)", seconds=1)
    assert not ok and "did not finish within 5 s" in message and 4.5 <= took < 20


async def test_a_worker_that_dies_or_answers_garbage_fails() -> None:
    assert (await hostile("import os; os.kill(os.getpid(), 9)"))[:2] == (False, "the worker exited with status -9")
    assert (await hostile('print(\'{"ok": true, "result": {}}\'); raise SystemExit(3)'))[1] == (
        "the worker exited with status 3"
    )
    assert (await hostile("print('hello')"))[1] == "the worker's reply was not JSON"
    flood_stderr = 'import sys; sys.stderr.write(\'E\' * 10**6); print(\'{"ok": true, "result": {"a": 1}}\')'
    assert (await hostile(flood_stderr))[0] is True  # stderr is bounded and dropped, never the answer


async def test_run_worker_refuses_root_and_a_prefix_systemd_could_misread() -> None:
    job = WorkerJob(op="ssh_dir_list", prefix="/srv/app", paths=("/srv/app",))
    root = TargetAccount("root", 0, 0, "/root", "/bin/bash", ("root",), locked=False, system=True)
    assert (await run_worker(job, root, mode="namespace", limits=WorkerLimits())).error_kind == "failed"
    spaced = WorkerJob(op="ssh_dir_list", prefix="/srv/my app", paths=("/srv/my app",))
    reply = await run_worker(spaced, ACCOUNT, mode="systemd", limits=WorkerLimits())
    assert (reply.ok, reply.error_kind) == (False, "invalid_request")


def test_choose_mode() -> None:
    assert choose_mode("systemd") == "systemd" and choose_mode("namespace") == "namespace"
    assert choose_mode("auto") in ("systemd", "namespace")
    with pytest.raises(ValueError, match="auto, systemd or namespace"):
        choose_mode("chroot")


def test_the_systemd_run_command_line() -> None:
    argv = worker_argv(ACCOUNT, "/srv/app", mode="systemd", limits=WorkerLimits(), seconds=30, unit="p0-agent-access-x")
    assert argv[0] == SYSTEMD_RUN and "--pipe" in argv and "--wait" in argv and "--unit=p0-agent-access-x" in argv
    properties = {argv[index + 1] for index, part in enumerate(argv) if part == "-p"}
    for expected in (
        "User=deploy",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "ReadWritePaths=-/srv/app",
        "TasksMax=64",
        f"MemoryMax={512 * 1024 * 1024}",
        "RuntimeMaxSec=30",
        "KillMode=control-group",
        "CapabilityBoundingSet=",
    ):
        assert expected in properties
    tail = argv[argv.index("--") + 1 :]
    assert tail[:4] == [sys.executable, "-I", "-m", "p0_ssh_agent.agent_access.worker_main"]
    assert "--drop-to" not in tail and "--pid-namespace" not in tail


def test_an_exec_unit_outlives_its_command_timeout() -> None:
    exec_job = WorkerJob(op="ssh_exec", prefix="/srv/app", paths=(), argv=("true",), timeout_seconds=100)
    assert unit_seconds(exec_job, WorkerLimits()) == 103
    read_job = WorkerJob(op="ssh_file_read", prefix="/srv/app", paths=("/srv/app/a",))
    assert unit_seconds(read_job, WorkerLimits(seconds=7)) == 7


def test_auto_is_namespace_for_anyone_but_root() -> None:
    """as_root answers "is the caller root?" for doctor: what the root daemon would pick, whoever asks."""
    assert choose_mode("auto", as_root=False) == "namespace"
    systemd_here = SYSTEMD_RUNTIME_DIR.is_dir() and Path(SYSTEMD_RUN).is_file()
    assert choose_mode("auto", as_root=True) == ("systemd" if systemd_here else "namespace")
    assert choose_mode("systemd", as_root=False) == "systemd"  # an explicit mode is taken as it is
