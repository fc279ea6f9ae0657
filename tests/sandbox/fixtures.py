"""pytest fixtures for tests that need real useradd, visudo and sshd, safely.

`make test` runs the whole suite under `tests/sandbox/enter`, so /etc is a throwaway copy, /home, /root, /run and
/var/log are scratch directories and /var/lib is an overlay whose writes stay in the sandbox (test-harness.md §3).
Tests marked `sandbox` are skipped, with the reason, when pytest runs outside it. The `sandbox` fixture proves we
are inside before a test may change anything:

    sandbox      Sandbox: .root, .run(), .useradd(), .userdel(), .install_key()
    sshd         (session) a real sshd on 127.0.0.1:<free port>, UsePAM no; .ssh(user, key, *argv, cert=None)
    user_keypair (private key path, public key line) from `ssh-keygen -t ed25519`
    test_ca      TestCA: a fresh user CA; .sign(pubkey_path, principal) -> certificate path
    unique_user_name() -> "p0t" + random suffix

Loaded by tests/conftest.py as a plugin (pytest_plugins), so every test module sees the fixtures.
"""

from __future__ import annotations

import grp
import os
import pwd
import secrets
import shlex
import socket
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

SANDBOX_ENV = "P0_TEST_SANDBOX"
SSHD = "/usr/sbin/sshd"
SSH = "/usr/bin/ssh"
SSH_KEYGEN = "/usr/bin/ssh-keygen"
GROUPADD = "/usr/sbin/groupadd"
GROUPDEL = "/usr/sbin/groupdel"
USERADD = "/usr/sbin/useradd"
USERDEL = "/usr/sbin/userdel"
USERMOD = "/usr/sbin/usermod"
# Children get a predictable environment: no locale surprises in messages the tests match, and an agent started
# with it audits into no journal (the machine's is not the tests' to write).
CHILD_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C", "HOME": "/root", "P0_SSH_AGENT_JOURNAL_SOCKET": ""}
OUTSIDE_REASON = (
    "needs the namespace sandbox: run `make test`, or `tests/sandbox/enter .venv/bin/pytest ...` as root "
    f"({SANDBOX_ENV} is unset)"
)


class NotInSandbox(RuntimeError):
    """A mutating test was about to run against the real machine."""


def unique_user_name() -> str:
    """A fresh user name, valid for ^[a-z_][a-z0-9_-]{0,31}$ and for useradd: "p0t" + 10 hex digits."""
    return "p0t" + secrets.token_hex(5)


def sandbox_root() -> Path:
    """The scratch directory of the sandbox we run in, after proving /etc and /home are its copies.

    Checking the variable alone is not enough (someone could export it by hand): /etc must be the very inode of
    <root>/etc, which is only true behind the bind mount `enter` makes.
    """
    value = os.environ.get(SANDBOX_ENV)
    if not value:
        raise NotInSandbox(OUTSIDE_REASON)
    root = Path(value)
    for name in ("etc", "home"):
        inside, copy = Path(f"/{name}").stat(), (root / name).stat()
        if (inside.st_dev, inside.st_ino) != (copy.st_dev, copy.st_ino):
            raise NotInSandbox(f"{SANDBOX_ENV}={value} is set but /{name} is not {root / name}: refusing to touch it")
    return root


def run(
    argv: Sequence[str | os.PathLike[str]], *, check: bool = True, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """Run an argv list (absolute program path, no shell), capture text output; failures show stdout and stderr."""
    done = subprocess.run(
        [os.fspath(part) for part in argv], capture_output=True, text=True, env=CHILD_ENV, timeout=timeout, check=False
    )
    if check and done.returncode != 0:
        raise AssertionError(
            f"{shlex.join(done.args)} exited {done.returncode}\nstdout: {done.stdout}\nstderr: {done.stderr}"
        )
    return done


@dataclass(frozen=True)
class Sandbox:
    """Helpers for changing the sandbox's accounts; every method may only be reached through the `sandbox` fixture."""

    root: Path

    def run(self, *argv: str | os.PathLike[str], check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(argv, check=check)

    def useradd(self, name: str, *extra: str, key_login: bool = True, shell: str = "/bin/bash") -> pwd.struct_passwd:
        """useradd -m, with `extra` options after the shell's (a later -s wins). With key_login the shadow password
        field becomes '*', as the agent sets it: useradd leaves '!' (locked), and with UsePAM no sshd refuses key
        logins to a locked account (test-harness.md §3)."""
        run([USERADD, "-m", "-s", shell, *extra, name])
        if key_login:
            run([USERMOD, "-p", "*", name])
        return pwd.getpwnam(name)

    def ensure_group(self, name: str, added: list[str]) -> None:
        """groupadd `name` unless it exists (a fresh sandbox may have no docker group), noting it in `added`."""
        try:
            grp.getgrnam(name)
        except KeyError:
            run([GROUPADD, name])
            added.append(name)

    def userdel(self, name: str) -> None:
        # Exit 8 is "user currently logged in": sshd's session process for an ssh that just returned can outlive
        # the client by a few milliseconds. Wait for it (a guard of about 10 s, not a timing assertion).
        for _ in range(200):
            if run([USERDEL, "-r", name], check=False).returncode != 8:
                break
            time.sleep(0.05)
        if pwd_entry(name) is not None:
            run([USERDEL, "-r", name])  # still there: fail with userdel's own words

    def install_key(self, name: str, public_line: str) -> Path:
        """Write ~name/.ssh/authorized_keys holding one key, with the owner and modes StrictModes demands."""
        entry = pwd.getpwnam(name)
        ssh_dir = Path(entry.pw_dir) / ".ssh"
        ssh_dir.mkdir(mode=0o700, exist_ok=True)
        keys = ssh_dir / "authorized_keys"
        keys.write_text(public_line.rstrip("\n") + "\n")
        keys.chmod(0o600)
        for path in (ssh_dir, keys):
            os.chown(path, entry.pw_uid, entry.pw_gid)
        return keys


@dataclass(frozen=True)
class Sshd:
    """A running sshd on 127.0.0.1:port inside the sandbox; `log` is its stderr (LogLevel VERBOSE)."""

    port: int
    config: Path
    log: Path
    process: subprocess.Popen[bytes] = field(repr=False)

    def ssh(
        self,
        user: str,
        key_path: Path | str,
        *remote_argv: str,
        cert: Path | str | None = None,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Log in with the real ssh client and run remote_argv (quoted with shlex.join, since sshd hands the command
        to the user's shell as one string). Never raises on a refused login: check .returncode (255 = ssh failed)."""
        argv = [
            SSH,
            "-p", str(self.port),
            "-i", os.fspath(key_path),
            "-o", "StrictHostKeyChecking=no",
            "-o", "UserKnownHostsFile=/dev/null",
            "-o", "BatchMode=yes",
            "-o", "IdentitiesOnly=yes",
            "-o", "LogLevel=ERROR",
            "-o", "ConnectTimeout=20",
            "-F", "/dev/null",
        ]  # fmt: skip
        if cert is not None:
            argv += ["-o", f"CertificateFile={os.fspath(cert)}"]
        argv += ["-l", user, "127.0.0.1", "--", shlex.join(remote_argv) if remote_argv else "true"]
        return run(argv, check=False, timeout=timeout)


@dataclass(frozen=True)
class TestCA:
    """An OpenSSH user CA made for one test; sshd does not trust it globally (a `cert-authority` line must)."""

    __test__ = False  # not a test class, despite the name

    private_path: Path
    public_line: str

    def sign(self, pubkey_path: Path | str, principal: str, *, identity: str = "p0-test") -> Path:
        """ssh-keygen -s: a certificate for `principal`, valid one hour; returns <key>-cert.pub."""
        run([SSH_KEYGEN, "-q", "-s", self.private_path, "-I", identity, "-n", principal, "-V", "+1h", pubkey_path])
        path = Path(pubkey_path)
        return path.with_name(path.name.removesuffix(".pub") + "-cert.pub")


def make_keypair(directory: Path, name: str = "id_ed25519") -> tuple[Path, str]:
    private = directory / name
    run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-C", f"{name}@p0-test", "-f", private])
    return private, private.with_name(name + ".pub").read_text().strip()


def _free_port() -> int:
    # sshd cannot report the port it picked, so take one the kernel just handed out; `sshd` retries on the rare race.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def sshd_config_text(directory: Path, port: int, host_key: Path, *, include: str | None = None) -> str:
    """The test sshd's configuration; `include`: a glob of drop-ins read first (as Debian's sshd_config does)."""
    return "\n".join(
        [
            *([f"Include {include}"] if include else []),
            f"Port {port}",
            "ListenAddress 127.0.0.1",
            f"HostKey {host_key}",
            f"PidFile {directory / 'sshd.pid'}",
            # The tougher case: without PAM a locked ('!') account cannot log in, so the agent must set '*'.
            "UsePAM no",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "PubkeyAuthentication yes",
            "AuthorizedKeysFile .ssh/authorized_keys",
            "StrictModes yes",
            "LogLevel VERBOSE",
            "PrintMotd no",
            "",
        ]
    )


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> bool:
    """True once sshd accepts connections, False if it exited (port taken). A readiness wait, not a timing test."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return False
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return True
        except OSError:
            time.sleep(0.02)
    process.kill()
    raise AssertionError(f"sshd did not listen on 127.0.0.1:{port} within 30 s; log:\n{log.read_text()}")


def start_sshd(directory: Path) -> Sshd:
    directory.mkdir(mode=0o700, exist_ok=True)
    host_key = directory / "host_ed25519"
    if not host_key.exists():
        run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", host_key])
    failures = []
    for _attempt in range(5):
        port = _free_port()
        config = directory / "sshd_config"
        config.write_text(sshd_config_text(directory, port, host_key))
        run([SSHD, "-t", "-f", config])
        log = directory / f"sshd-{port}.log"
        with log.open("wb") as log_file:
            process = subprocess.Popen(
                [SSHD, "-D", "-e", "-f", os.fspath(config)], stdout=log_file, stderr=log_file, env=CHILD_ENV
            )
        if _wait_for_port(port, process, log):
            return Sshd(port=port, config=config, log=log, process=process)
        failures.append(log.read_text())
    raise AssertionError("sshd did not start:\n" + "\n".join(failures))


# --- pytest wiring ------------------------------------------------------------------------------------------


def pytest_configure(config: pytest.Config) -> None:
    # Declared in pyproject too; registering here keeps the plugin usable on its own (tests of the harness).
    config.addinivalue_line("markers", "sandbox: needs the namespace sandbox (tests/sandbox/enter)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get(SANDBOX_ENV):
        return
    skip = pytest.mark.skip(reason=OUTSIDE_REASON)
    for item in items:
        if item.get_closest_marker("sandbox") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def sandbox_session() -> Sandbox:
    try:
        return Sandbox(root=sandbox_root())
    except NotInSandbox as refusal:
        pytest.fail(str(refusal), pytrace=False)


@pytest.fixture
def sandbox(sandbox_session: Sandbox) -> Sandbox:
    """The sandbox, verified: fails (never skips) if a test asks for it while /etc is the machine's own."""
    return sandbox_session


@pytest.fixture(scope="session")
def sshd(sandbox_session: Sandbox) -> Iterator[Sshd]:
    server = start_sshd(sandbox_session.root / "sshd")
    yield server
    server.process.terminate()
    try:
        server.process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        server.process.kill()
        server.process.wait()


@pytest.fixture
def added_groups(sandbox: Sandbox) -> Iterator[list[str]]:
    """Groups the test had to add (Sandbox.ensure_group): deleted afterwards, after made_accounts' accounts."""
    added: list[str] = []
    yield added
    for name in added:
        run([GROUPDEL, name])


@pytest.fixture
def made_accounts(sandbox: Sandbox, added_groups: list[str]) -> Iterator[list[str]]:
    """Names to delete afterwards (new_account appends what it makes), before the groups they may be in."""
    made: list[str] = []
    yield made
    for name in made:
        sandbox.userdel(name)


def new_account(sandbox: Sandbox, made: list[str], *extra: str, key_login: bool = True) -> str:
    """A fresh account (useradd -m -s /bin/bash, then `extra`), noted in `made` for made_accounts to delete."""
    name = unique_user_name()
    made.append(name)
    sandbox.useradd(name, *extra, key_login=key_login)
    return name


@pytest.fixture
def user_keypair(tmp_path: Path) -> tuple[Path, str]:
    """(private key path, public key line) of a fresh ed25519 key without a passphrase."""
    return make_keypair(tmp_path)


@pytest.fixture
def test_ca(tmp_path: Path) -> TestCA:
    ca_dir = tmp_path / "ca"
    ca_dir.mkdir()
    private, public = make_keypair(ca_dir, "user_ca")
    return TestCA(private_path=private, public_line=public)


def pwd_entry(name: str) -> pwd.struct_passwd | None:
    try:
        return pwd.getpwnam(name)
    except KeyError:
        return None
