"""A user turning their own authorized_keys against every reader of it (issue 11 items 1 and 3), in the namespace
sandbox.

The attacker is a JIT user with a shell: they can `truncate -s 64G ~/.ssh/authorized_keys` (a sparse file: no disk
used) or grow the file the moment the agent starts reading it (inotify tells them), after the agent's fstat said it
was small. Every public reader of the file is driven as an operator or the backend would drive it: a grant and a
revoke through `p0-ssh-agent command`, runAudit through `command` and through the daemon, reconciliation through
`status`, `doctor` and the daemon's start-up pass. Each must refuse with a clear error and stay within
MEMORY_BOUND of peak RSS (measured by tests/peak_rss.py for exactly that process); no timing is asserted.

The same user also writes lines that look like runAudit's section markers into the file, or makes it a hard link to
a root-only file: runAudit (through `command` and the daemon) must show their lines escaped under their own USER
line, with upstream's sections in upstream's order, and never the linked file's content.

Run with `tests/sandbox/enter .venv/bin/pytest -q tests/test_hostile_reads.py`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import pwd
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from p0_ssh_agent.core.audit_text import unescape
from p0_ssh_agent.host.safefile import MAX_FILE_BYTES
from peak_rss import measured_argv, read_peak_rss
from provisioning_support import AGENT, CLIENT_ID, AgentCli, authorized_keys, free_port, make_keys, write_config
from sandbox.fixtures import CHILD_ENV, Sandbox, make_keypair, unique_user_name

pytestmark = pytest.mark.sandbox

HUGE = 64 << 30  # what the review used: 64 GiB, sparse
MEMORY_BOUND = 200 << 20
# Only a safety net for the unfixed agent, which read a grown file to its end: without it one run could take the
# shared test machine's memory with it. The assertion is on peak RSS, far below this.
ADDRESS_SPACE_CAP = 3 << 30
TRUNCATE = "/usr/bin/truncate"
PRLIMIT = "/usr/bin/prlimit"
TOO_BIG = f"more than {MAX_FILE_BYTES}"


@dataclass(frozen=True)
class Measured:
    """One agent process run to its end: exit code, output, and its own peak resident set size."""

    name: str
    returncode: int
    stdout: str
    stderr: str
    peak_rss: int

    def json_after(self, marker: str) -> dict[str, object]:
        _head, found, tail = self.stdout.partition(marker)
        assert found, f"no {marker!r} in the output:\n{self}"
        document: dict[str, object] = json.loads(tail)
        return document

    def __str__(self) -> str:
        peak = f"peak RSS {self.peak_rss >> 20} MiB"
        return f"exit {self.returncode}, {peak}\n{self.stdout[-3000:]}\n{self.stderr[-3000:]}"


def _start(argv: list[str], directory: Path, name: str) -> tuple[subprocess.Popen[bytes], Path, Path]:
    out, err = directory / f"{name}.out", directory / f"{name}.err"
    capped = [PRLIMIT, f"--as={ADDRESS_SPACE_CAP}", "--", *argv]  # prlimit execs argv: the same process
    with out.open("wb") as stdout, err.open("wb") as stderr:
        process = subprocess.Popen(measured_argv(_rss_file(out), capped), stdout=stdout, stderr=stderr, env=CHILD_ENV)
    return process, out, err


def _rss_file(out: Path) -> Path:
    return out.with_suffix(".rss")


def _reap(process: subprocess.Popen[bytes], out: Path, err: Path, *, guard: float = 120) -> Measured:
    """Wait for the measuring wrapper (tests/peak_rss.py), which reports the peak RSS of exactly the agent's process
    (wait4 on a process forked from pytest would report pytest's size). The guard only keeps a hung run from hanging
    the suite."""
    try:
        returncode = process.wait(timeout=guard)
    except subprocess.TimeoutExpired:
        process.terminate()  # forwarded to the agent by the wrapper
        returncode = process.wait(timeout=30)
    return Measured(out.stem, returncode, out.read_text(), err.read_text(), read_peak_rss(_rss_file(out)))


def run_measured(argv: list[str], directory: Path, name: str) -> Measured:
    return _reap(*_start(argv, directory, name))


@dataclass(frozen=True)
class Host:
    cli: AgentCli
    user: str
    uid: int
    gid: int
    keys_file: Path
    public_key: str
    directory: Path

    def command(self, name: str, *args: str) -> Measured:
        argv = [str(AGENT), "command", "--config", str(self.cli.config), "--command", name, *args]
        return run_measured(argv, self.directory, name)

    def as_user(self, *argv: str) -> None:
        subprocess.run(argv, check=True, env=CHILD_ENV, user=self.uid, group=self.gid, extra_groups=[], timeout=60)


@pytest.fixture
def host(sandbox: Sandbox, tmp_path: Path) -> Iterator[Host]:
    """A JIT user made by the agent, with one key granted under request r-1 (so the ledger has something to
    reconcile against their file)."""
    cli = AgentCli(write_config(tmp_path, make_keys(tmp_path)))
    user = unique_user_name()
    _private, public = make_keypair(tmp_path)
    assert cli.command("provisionUser", user, request_id="r-1").success
    assert cli.command("provisionAuthorizedKeys", user, request_id="r-1", public_key=public).success
    entry = pwd.getpwnam(user)
    yield Host(cli, user, entry.pw_uid, entry.pw_gid, authorized_keys(user), public, tmp_path)
    # A 64 GiB file left in /home would be in every later runAudit of this sandbox.
    sandbox.userdel(user)


def assert_bounded(measured: Measured) -> None:
    print(f"peak RSS {measured.peak_rss / (1 << 20):.1f} MiB: {measured.name}")  # for the record, with -s
    assert measured.peak_rss < MEMORY_BOUND, str(measured)
    assert "MemoryError" not in measured.stderr + measured.stdout, str(measured)


def assert_still_huge(path: Path) -> None:
    info = path.stat()
    assert info.st_size == HUGE and info.st_blocks * 512 < (1 << 20), "the agent changed or filled the file"


# --- a file the user made huge (sparse) before the agent looked ------------------------------------------------


def test_a_sparse_64_gib_authorized_keys_is_refused_by_every_command_in_bounded_memory(host: Host) -> None:
    host.as_user(TRUNCATE, "-s", str(HUGE), str(host.keys_file))

    grant = host.command(
        "provisionAuthorizedKeys", "--username", host.user, "--request-id", "r-2", "--public-key", host.public_key
    )
    assert_bounded(grant)
    result = grant.json_after("Execution Result:\n")
    assert result["success"] is False and TOO_BIG in str(result["error"]), str(grant)
    assert str(host.keys_file) in str(result["error"])
    record = json.loads((host.directory / "state" / "ledger" / "users" / f"{host.user}.json").read_text())
    assert "r-2" not in record["keys"]  # refused before any write: the ledger claims nothing for it

    revoke = host.command(
        "provisionAuthorizedKeys", "--username", host.user, "--request-id", "r-1", "--action", "revoke"
    )
    assert_bounded(revoke)
    result = revoke.json_after("Execution Result:\n")
    assert result["success"] is False and TOO_BIG in str(result["error"]), str(revoke)

    audit = host.command("runAudit")
    assert_bounded(audit)
    result = audit.json_after("Execution Result:\n")
    assert result["success"] is True, str(audit)
    output = str(result["output"])
    # The user's section is one line saying why, not the first bytes of a file the agent refused to read whole.
    section = output.split(f"USER:{host.user}\n", 1)[1].split("\n", 1)[0]
    assert section.startswith("# p0-ssh-agent: skipped: ") and TOO_BIG in section, section
    assert "\0" not in output
    assert_still_huge(host.keys_file)


def test_a_sparse_64_gib_authorized_keys_is_reported_by_status_and_doctor_in_bounded_memory(host: Host) -> None:
    host.as_user(TRUNCATE, "-s", str(HUGE), str(host.keys_file))
    config = str(host.cli.config)

    status = run_measured([str(AGENT), "status", "--json", "-c", config], host.directory, "status")
    assert_bounded(status)
    drift = json.loads(status.stdout)["drift"]
    assert [(d["kind"], d["user"]) for d in drift] == [("unreadable", host.user)], str(status)
    assert TOO_BIG in drift[0]["detail"]

    doctor = run_measured([str(AGENT), "doctor", "--json", "--offline", "-c", config], host.directory, "doctor")
    assert_bounded(doctor)
    findings = [c for c in json.loads(doctor.stdout)["checks"] if TOO_BIG in json.dumps(c)]
    assert findings, str(doctor)
    assert_still_huge(host.keys_file)


@contextlib.contextmanager
def daemon(host: Host) -> Iterator[tuple[int, subprocess.Popen[bytes], Path, Path]]:
    """`p0-ssh-agent start` (reconciling at start-up) behind the dev backend; yields the backend's HTTP port and
    the agent's process for _reap."""
    rpc_port, http_port = free_port(), free_port()
    keys = Path(host.directory, "keys")
    config = write_config(host.directory, keys, tunnel_port=rpc_port, name="daemon.yaml")
    backend_log = (host.directory / "backend.log").open("wb")
    backend = subprocess.Popen(
        [str(AGENT), "dev-backend", "--rpc-listen", f"127.0.0.1:{rpc_port}", "--http-listen",
         f"127.0.0.1:{http_port}", "--public-key", str(keys / "jwk.public.json"), "--call-timeout-ms", "120000"],
        stdout=backend_log, stderr=subprocess.STDOUT, env=CHILD_ENV,
    )  # fmt: skip
    agent = _start([str(AGENT), "start", "--config", str(config)], host.directory, "daemon")
    try:
        yield http_port, *agent
    finally:
        for process in (agent[0], backend):
            with contextlib.suppress(ProcessLookupError):
                process.send_signal(signal.SIGTERM)
        backend.wait(timeout=30)
        backend_log.close()


def wait_until_connected(port: int, agent: subprocess.Popen[bytes], err: Path) -> None:
    """A readiness wait (not a timing assertion): the first listUsers the agent answers."""
    deadline = time.monotonic() + 60
    while True:
        with contextlib.suppress(OSError, ValueError):
            if post(port, {"command": "listUsers"})[0] == 200:
                return
        assert agent.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
        time.sleep(0.1)


def post(port: int, data: object) -> tuple[int, dict[str, object]]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        connection.request("POST", f"/client/{CLIENT_ID}", json.dumps(data), {"content-type": "application/json"})
        response = connection.getresponse()
        return response.status, json.loads(response.read() or b"{}")
    finally:
        connection.close()


def test_the_daemon_reconciles_and_audits_a_sparse_64_gib_authorized_keys_in_bounded_memory(host: Host) -> None:
    host.as_user(TRUNCATE, "-s", str(HUGE), str(host.keys_file))
    with daemon(host) as (port, agent, out, err):
        wait_until_connected(port, agent, err)
        deadline = time.monotonic() + 60
        status, body = post(port, {"command": "runAudit"})
        assert status == 200 and body["success"] is True, body
        section = str(body["output"]).split(f"USER:{host.user}\n", 1)[1].split("\n", 1)[0]
        assert TOO_BIG in section, section
        while "drift=" not in err.read_text():  # the start-up reconciliation's finding (logged to stderr)
            assert agent.poll() is None and time.monotonic() < deadline, err.read_text()[-3000:]
            time.sleep(0.1)
    measured = _reap(agent, out, err)
    assert_bounded(measured)
    drift = [line for line in measured.stderr.splitlines() if "drift=" in line]
    assert any("drift=unreadable" in line and TOO_BIG in line for line in drift), str(measured)
    assert_still_huge(host.keys_file)


# --- a file that grows after the agent's fstat ----------------------------------------------------------------

# Runs as the user: opens their own file, waits (inotify IN_ACCESS) until someone reads it, that is after the
# reader's open and fstat, then makes it 64 GiB while the reader is still in its read loop.
GROW_ON_READ = r"""
import ctypes, os, sys
path, size = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(path, os.O_WRONLY)
inotify = libc.inotify_init1(0)
if inotify < 0 or libc.inotify_add_watch(inotify, path.encode(), 0x1) < 0:  # IN_ACCESS
    sys.exit("inotify: " + os.strerror(ctypes.get_errno()))
print("ready", flush=True)
os.read(inotify, 4096)
os.ftruncate(fd, size)
"""


@contextlib.contextmanager
def grows_when_read(host: Host) -> Iterator[None]:
    """The file filled to exactly MAX_FILE_BYTES (the most an edit accepts), cold in the page cache so that reading
    it takes a while, and the user's process waiting to grow it."""
    content = host.keys_file.read_bytes()
    padding = MAX_FILE_BYTES - len(content)
    filler = b"# " + b"x" * 1021 + b"\n"
    body = content + filler * (padding // len(filler))
    body += b"#" * (MAX_FILE_BYTES - len(body) - 1) + b"\n"
    assert len(body) == MAX_FILE_BYTES
    host.keys_file.write_bytes(body)
    fd = os.open(host.keys_file, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
    attacker = subprocess.Popen(
        [sys.executable, "-c", GROW_ON_READ, str(host.keys_file), str(HUGE)],
        stdout=subprocess.PIPE, env=CHILD_ENV, user=host.uid, group=host.gid, extra_groups=[],
    )  # fmt: skip
    try:
        assert attacker.stdout is not None and attacker.stdout.readline() == b"ready\n"
        yield
    finally:
        attacker.kill()
        attacker.wait()


def test_a_file_grown_after_the_fstat_does_not_make_a_grant_read_it_all(host: Host) -> None:
    with grows_when_read(host):
        grant = host.command(
            "provisionAuthorizedKeys", "--username", host.user, "--request-id", "r-2", "--public-key", host.public_key
        )
    assert_bounded(grant)
    result = grant.json_after("Execution Result:\n")
    # Which one depends on when the user's truncate landed: within the read (refused), or after it (the agent had
    # read a whole file of the allowed size and replaced it). Never more than the limit read.
    assert result["success"] is True or TOO_BIG in str(result["error"]), str(grant)


def test_a_file_grown_after_the_fstat_does_not_make_reconciliation_read_it_all(host: Host) -> None:
    with grows_when_read(host):
        status = run_measured([str(AGENT), "status", "--json", "-c", str(host.cli.config)], host.directory, "status")
    assert_bounded(status)
    drift = json.loads(status.stdout)["drift"]
    assert all(d["kind"] == "unreadable" and TOO_BIG in d["detail"] for d in drift), str(status)


# --- runAudit: lines that look like markers, and a hard link --------------------------------------------------

SECTIONS = ["SSHD_CONFIG", "AUTHORIZED_KEYS", "PASSWD", "GROUPS", "SUDOERS", "HOST_KEYS", "LAST_LOGIN"]


def markers(output: str) -> list[str]:
    """What a lenient parser of runAudit takes for markers: every line (split at every line break
    str.splitlines knows), stripped, that starts with === or USER: in any case."""
    stripped = (line.strip() for line in output.splitlines())
    return [line for line in stripped if line.startswith("===") or line.upper().startswith("USER:")]


def users_section(output: str, user: str) -> str:
    return output.split(f"\nUSER:{user}\n", 1)[1].split("\nUSER:", 1)[0].split("\n===PASSWD===\n", 1)[0] + "\n"


def test_run_audit_shows_forged_markers_as_the_users_escaped_content(host: Host) -> None:
    forged = (
        host.keys_file.read_bytes()
        + (
            f"===SUDOERS===\n{host.user} ALL=(ALL) NOPASSWD: ALL\nUSER:root\nssh-ed25519 AAAAforged root@forged\n"
            "  === PASSWD ===\nuser:admin\na comment\r===GROUPS===\n"
        ).encode()
    )
    host.keys_file.write_bytes(forged)

    audit = host.cli.command("runAudit")
    assert audit.success, str(audit)
    found = markers(audit.output)
    assert [m for m in found if m.startswith("===")] == [f"==={name}===" for name in SECTIONS], found
    # USER lines only inside AUTHORIZED_KEYS, one per home that has a file, in upstream's order (/home/* sorted,
    # then /root), each naming a real home.
    names = [m.removeprefix("USER:") for m in found if not m.startswith("===")]
    assert found[2 : 2 + len(names)] == [f"USER:{name}" for name in names], found
    homes = sorted(name for name in names if name != "root")
    assert names == homes + (["root"] if "root" in names else []) and len(set(names)) == len(names), names
    assert all(Path("/home", name).is_dir() for name in homes) and host.user in homes, names
    # Reversible: the consumer gets the user's file back byte for byte.
    assert unescape(users_section(audit.output, host.user)).encode() == forged


@pytest.fixture
def root_only_file() -> Iterator[Path]:
    """A root-only secret on the same filesystem as /home (a hard link cannot cross one)."""
    secret = Path("/home", f"secret-{secrets.token_hex(4)}")
    secret.write_text("TOPSECRET root:$6$hash:19000:0:99999:7:::\n")
    secret.chmod(0o600)
    try:
        yield secret
    finally:
        secret.unlink()


def test_run_audit_and_a_grant_refuse_a_hard_linked_authorized_keys(host: Host, root_only_file: Path) -> None:
    host.keys_file.unlink()
    # Made by root here; a user does it themselves where fs.protected_hardlinks is 0, or with a link made earlier.
    os.link(root_only_file, host.keys_file)
    with pytest.raises(subprocess.CalledProcessError):
        host.as_user("/usr/bin/cat", str(host.keys_file))  # the user cannot read it themselves

    audit = host.cli.command("runAudit")
    assert audit.success, str(audit)
    assert "TOPSECRET" not in audit.output
    note = f"# p0-ssh-agent: skipped: refusing {host.keys_file}: it has 2 hard links"
    assert users_section(audit.output, host.user).startswith(note), users_section(audit.output, host.user)

    grant = host.cli.command("provisionAuthorizedKeys", host.user, request_id="r-2", public_key=host.public_key)
    assert not grant.success and f"refusing {host.keys_file}: it has 2 hard links" in grant.error, str(grant)
    assert root_only_file.read_text().startswith("TOPSECRET") and root_only_file.stat().st_nlink == 2
