"""Issue 14 item 6, proved with the real sshd: keyStore store, switched on and off with `p0-ssh-agent key-store`.

The sandbox's throwaway /etc/ssh/sshd_config is rewritten to include /etc/ssh/sshd_config.d/*.conf (where the command
installs its drop-in), and an sshd is started on it without -f, so that `sshd -t`, `sshd -T` and the SIGHUP reload
the command does all see this sshd. The agent's state directory is /var/lib/p0-ssh-agent-test-<hex> in the
sandbox's /var/lib overlay: sshd opens the store as the user, so every directory above it must be traversable.

Real useradd/usermod/gpasswd and a real sshd (UsePAM no, StrictModes yes); skipped outside the sandbox.
"""

from __future__ import annotations

import grp
import pwd
import secrets
import shutil
import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from p0_ssh_agent.config import load_config
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_GROUP, SSHD_DROPIN_PATH, sshd_dropin_text
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.expiry import sweep
from p0_ssh_agent.provisioning.pipeline import run_change
from provisioning_support import AGENT, AgentCli, authorized_keys, make_keys, write_config
from sandbox.fixtures import (
    CHILD_ENV,
    SSH_KEYGEN,
    SSHD,
    Sandbox,
    Sshd,
    _free_port,
    _wait_for_port,
    make_keypair,
    run,
    sshd_config_text,
)
from sandbox.fixtures import unique_user_name as new_name
from test_provisioning_e2e import logs_in

pytestmark = pytest.mark.sandbox

SSHD_CONFIG = Path("/etc/ssh/sshd_config")


@pytest.fixture
def system_sshd(sandbox: Sandbox) -> Iterator[Sshd]:
    """An sshd on the sandbox's /etc/ssh/sshd_config (restored afterwards, with no drop-in of ours left)."""
    directory = sandbox.root / f"system-sshd-{secrets.token_hex(4)}"
    directory.mkdir(mode=0o700)
    host_key = directory / "host_ed25519"
    run([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", host_key])
    original = SSHD_CONFIG.read_bytes() if SSHD_CONFIG.exists() else None
    Path("/etc/ssh/sshd_config.d").mkdir(mode=0o755, exist_ok=True)
    process: subprocess.Popen[bytes] | None = None
    try:
        for _attempt in range(5):
            port = _free_port()
            SSHD_CONFIG.write_text(sshd_config_text(directory, port, host_key, include="/etc/ssh/sshd_config.d/*.conf"))
            run([SSHD, "-t"])
            log = directory / f"sshd-{port}.log"
            with log.open("wb") as log_file:
                process = subprocess.Popen([SSHD, "-D", "-e"], stdout=log_file, stderr=log_file, env=CHILD_ENV)
            if _wait_for_port(port, process, log):
                break
        assert process is not None and process.poll() is None
        yield Sshd(port=port, config=SSHD_CONFIG, log=log, process=process)
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=10)
        Path(SSHD_DROPIN_PATH).unlink(missing_ok=True)
        if original is not None:
            SSHD_CONFIG.write_bytes(original)


@pytest.fixture
def traversable_state() -> Iterator[Path]:
    state = Path(f"/var/lib/p0-ssh-agent-test-{secrets.token_hex(4)}")
    state.mkdir(mode=0o700)
    yield state
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture(scope="module")
def agent_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_keys(tmp_path_factory.mktemp("agent"))


def config_with_state(tmp_path: Path, agent_keys: Path, state: Path, *extra: str) -> Path:
    path = write_config(tmp_path, agent_keys)
    text = path.read_text().replace(f"stateDir: {tmp_path / 'state'}", f"stateDir: {state}")
    path.write_text(text + "".join(line + "\n" for line in extra))
    return path


def key_store(config: Path, mode: str) -> subprocess.CompletedProcess[str]:
    argv = [str(AGENT), "key-store", mode, "--config", str(config)]
    return subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=180, check=False)


def logs_in_soon(sshd: Sshd, user: str, key: Path) -> bool:
    """logs_in, once sshd listens again (a SIGHUP-ed sshd re-executes itself: a readiness wait)."""
    assert _wait_for_port(sshd.port, sshd.process, sshd.log)
    return logs_in(sshd, user, key)


def members() -> list[str]:
    try:
        return list(grp.getgrnam(KEY_STORE_GROUP).gr_mem)
    except KeyError:
        return []


def assert_nothing_readable_to_others(state: Path) -> None:
    """0711 lets sshd pass the state directory; nothing in it may be readable (or listable) by anyone else: the
    ledger files 0600, its subdirectories 0700, the store 0711 and its files root:<the user's group> 0640."""
    for path in [state, *state.rglob("*")]:
        info = path.lstat()
        mode, in_store = info.st_mode & 0o7777, path.parent == state / "keys"
        if path in (state, state / "keys"):
            assert mode == 0o711 and info.st_uid == 0, (path, oct(mode))
        elif in_store:
            assert mode == 0o640 and info.st_uid == 0 and info.st_gid == pwd.getpwnam(path.name).pw_gid, path
        else:
            assert mode & 0o077 == 0, (path, oct(mode))


def test_store_mode_end_to_end(
    sandbox: Sandbox, system_sshd: Sshd, tmp_path: Path, agent_keys: Path, traversable_state: Path
) -> None:
    sshd, state = system_sshd, traversable_state
    config = config_with_state(tmp_path, agent_keys, state)
    cli = AgentCli(config)
    name = new_name()
    keys = {label: make_keypair(tmp_path, label) for label in ("before", "own", "store")}

    # A grant made in home mode, before the switch.
    assert cli.command("provisionUser", name, request_id="req-1").success
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-1", public_key=keys["before"][1]).success
    assert logs_in(sshd, name, keys["before"][0])

    switched = key_store(config, "store")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    assert Path(SSHD_DROPIN_PATH).read_text() == sshd_dropin_text(f"{state}/keys")
    assert (state.stat().st_mode & 0o7777, (state / "keys").stat().st_mode & 0o7777) == (0o711, 0o711)
    store_file = state / "keys" / name
    assert b"# RequestID: req-1" in store_file.read_bytes()
    assert b"req-1" not in authorized_keys(name).read_bytes()  # moved, not copied
    assert name in members() and load_config(config).key_store == "store"
    assert logs_in_soon(sshd, name, keys["before"][0])  # the home-mode grant keeps working

    assert_nothing_readable_to_others(state)

    shown = key_store(config, "show")
    assert "keyStore: store" in shown.stdout and ": installed" in shown.stdout, shown.stdout
    assert "sshd honours it: yes" in shown.stdout, shown.stdout

    # A key the user appends to the file they own does not log them in.
    with authorized_keys(name).open("a") as own:
        own.write(keys["own"][1] + "\n")
    assert not logs_in(sshd, name, keys["own"][0])

    # A grant in store mode logs in; its revoke cuts it.
    assert cli.command("provisionAuthorizedKeys", name, request_id="req-2", public_key=keys["store"][1]).success
    assert b"req-2" in store_file.read_bytes() and b"req-2" not in authorized_keys(name).read_bytes()
    assert logs_in(sshd, name, keys["store"][0])
    assert cli.command("provisionAuthorizedKeys", name, action="revoke", request_id="req-2").success
    assert not logs_in(sshd, name, keys["store"][0]) and logs_in(sshd, name, keys["before"][0])

    # Back home: the grant made before the first switch still logs in, from ~/.ssh/authorized_keys.
    back = key_store(config, "home")
    assert back.returncode == 0, back.stdout + back.stderr
    assert not Path(SSHD_DROPIN_PATH).exists() and not store_file.exists()
    assert name not in members() and load_config(config).key_store == "home"
    assert b"# RequestID: req-1" in authorized_keys(name).read_bytes()
    assert logs_in_soon(sshd, name, keys["before"][0])
    assert logs_in(sshd, name, keys["own"][0])  # home mode: the user's own file decides again (the default)
    again = key_store(config, "home")  # idempotent
    assert again.returncode == 0, again.stdout + again.stderr


def test_expiry_cuts_a_store_grant(
    sandbox: Sandbox, system_sshd: Sshd, tmp_path: Path, agent_keys: Path, traversable_state: Path
) -> None:
    config = config_with_state(tmp_path, agent_keys, traversable_state, "maxGrantSeconds: 3600")
    switched = key_store(config, "store")
    assert switched.returncode == 0, switched.stdout + switched.stderr
    engine = Engine.on_host(load_config(config), traversable_state, audit_trail=AuditTrail.off())
    name, (key, public) = new_name(), make_keypair(tmp_path, "expiring")
    for command, fields in (("provisionUser", {}), ("provisionAuthorizedKeys", {"publicKey": public})):
        data = {"command": command, "action": "grant", "requestId": "exp-1", "userName": name, **fields}
        assert run_change(engine, parse_change(command, data)).result.success
    assert b"exp-1" in (traversable_state / "keys" / name).read_bytes()
    assert logs_in_soon(system_sshd, name, key)
    report = sweep(engine, datetime.now(UTC) + timedelta(hours=2))
    assert [grant.request_id for grant in report.revoked] == ["exp-1"] and not report.failed
    assert not logs_in(system_sshd, name, key)
    assert not (traversable_state / "keys" / name).exists()
    assert key_store(config, "home").returncode == 0


def test_a_drop_in_sshd_refuses_is_removed_again(
    sandbox: Sandbox, system_sshd: Sshd, tmp_path: Path, agent_keys: Path, traversable_state: Path
) -> None:
    config = config_with_state(tmp_path, agent_keys, traversable_state)
    bogus = Path("/etc/ssh/sshd_config.d/99-p0-test-bogus.conf")
    bogus.write_text("NoSuchKeyword yes\n")
    try:
        refused = key_store(config, "store")
    finally:
        bogus.unlink()
    assert refused.returncode != 0
    assert "sshd -t refused" in refused.stderr and "NoSuchKeyword" in refused.stderr, refused.stderr
    assert not Path(SSHD_DROPIN_PATH).exists()
    assert load_config(config).key_store == "home"


def test_a_read_only_etc_ssh_says_to_run_it_from_a_root_shell(
    sandbox: Sandbox, tmp_path: Path, agent_keys: Path, traversable_state: Path
) -> None:
    config = config_with_state(tmp_path, agent_keys, traversable_state)
    script = (
        "mount --bind /etc/ssh /etc/ssh && mount -o remount,bind,ro /etc/ssh && "
        f'exec "{AGENT}" key-store store --config "{config}"'
    )
    done = subprocess.run(
        ["/usr/bin/unshare", "-m", "--propagation", "private", "/bin/sh", "-c", script],
        capture_output=True,
        text=True,
        env=CHILD_ENV,
        timeout=120,
        check=False,
    )
    assert done.returncode != 0
    assert "read-only" in done.stderr and "root shell" in done.stderr, done.stderr
    assert not Path(SSHD_DROPIN_PATH).exists()
