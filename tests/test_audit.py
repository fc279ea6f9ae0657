"""The audit trail (host/audit_trail.py): journald's native protocol received on a real AF_UNIX datagram socket and
parsed here independently (both field forms), each event type's MESSAGE_ID, no key material or credential in any entry,
the JSON-lines file (mode, symlink refusal, whole lines under concurrent writers), and failures that never raise.

Every test builds its own AuditTrail aimed at its own socket (or none): nothing about the trail is module state, so
no test can leak into the journal of the machine running it or into another test.
`JournalSink` and `journal_sink` are reused by tests/test_expiry.py and tests/test_reconcile.py.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import re
import socket
import stat
import struct
import tempfile
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import structlog

from p0_ssh_agent.adapters.logging import configure_logging
from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import (
    Action,
    AuditRequest,
    CaKeyRequest,
    Command,
    KeyRequest,
    ListUsersRequest,
    SessionRequest,
    SudoRequest,
    SudoshRequest,
    UserRequest,
)
from p0_ssh_agent.core.sshkeys import parse_public_key
from p0_ssh_agent.host import audit_trail
from p0_ssh_agent.protocol.forwarded import CommandResult

ROOT = Path(__file__).resolve().parent.parent
KEY_A = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"
KEY_B = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc b@test"
JWT = "eyJhbGciOiJFUzM4NCIsInR5cCI6IkpXVCJ9.eyJzdWIiOiJhY21lOmhvc3Q6c3NoIn0.c2lnbmF0dXJlLWJ5dGVz"
# Pinned here on purpose: operators filter and alert on these ids, so changing one must break a test.
PINNED_IDS = {
    "grant": "f33b033a953543769449f6852a6b4d59",
    "revoke": "25ecb00d02f340d19fccfff32483f70c",
    "denied": "f9d6ec39349149ada9f53ca4bdfd041d",
    "failed": "658835cd27204fec853a5d3a5290bba3",
    "expired": "e275b32dfecc45ed9de20065ced1d29e",
    "drift": "94a389eaabf94695b6e4c2ed088ac8c6",
    "repaired": "ff1e8e62d8fc4d8da7aea850bc6cbb38",
    "revoke-all": "1bd524267e964d0fb70f46774e644c81",
    "agent-access": "81dba57e11784f07abf1918314059521",
}


def parse_datagram(data: bytes) -> dict[str, str]:
    """The native protocol, read as journald reads it: NAME=value\\n, or NAME\\n <u64 LE length> value \\n."""
    fields: dict[str, str] = {}
    at = 0
    while at < len(data):
        end = data.index(b"\n", at)
        line = data[at:end]
        if b"=" in line:
            name, _, value = line.partition(b"=")
            at = end + 1
        else:
            name = line
            (length,) = struct.unpack("<Q", data[end + 1 : end + 9])
            value = data[end + 9 : end + 9 + length]
            assert data[end + 9 + length : end + 10 + length] == b"\n", "binary field not closed by a newline"
            at = end + 10 + length
        assert re.fullmatch(rb"[A-Z][A-Z0-9_]*", name), name
        assert name.decode() not in fields, f"field {name!r} twice"
        fields[name.decode()] = value.decode()
    return fields


class JournalSink:
    """A real AF_UNIX datagram socket standing in for /run/systemd/journal/socket."""

    def __init__(self, directory: Path) -> None:
        path = directory / "journal.sock"
        if len(str(path)) > 100:  # sun_path holds 108 bytes; pytest's tmp_path can be longer
            path = Path(tempfile.mkdtemp(prefix="p0j")) / "journal.sock"
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setblocking(False)
        self.raw: list[bytes] = []

    def trail(self, audit_file: Path | None = None) -> audit_trail.AuditTrail:
        """A trail whose journald is this socket."""
        return audit_trail.AuditTrail(journal_socket=str(self.path), audit_file=audit_file)

    def entries(self) -> list[dict[str, str]]:
        """Every entry received so far (kept: a second call returns the earlier ones too)."""
        while True:
            try:
                self.raw.append(self.sock.recv(1 << 20))
            except BlockingIOError:
                break
        return [parse_datagram(data) for data in self.raw]

    def close(self) -> None:
        self.sock.close()
        self.path.unlink(missing_ok=True)


def file_trail(tmp_path: Path, audit_file: Path | None) -> audit_trail.AuditTrail:
    """A trail with no journald listening (a socket path nobody bound) and, given one, an audit file."""
    return audit_trail.AuditTrail(journal_socket=str(tmp_path / "no-journald-here"), audit_file=audit_file)


def journal_sink(tmp_path: Path) -> Iterator[JournalSink]:
    """The body of a `journal` fixture (other test modules define theirs with `yield from journal_sink(...)`)."""
    sink = JournalSink(tmp_path)
    yield sink
    sink.close()


@pytest.fixture
def journal(tmp_path: Path) -> Iterator[JournalSink]:
    yield from journal_sink(tmp_path)


@pytest.fixture
def log_output() -> Iterator[io.StringIO]:
    """The agent's structlog output, plain lines; the previous logging setup is restored afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    out = io.StringIO()
    configure_logging(stream=out, env={})
    yield out
    for handler in list(root.handlers):
        if handler not in handlers:
            root.removeHandler(handler)
    root.setLevel(level)
    structlog.reset_defaults()


def key_request(action: Action = Action.GRANT, request_id: str = "abc") -> KeyRequest:
    key = parse_public_key(KEY_A, field="publicKey") if action is Action.GRANT else None
    return KeyRequest(Command.AUTHORIZED_KEYS, "alice", action, request_id, key)


OK = CommandResult(success=True, message="done")


# --- encoding --------------------------------------------------------------------------------------------------


def test_field_encoding_simple_and_binary_form() -> None:
    data = audit_trail.journal_datagram([("MESSAGE", "hello world"), ("ERROR", "line one\nline two"), ("EMPTY", "")])
    assert data == (
        b"MESSAGE=hello world\n" + b"ERROR\n" + struct.pack("<Q", 17) + b"line one\nline two\n" + b"EMPTY=\n"
    )
    assert parse_datagram(data) == {"MESSAGE": "hello world", "ERROR": "line one\nline two", "EMPTY": ""}
    with pytest.raises(ValueError, match="field name"):
        audit_trail.journal_datagram([("lower", "x")])


def test_every_event_type_has_its_fixed_message_id_and_docs_list_them(journal: JournalSink) -> None:
    assert {event.value: mid for event, mid in audit_trail.MESSAGE_IDS.items()} == PINNED_IDS
    assert all(re.fullmatch(r"[0-9a-f]{32}", mid) for mid in PINNED_IDS.values())
    assert len(set(PINNED_IDS.values())) == len(PINNED_IDS)
    trail = journal.trail()
    for event in audit_trail.Event:
        trail.record(audit_trail.AuditEvent(event, "request", "abc", "cmd", "grant", "alice", "success", "s"))
    assert [e["MESSAGE_ID"] for e in journal.entries()] == [PINNED_IDS[event.value] for event in audit_trail.Event]
    docs = (ROOT / "docs" / "audit.md").read_text()
    for name, mid in PINNED_IDS.items():
        assert re.search(rf"`{re.escape(name)}`.*`{mid}`", docs), f"docs/audit.md does not list {name} {mid}"


# --- provisioning requests ---------------------------------------------------------------------------------------


def test_a_key_grant_is_one_entry_with_the_fixed_fields_and_the_fingerprint_only(journal: JournalSink) -> None:
    key = parse_public_key(KEY_A, field="publicKey")
    journal.trail().record_request(key_request(), OK, dry_run=False)
    [entry] = journal.entries()
    assert entry == {
        "MESSAGE": f"provisionAuthorizedKeys grant for alice (request abc, key {key.fingerprint()}): success",
        "MESSAGE_ID": PINNED_IDS["grant"],
        "PRIORITY": "6",
        "SYSLOG_IDENTIFIER": "p0-ssh-agent",
        "EVENT": "grant",
        "ORIGIN": "request",
        "REQUEST_ID": "abc",
        "COMMAND": "provisionAuthorizedKeys",
        "ACTION": "grant",
        "TARGET_USER": "alice",
        "RESULT": "success",
        "POLICY": "",
        "DRY_RUN": "false",
        "KEY_FINGERPRINT": key.fingerprint(),
    }
    blob = KEY_A.split()[1]
    assert blob.encode() not in journal.raw[0]
    assert blob[:40].encode() not in journal.raw[0]


def test_ca_keys_sudo_users_sessions_and_revokes(journal: JournalSink) -> None:
    ca = parse_public_key(KEY_B, field="caPublicKey")
    trail = journal.trail()
    trail.record_request(CaKeyRequest(Command.CA_KEYS, "alice", Action.GRANT, "r1", ca), OK, dry_run=False)
    sudo = SudoRequest(Command.SUDO, "alice", Action.GRANT, "r2", sudo=True, run_as="postgres")
    trail.record_request(sudo, OK, dry_run=False)
    sudo_all = SudoRequest(Command.SUDO, "alice", Action.GRANT, "r3", sudo=True, run_as=None)
    trail.record_request(sudo_all, OK, dry_run=False)
    trail.record_request(UserRequest(Command.PROVISION_USER, "alice", Action.REVOKE, "r4"), OK, dry_run=False)
    trail.record_request(SessionRequest(Command.SESSION, "alice", Action.REVOKE, None), OK, dry_run=False)
    trail.record_request(key_request(Action.REVOKE), OK, dry_run=False)
    entries = journal.entries()
    assert entries[0]["KEY_FINGERPRINT"] == ca.fingerprint() and entries[0]["COMMAND"] == "provisionCAKeys"
    assert (entries[1]["RUN_AS"], entries[2]["RUN_AS"]) == ("postgres", "ALL")
    assert [e["MESSAGE_ID"] for e in entries[3:]] == [PINNED_IDS["revoke"]] * 3
    assert entries[4]["REQUEST_ID"] == "" and entries[4]["COMMAND"] == "provisionSession"
    assert "KEY_FINGERPRINT" not in entries[5]  # a revoke names the request, not a key
    assert KEY_B.split()[1].encode() not in b"".join(journal.raw)


def test_denied_failed_and_dry_run(journal: JournalSink) -> None:
    trail = journal.trail()
    refused = CommandResult(success=False, error="denied by local policy: no sudo as root", http_status=403)
    trail.record_request(key_request(), refused, dry_run=False, policy="policy0", denied=True)
    failed = CommandResult(success=False, error="useradd failed:\nuseradd: cannot lock /etc/passwd")
    trail.record_request(key_request(), failed, dry_run=False)
    trail.record_request(key_request(), OK, dry_run=True)
    denied, failure, dry = journal.entries()
    assert (denied["MESSAGE_ID"], denied["RESULT"], denied["PRIORITY"]) == (PINNED_IDS["denied"], "denied", "4")
    assert denied["POLICY"] == "policy0" and denied["ERROR"] == refused.error
    assert (failure["MESSAGE_ID"], failure["RESULT"], failure["PRIORITY"]) == (PINNED_IDS["failed"], "failure", "4")
    assert failure["ERROR"] == "useradd failed:\nuseradd: cannot lock /etc/passwd"  # the binary form, intact
    assert "\n" not in failure["MESSAGE"]
    assert b"ERROR\n" in journal.raw[1]
    assert (dry["DRY_RUN"], dry["MESSAGE_ID"]) == ("true", PINNED_IDS["grant"])
    assert dry["MESSAGE"].startswith("[dry run] ")


def test_read_only_commands_are_not_audited(journal: JournalSink) -> None:
    trail = journal.trail()
    for request in (
        ListUsersRequest(Command.LIST_USERS),
        AuditRequest(Command.RUN_AUDIT),
        SudoshRequest(Command.COLLECT_SUDOSH, "alice", 0, 10),
    ):
        trail.record_request(request, OK, dry_run=False)
    assert journal.entries() == []


def test_no_key_jwt_or_authorization_header_even_when_an_error_quotes_them(
    journal: JournalSink, tmp_path: Path
) -> None:
    trail = journal.trail(audit_file=tmp_path / "audit.jsonl")
    error = f"could not add {KEY_A}\nAuthorization: Bearer {JWT}\ntoken {JWT} Proxy-Authorization: Basic dXNlcjpwdw=="
    trail.record_request(key_request(), CommandResult(success=False, error=error), dry_run=False)
    written = b"".join(journal.raw) + (tmp_path / "audit.jsonl").read_bytes()
    for secret in (KEY_A.split()[1], KEY_A.split()[1][:30], JWT, "eyJ", "dXNlcjpwdw=="):
        assert secret.encode() not in written, secret
    [entry] = journal.entries()
    assert "[KEY]" in entry["ERROR"] and "Bearer [REDACTED]" in entry["ERROR"]
    assert entry["KEY_FINGERPRINT"].startswith("SHA256:")


# --- the JSON-lines file -------------------------------------------------------------------------------------------


def test_the_audit_file_gets_one_json_object_per_event_mode_0600(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = file_trail(tmp_path, path)
    before = datetime.now(UTC)
    trail.record_request(key_request(), OK, dry_run=True, policy="p1")
    trail.record_request(key_request(Action.REVOKE), OK, dry_run=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    first, second = (json.loads(line) for line in path.read_text().splitlines())
    assert first["message_id"] == PINNED_IDS["grant"] and second["message_id"] == PINNED_IDS["revoke"]
    assert (first["request_id"], first["command"], first["target_user"], first["policy"]) == (
        "abc",
        "provisionAuthorizedKeys",
        "alice",
        "p1",
    )
    assert first["dry_run"] is True and second["dry_run"] is False and first["priority"] == 6
    assert first["key_fingerprint"] == parse_public_key(KEY_A, field="k").fingerprint()
    assert all(key == key.lower() for key in first)
    stamp = datetime.strptime(first["timestamp"], "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC)
    assert before <= stamp <= datetime.now(UTC)
    path.chmod(0o644)  # loosened by hand: the next entry tightens it again
    trail.record_request(key_request(), OK, dry_run=False)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600 and len(path.read_text().splitlines()) == 3


def test_a_symlink_is_refused_without_being_followed(tmp_path: Path, log_output: io.StringIO) -> None:
    target = tmp_path / "target"
    target.write_text("")
    link = tmp_path / "audit.jsonl"
    link.symlink_to(target)
    dangling = tmp_path / "dangling.jsonl"
    dangling.symlink_to(tmp_path / "nowhere")
    for path in (link, dangling):
        file_trail(tmp_path, path).record_request(key_request(), OK, dry_run=False)
    assert target.read_text() == "" and not (tmp_path / "nowhere").exists()
    assert log_output.getvalue().count("is a symlink (refused)") == 2


def test_concurrent_writers_produce_whole_lines(tmp_path: Path) -> None:
    path = tmp_path / "audit.jsonl"
    trail = file_trail(tmp_path, path)
    threads, per_thread = 8, 150

    def write(n: int) -> None:
        for i in range(per_thread):
            detail = f"{n}-{i}-" + "x" * 3000  # long lines: interleaving would show
            event = audit_trail.AuditEvent(
                audit_trail.Event.DRIFT, "reconcile", f"r{n}", "reconcile", "report", "", "reported", "s"
            )
            trail.record(dataclasses.replace(event, detail=detail))

    workers = [threading.Thread(target=write, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    lines = path.read_bytes().split(b"\n")
    assert lines[-1] == b""
    details = [json.loads(line)["detail"] for line in lines[:-1]]
    assert sorted(details) == sorted(f"{n}-{i}-" + "x" * 3000 for n in range(threads) for i in range(per_thread))


# --- failures never raise ------------------------------------------------------------------------------------------


def test_no_journald_socket_is_silent(tmp_path: Path, log_output: io.StringIO) -> None:
    absent = audit_trail.AuditTrail(journal_socket=str(tmp_path / "absent" / "socket"))
    absent.record_request(key_request(), OK, dry_run=False)
    stale = JournalSink(tmp_path)  # then closed: a socket file nobody listens on any more (journald stopped)
    stale.sock.close()
    stale.trail().record_request(key_request(), OK, dry_run=False)
    audit_trail.AuditTrail(journal_socket="").record_request(key_request(), OK, dry_run=False)  # off
    audit_trail.AuditTrail.off().record_request(key_request(), OK, dry_run=False)
    assert log_output.getvalue() == ""


def test_an_unwritable_file_is_logged_once_and_never_raises(
    tmp_path: Path, journal: JournalSink, log_output: io.StringIO
) -> None:
    path = tmp_path / "missing-dir" / "audit.jsonl"
    trail = journal.trail(audit_file=path)
    for _ in range(3):
        trail.record_request(key_request(), OK, dry_run=False)
    assert len(journal.entries()) == 3  # journald still gets every entry
    assert log_output.getvalue().count("audit_write_failed") == 1
    assert "missing-dir" in log_output.getvalue()
    path.parent.mkdir()
    trail.record_request(key_request(), OK, dry_run=False)
    assert len(path.read_text().splitlines()) == 1
    assert log_output.getvalue().count("audit_write_recovered") == 1
    path.unlink()
    path.mkdir()  # a directory where the file should be
    trail.record_request(key_request(), OK, dry_run=False)
    trail.record_request(key_request(), OK, dry_run=False)
    assert log_output.getvalue().count("audit_write_failed") == 2


def test_a_bug_in_building_an_entry_is_logged_not_raised(journal: JournalSink, log_output: io.StringIO) -> None:
    bogus = audit_trail.AuditEvent(audit_trail.Event.GRANT, "request", "abc", "c", "a", "u", "success", "s")
    object.__setattr__(bogus, "event", "no-such-event")  # MESSAGE_IDS has no entry for it: a KeyError inside
    journal.trail().record(bogus)
    assert journal.entries() == []
    assert "audit_write_failed" in log_output.getvalue() and "KeyError" in log_output.getvalue()


def test_a_trail_for_a_configuration_takes_its_file_and_journald_socket_from_the_environment(tmp_path: Path) -> None:
    config = AgentConfig(audit_file=tmp_path / "audit.jsonl")
    default = audit_trail.AuditTrail.from_config(config, {})
    assert (default.journal_socket, default.audit_file) == ("/run/systemd/journal/socket", tmp_path / "audit.jsonl")
    aimed = audit_trail.AuditTrail.from_config(None, {audit_trail.JOURNAL_SOCKET_ENV: "/tmp/x.sock"})
    assert (aimed.journal_socket, aimed.audit_file) == ("/tmp/x.sock", None)
    assert audit_trail.AuditTrail.from_config(config, {audit_trail.JOURNAL_SOCKET_ENV: ""}).journal_socket == ""
    off = audit_trail.AuditTrail.off()
    assert (off.journal_socket, off.audit_file) == ("", None)


def test_a_reload_moves_the_audit_file_and_keeps_the_journald_socket(journal: JournalSink, tmp_path: Path) -> None:
    trail = journal.trail(audit_file=tmp_path / "old.jsonl")
    trail.open()
    opened = trail._journal
    trail.record_request(key_request(), OK, dry_run=False)
    trail.reconfigure(AgentConfig(audit_file=tmp_path / "new.jsonl"))
    trail.record_request(key_request(Action.REVOKE), OK, dry_run=False)
    assert trail._journal is opened and opened is not None  # one socket for the process, not one per reload
    assert [json.loads(line)["action"] for line in (tmp_path / "old.jsonl").read_text().splitlines()] == ["grant"]
    assert [json.loads(line)["action"] for line in (tmp_path / "new.jsonl").read_text().splitlines()] == ["revoke"]
    assert [e["ACTION"] for e in journal.entries()] == ["grant", "revoke"]
    trail.close()


def test_observers_see_every_event_while_they_observe(journal: JournalSink) -> None:
    seen: list[str] = []
    told: list[str] = []
    trail = audit_trail.AuditTrail(journal_socket=str(journal.path), observers=[lambda e: told.append(e.request_id)])
    trail.record_request(key_request(request_id="before"), OK, dry_run=False)
    with trail.observing(lambda e: seen.append(e.request_id)):
        trail.record_request(key_request(request_id="during"), OK, dry_run=False)
    trail.record_request(key_request(request_id="after"), OK, dry_run=False)
    assert seen == ["during"] and told == ["before", "during", "after"]


def test_two_trails_share_nothing(journal: JournalSink, tmp_path: Path, log_output: io.StringIO) -> None:
    """A failure remembered by one trail (logged once) is not another's: each logs its own first failure."""
    path = tmp_path / "missing-dir" / "audit.jsonl"
    for _ in range(2):
        trail = journal.trail(audit_file=path)
        trail.record_request(key_request(), OK, dry_run=False)
        trail.record_request(key_request(), OK, dry_run=False)
    assert log_output.getvalue().count("audit_write_failed") == 2
