"""The namespace sandbox itself: marked tests skip outside it, the `sandbox` fixture refuses a fake one, and inside
it real useradd, keys, certificates and ssh logins work on a copy of /etc that the host never sees.

/root and /var/lib are the sandbox's too (an agent with default settings keeps its ledger in /var/lib/p0-ssh-agent):
each test proves the mount before it writes there. The host side (fingerprints of passwd/shadow/group/gshadow/
sudoers, the agent's state directory and /root before and after a run) is checked by tests/sandbox/enter after
every run and exercised end to end by tests/sandbox/selfcheck."""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from provisioning_support import AGENT, make_keys
from sandbox.fixtures import CHILD_ENV, SANDBOX_ENV, Sandbox, Sshd, TestCA, pwd_entry, unique_user_name

TESTS_DIR = Path(__file__).resolve().parent
USER_NAME_RE = r"^[a-z_][a-z0-9_-]{0,31}$"

HARNESS_PROBE = """
import pytest

@pytest.mark.sandbox
def test_marked():
    raise AssertionError("a sandbox test ran outside the sandbox")

def test_uses_fixture(sandbox):
    (sandbox.root / "touched").write_text("the fixture let a test through")
"""


def run_inner_pytest(tmp_path: Path, env_sandbox: str | None) -> subprocess.CompletedProcess[str]:
    """pytest on HARNESS_PROBE with only our plugin loaded, in a clean rootdir, with P0_TEST_SANDBOX as given."""
    (tmp_path / "test_probe.py").write_text(HARNESS_PROBE)
    env = {key: value for key, value in os.environ.items() if key != SANDBOX_ENV}
    env["PYTHONPATH"] = str(TESTS_DIR)
    if env_sandbox is not None:
        env[SANDBOX_ENV] = env_sandbox
    return subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "sandbox.fixtures", "-p", "no:cacheprovider", "-rs", "-q",
         "--rootdir", str(tmp_path), str(tmp_path / "test_probe.py")],
        capture_output=True, text=True, env=env, cwd=tmp_path, check=False, timeout=120,
    )  # fmt: skip


def test_outside_the_sandbox_marked_tests_skip_and_the_fixture_fails(tmp_path: Path) -> None:
    done = run_inner_pytest(tmp_path, env_sandbox=None)
    assert "1 skipped, 1 error" in done.stdout, done.stdout + done.stderr
    assert "needs the namespace sandbox" in done.stdout
    assert "P0_TEST_SANDBOX is unset" in done.stdout
    assert not (tmp_path / "touched").exists()


def test_a_hand_set_variable_is_not_a_sandbox(tmp_path: Path) -> None:
    """Exporting P0_TEST_SANDBOX without the mounts must not let a mutating test through."""
    fake = tmp_path / "fake"
    (fake / "etc").mkdir(parents=True)
    (fake / "home").mkdir()
    done = run_inner_pytest(tmp_path, env_sandbox=str(fake))
    assert "1 failed, 1 error" in done.stdout, done.stdout + done.stderr
    assert "/etc is not" in done.stdout
    assert "a sandbox test ran outside the sandbox" in done.stdout  # the marker alone does not skip when set
    assert not (fake / "touched").exists()


def test_unique_user_names_are_valid_and_distinct() -> None:
    names = {unique_user_name() for _ in range(200)}
    assert len(names) == 200
    assert all(re.fullmatch(USER_NAME_RE, name) for name in names)


@pytest.mark.sandbox
def test_etc_and_home_are_the_sandbox_copies(sandbox: Sandbox) -> None:
    for name in ("etc", "home"):
        assert Path(f"/{name}").stat().st_ino == (sandbox.root / name).stat().st_ino
    marker = unique_user_name()
    (sandbox.root / "home" / marker).mkdir()
    assert Path("/home", marker).is_dir()
    Path("/home", marker).rmdir()


@pytest.mark.sandbox
def test_useradd_changes_the_copy_not_the_recorded_host_file(sandbox: Sandbox) -> None:
    """`enter` fingerprinted the host's /etc/passwd before mounting; a useradd here changes only the copy."""
    fingerprint = (sandbox.root / "host-fingerprint.before").read_text()
    host_passwd_hash = next(line.split()[0] for line in fingerprint.splitlines() if line.endswith(" /etc/passwd"))
    name = unique_user_name()
    sandbox.useradd(name)
    try:
        copy = Path("/etc/passwd").read_bytes()
        assert f"\n{name}:".encode() in copy
        assert hashlib.sha256(copy).hexdigest() != host_passwd_hash
        assert Path("/home", name).is_dir()
    finally:
        sandbox.userdel(name)
    assert not Path("/home", name).exists()


@pytest.mark.sandbox
def test_real_key_login(sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str], tmp_path: Path) -> None:
    key, public = user_keypair
    name = unique_user_name()
    sandbox.useradd(name)
    try:
        sandbox.install_key(name, public)
        done = sshd.ssh(name, key, "id", "-un")
        assert done.returncode == 0, done.stderr + sshd.log.read_text()[-2000:]
        assert done.stdout.strip() == name

        other_key = tmp_path / "other"
        subprocess.run(["/usr/bin/ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(other_key)], check=True)
        refused = sshd.ssh(name, other_key, "true")
        assert refused.returncode == 255
        assert "Permission denied" in refused.stderr
    finally:
        sandbox.userdel(name)


@pytest.mark.sandbox
def test_a_locked_account_cannot_log_in_with_usepam_no(
    sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str]
) -> None:
    """useradd's '!' password refuses key logins under UsePAM no; '*' (what the agent sets) allows them."""
    key, public = user_keypair
    name = unique_user_name()
    sandbox.useradd(name, key_login=False)
    try:
        sandbox.install_key(name, public)
        assert sshd.ssh(name, key, "true").returncode == 255
        sandbox.run("/usr/sbin/usermod", "-p", "*", name)
        assert sshd.ssh(name, key, "true").returncode == 0
    finally:
        sandbox.userdel(name)


@pytest.mark.sandbox
def test_certificate_login_through_a_cert_authority_line(
    sandbox: Sandbox, sshd: Sshd, user_keypair: tuple[Path, str], test_ca: TestCA
) -> None:
    key, _public = user_keypair
    name = unique_user_name()
    sandbox.useradd(name)
    try:
        sandbox.install_key(name, f'cert-authority,principals="{name}" {test_ca.public_line}')
        assert sshd.ssh(name, key, "true").returncode == 255  # the bare key is not authorized

        cert = test_ca.sign(key.with_name(key.name + ".pub"), name)
        done = sshd.ssh(name, key, "id", "-un", cert=cert)
        assert done.returncode == 0, done.stderr + sshd.log.read_text()[-2000:]
        assert done.stdout.strip() == name

        wrong = test_ca.sign(key.with_name(key.name + ".pub"), "somebody-else")
        assert sshd.ssh(name, key, "true", cert=wrong).returncode == 255
    finally:
        sandbox.userdel(name)


# --- /root and /var/lib (the agent's default state directory) ---------------------------------------------------


def var_lib_upper_layer(sandbox: Sandbox) -> Path:
    """The tmpfs layer that takes every write to /var/lib, after proving /var/lib is that overlay. Nothing may be
    written under /var/lib before this returns: on a host it would be the host's."""
    fields = subprocess.run(
        ["/usr/bin/findmnt", "-n", "-o", "FSTYPE,OPTIONS", "--mountpoint", "/var/lib"],
        capture_output=True, text=True, check=False,
    ).stdout.split()  # fmt: skip
    assert fields and fields[0] == "overlay", f"/var/lib is not an overlay here: {fields}"
    options = dict(option.partition("=")[::2] for option in fields[1].split(","))
    upper = Path(options["upperdir"])
    assert upper.is_relative_to(sandbox.root), upper
    assert options["lowerdir"] == "/var/lib"
    return upper


@pytest.mark.sandbox
def test_root_is_an_empty_copy_with_roots_owner_and_mode(sandbox: Sandbox) -> None:
    inside = Path("/root").stat()
    copy = (sandbox.root / "mnt_root").stat()
    assert (inside.st_dev, inside.st_ino) == (copy.st_dev, copy.st_ino), "/root is the host's"
    assert (inside.st_uid, inside.st_gid, stat.S_IMODE(inside.st_mode)) == (0, 0, 0o700)
    marker = Path("/root", unique_user_name())
    marker.write_text("written inside the sandbox\n")
    try:
        assert (sandbox.root / "mnt_root" / marker.name).read_text() == "written inside the sandbox\n"
    finally:
        marker.unlink()


@pytest.mark.sandbox
def test_a_write_under_var_lib_lands_in_the_sandbox(sandbox: Sandbox) -> None:
    upper = var_lib_upper_layer(sandbox)
    state = Path("/var/lib/p0-ssh-agent")
    existed = state.exists()
    marker = state / unique_user_name()
    state.mkdir(exist_ok=True)
    try:
        marker.write_text("x\n")
        assert (upper / "p0-ssh-agent" / marker.name).read_text() == "x\n"  # the scratch layer holds it
    finally:
        marker.unlink()
        if not existed:
            state.rmdir()


@pytest.mark.sandbox
def test_an_agent_with_default_settings_keeps_its_ledger_in_the_sandbox(sandbox: Sandbox, tmp_path: Path) -> None:
    """No stateDir in the config: the ledger goes to /var/lib/p0-ssh-agent, which must be the sandbox's."""
    upper = var_lib_upper_layer(sandbox)
    state = Path("/var/lib/p0-ssh-agent")
    assert not state.exists(), "the sandbox starts without agent state"
    config = tmp_path / "config.yaml"
    config.write_text(f"orgId: o\nhostId: h\ntunnelHost: ws://127.0.0.1:9\nkeyPath: {make_keys(tmp_path)}\n")
    name = unique_user_name()
    argv = [str(AGENT), "command", "--config", str(config), "--command", "provisionUser", "--username", name]
    try:
        done = subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=120, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        assert f'"{name}"' in (upper / "p0-ssh-agent" / "ledger" / "users" / f"{name}.json").read_text()
    finally:
        if pwd_entry(name) is not None:
            sandbox.userdel(name)
        shutil.rmtree(state, ignore_errors=True)
