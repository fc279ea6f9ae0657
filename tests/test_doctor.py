"""`p0-ssh-agent doctor`: the pure parsers on sample text; the host checks against files in tmp_path (and, in the
namespace sandbox, against the real sshd -T, visudo, sudoers tree and a ledger made by real grants); the network
checks against real servers on loopback (the dev backend, an HTTP(S) server that sends a chosen Date, a CONNECT
proxy that refuses); the installed command end to end. Everything doctor reads is hashed before and after.

Sandbox tests: `tests/sandbox/enter .venv/bin/pytest -q tests/test_doctor.py`.
"""

from __future__ import annotations

import email.utils
import hashlib
import json
import os
import ssl
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from functools import partial
from pathlib import Path

import pytest
import trio

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.devbackend.server import DevBackend
from p0_ssh_agent.diagnostics import host_checks, network_checks
from p0_ssh_agent.diagnostics.checks import check_ledger, collect, exit_code
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.diagnostics.host_checks import (
    check_nss,
    check_selinux,
    check_sshd,
    check_sudoers,
    check_visudo,
    file_label,
    keys_file_covered,
    nscd_caches_passwd,
    nsswitch_sources,
    sshd_findings,
)
from p0_ssh_agent.diagnostics.network_checks import probe_backend, skew_finding
from p0_ssh_agent.host import sudoers_install as host_sudo
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import Ledger, save_ledger
from p0_ssh_agent.host.sshd_control import parse_sshd_t
from p0_ssh_agent.identity.signing_key import generate_keys
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change
from sandbox.fixtures import SSH_KEYGEN, Sandbox, Sshd, unique_user_name
from sandbox.fixtures import run as run_tool
from test_proxy import ConnectProxy, make_pki, start_proxy

AGENT = Path(sys.executable).with_name("p0-ssh-agent")
GUARD_SECONDS = 30.0  # a broken build fails instead of hanging; never asserted on
SAMPLE_SSHD_T = """\
port 22
addressfamily any
listenaddress [::]:22
listenaddress 0.0.0.0:22
pubkeyauthentication yes
authorizedkeysfile .ssh/authorized_keys .ssh/authorized_keys2
authorizedkeyscommand none
AuthorizedKeysCommandUser none
"""
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE a@test"


def by_name(findings: list[Finding]) -> dict[str, Finding]:
    named = {f.name: f for f in findings}
    assert len(named) == len(findings)
    return named


def digest(*roots: Path) -> dict[str, str]:
    """Every file under `roots` (or the file itself) by content, mode and owner: proof that nothing was changed."""
    out = {}
    for root in roots:
        for path in [root, *sorted(root.rglob("*"))] if root.is_dir() else [root]:
            info = path.lstat()
            content = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else ""
            out[str(path)] = f"{info.st_mode:o} {info.st_uid} {content}"
    return out


# --- sshd -T -------------------------------------------------------------------------------------------------


def test_sshd_t_output_parses_into_keywords_with_every_value() -> None:
    settings = parse_sshd_t(SAMPLE_SSHD_T)
    assert settings["pubkeyauthentication"] == ["yes"]
    assert settings["listenaddress"] == ["[::]:22", "0.0.0.0:22"]
    assert settings["authorizedkeysfile"] == [".ssh/authorized_keys .ssh/authorized_keys2"]
    assert settings["authorizedkeyscommanduser"] == ["none"]  # keywords lower-cased


@pytest.mark.parametrize(
    ("value", "covered"),
    [
        (".ssh/authorized_keys .ssh/authorized_keys2", True),
        ("%h/.ssh/authorized_keys", True),
        ("/home/%u/.ssh/authorized_keys", True),
        ("/etc/ssh/keys/%u %h/.ssh/./authorized_keys", True),
        (".ssh/authorized_keys2", False),
        ("/etc/ssh/authorized_keys/%u", False),
        ("/home/%U/.ssh/authorized_keys", False),  # %U is the UID, not the name
        ("%%h/.ssh/authorized_keys", False),  # a literal "%h" directory under the home
        ("none", False),
    ],
)
def test_authorized_keys_file_patterns(value: str, covered: bool) -> None:
    assert keys_file_covered(value, user="alice", home="/home/alice", uid=70000) is covered


def test_sshd_settings_become_findings_with_fixes() -> None:
    good = by_name(sshd_findings(parse_sshd_t(SAMPLE_SSHD_T)))
    assert {f.level for f in good.values()} == {"ok"}
    bad = by_name(
        sshd_findings(
            parse_sshd_t(
                "pubkeyauthentication no\nauthorizedkeysfile /etc/ssh/keys/%u\n"
                "authorizedkeyscommand /usr/bin/sss_ssh_authorizedkeys %u\n"
            )
        )
    )
    assert bad["sshd PubkeyAuthentication"].level == "fail"
    assert "PubkeyAuthentication yes" in bad["sshd PubkeyAuthentication"].fix
    assert bad["sshd AuthorizedKeysFile"].level == "fail"
    assert ".ssh/authorized_keys" in bad["sshd AuthorizedKeysFile"].fix
    command = bad["sshd AuthorizedKeysCommand"]
    assert command.level == "warn" and "/usr/bin/sss_ssh_authorizedkeys %u" in command.detail and command.fix


def fake_program(directory: Path, name: str, script: str) -> str:
    path = directory / name
    path.write_text("#!/bin/sh\n" + script)
    path.chmod(0o755)
    return str(path)


def test_check_sshd_runs_the_program_and_reads_its_output(tmp_path: Path) -> None:
    """The plumbing, with a stand-in sshd (the real one needs the sandbox: see test_real_sshd_t below)."""
    sshd = fake_program(tmp_path, "sshd", f'[ "$1" = -T ] || exit 9\ncat <<EOF\n{SAMPLE_SSHD_T}EOF\n')
    assert {f.level for f in check_sshd(sshd)} == {"ok"}
    broken = fake_program(tmp_path, "sshd-broken", 'echo "sshd: no hostkeys available -- exiting." >&2\nexit 1\n')
    (finding,) = check_sshd(broken)
    assert finding.level == "warn" and "no hostkeys available" in finding.detail and "ssh-keygen -A" in finding.fix


def test_a_missing_sshd_is_a_warning(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_checks, "SSHD_CANDIDATES", ("/nonexistent/sshd",))
    (finding,) = check_sshd()
    assert finding.level == "warn" and "not found" in finding.detail and "openssh-server" in finding.fix


# --- sudoers and visudo --------------------------------------------------------------------------------------


def sudoers_in(tmp_path: Path, text: str) -> tuple[str, str]:
    dropins = tmp_path / "sudoers.d"
    dropins.mkdir(mode=0o750, exist_ok=True)
    sudoers = tmp_path / "sudoers"
    sudoers.write_text(text)
    return str(sudoers), str(dropins)


@pytest.mark.skipif(os.geteuid() != 0, reason="the drop-in directory must be root-owned, as on a real host")
@pytest.mark.parametrize(
    "line", ["@includedir /etc/sudoers.d", "#includedir /etc/sudoers.d/", '@includedir "/etc/sudoers.d"']
)
def test_sudoers_with_includedir_passes(tmp_path: Path, line: str) -> None:
    finding = check_sudoers(*sudoers_in(tmp_path, f"Defaults env_reset\n{line}\n"))
    assert finding.level == "ok", finding


@pytest.mark.parametrize(
    "text",
    [
        "Defaults env_reset\n",
        "# includedir /etc/sudoers.d\n",
        "##includedir /etc/sudoers.d\n",
        "@includedir /etc/other\n",
    ],
)
def test_sudoers_without_includedir_fails_naming_the_line_to_add(tmp_path: Path, text: str) -> None:
    finding = check_sudoers(*sudoers_in(tmp_path, text))
    assert finding.level == "fail" and "would be ignored" in finding.detail
    assert "@includedir /etc/sudoers.d" in finding.fix and "visudo" in finding.fix


def test_missing_or_unsafe_sudoers_layout_fails(tmp_path: Path) -> None:
    missing = check_sudoers(str(tmp_path / "no-sudoers"), str(tmp_path))
    assert missing.level == "fail" and "install sudo" in missing.fix
    sudoers, dropins = sudoers_in(tmp_path, "@includedir /etc/sudoers.d\n")
    Path(dropins).chmod(0o777)
    unsafe = check_sudoers(sudoers, dropins)
    assert unsafe.level == "fail" and dropins in unsafe.detail and "install -d" in unsafe.fix


def test_without_visudo_sudo_grants_are_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_sudo, "VISUDO_CANDIDATES", ("/nonexistent/visudo",))
    (finding,) = check_visudo()
    assert finding.level == "fail" and "visudo not found" in finding.detail and "install sudo" in finding.fix


# --- SELinux ---------------------------------------------------------------------------------------------------


def homes(tmp_path: Path, *users: str) -> Path:
    root = tmp_path / "home"
    for user in users:
        (root / user / ".ssh").mkdir(parents=True)
        (root / user / ".ssh" / "authorized_keys").write_text(KEY + "\n")
    return root


def selinuxfs(tmp_path: Path, enforce: str | None) -> str:
    fs = tmp_path / "selinuxfs"
    fs.mkdir()
    if enforce is not None:
        (fs / "enforce").write_text(enforce)
    return str(fs)


def test_selinux_absent_or_permissive_is_fine(tmp_path: Path) -> None:
    home = str(homes(tmp_path, "alice"))
    fs = selinuxfs(tmp_path, None)
    (absent,) = check_selinux(fs, home)
    assert absent.level == "ok" and absent.detail == "SELinux not enabled"
    Path(fs, "enforce").write_text("0")
    permissive = by_name(check_selinux(fs, home, read_label=lambda _: None))
    assert permissive["selinux"].level == "ok" and "permissive" in permissive["selinux"].detail


def test_enforcing_selinux_names_the_mislabelled_ssh_directories(tmp_path: Path) -> None:
    home = homes(tmp_path, "alice", "bob")
    labels = {
        home / "alice/.ssh": "unconfined_u:object_r:ssh_home_t:s0",
        home / "alice/.ssh/authorized_keys": "unconfined_u:object_r:ssh_home_t:s0",
        home / "bob/.ssh": "unconfined_u:object_r:ssh_home_t:s0",
        home / "bob/.ssh/authorized_keys": "unconfined_u:object_r:user_home_t:s0",
    }
    finding = by_name(check_selinux(selinuxfs(tmp_path, "1"), str(home), read_label=labels.get))["selinux"]
    assert finding.level == "warn" and "enforcing" in finding.detail
    assert finding.items == (f"{home}/bob/.ssh/authorized_keys (unconfined_u:object_r:user_home_t:s0)",)
    assert finding.fix == f"restore the labels: restorecon -Rv {home}/bob/.ssh"
    labels[home / "bob/.ssh/authorized_keys"] = "unconfined_u:object_r:ssh_home_t:s0"
    fixed = by_name(check_selinux(str(tmp_path / "selinuxfs"), str(home), read_label=labels.get))["selinux"]
    assert fixed.level == "ok"


def test_unlabelled_files_count_as_mislabelled_under_enforcing(tmp_path: Path) -> None:
    """The real getxattr reader: on this kernel (no SELinux) files carry no label, which sshd_t could not read."""
    home = homes(tmp_path, "carol")
    assert file_label(home / "carol/.ssh") is None
    finding = by_name(check_selinux(selinuxfs(tmp_path, "1"), str(home)))["selinux"]
    assert finding.level == "warn" and f"{home}/carol/.ssh (no label)" in finding.items


# --- name service ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "sources"),
    [
        ("passwd:         files systemd\ngroup: files\n", ["files", "systemd"]),
        ("# passwd: ldap\npasswd: sss [NOTFOUND=return] files # trailing\n", ["sss", "files"]),
        ("passwd:compat\n", ["compat"]),
        ("group: files\n", None),
    ],
)
def test_nsswitch_passwd_sources(text: str, sources: list[str] | None) -> None:
    assert nsswitch_sources(text) == sources


def test_nscd_conf_passwd_cache() -> None:
    assert nscd_caches_passwd("") is True
    assert nscd_caches_passwd("\tenable-cache\t\tpasswd\t\tno\n") is False
    assert nscd_caches_passwd("# enable-cache passwd no\nenable-cache passwd yes\n") is True


def fake_proc(tmp_path: Path, *names: str) -> str:
    root = tmp_path / "proc"
    for pid, name in enumerate(names, start=100):
        (root / str(pid)).mkdir(parents=True)
        (root / str(pid) / "comm").write_text(name + "\n")
    (root / "self").mkdir(parents=True, exist_ok=True)
    return str(root)


def nss(tmp_path: Path, passwd_line: str, *running: str, **kwargs: object) -> dict[str, Finding]:
    tmp_path.mkdir(exist_ok=True)
    nsswitch = tmp_path / "nsswitch.conf"
    nsswitch.write_text(passwd_line + "\n")
    conf = tmp_path / "nscd.conf"
    conf.touch()
    sockets = kwargs.get("sockets", (str(tmp_path / "no-socket"),))
    assert isinstance(sockets, tuple)
    return by_name(check_nss(fake_proc(tmp_path, *running), str(nsswitch), str(conf), sockets))


def test_local_users_must_be_visible_and_come_first(tmp_path: Path) -> None:
    plain = nss(tmp_path / "a", "passwd: files systemd", "bash")
    assert plain["nsswitch"].level == "ok" and set(plain) == {"nsswitch"}
    hidden = nss(tmp_path / "b", "passwd: ldap", "bash")["nsswitch"]
    assert hidden.level == "fail" and "files" in hidden.fix
    shadowed = nss(tmp_path / "c", "passwd: sss files", "sssd", "sssd_nss")
    assert shadowed["nsswitch"].level == "warn" and "before `sss`" in shadowed["nsswitch"].fix
    assert shadowed["sssd"].level == "ok"


def test_nscd_that_the_agent_cannot_flush_is_a_warning(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(host_checks, "NSCD_CANDIDATES", (str(tmp_path / "bin/nscd"),))
    stale = nss(tmp_path / "a", "passwd: files", "nscd")["nscd"]
    assert stale.level == "warn" and "enable-cache passwd no" in stale.fix
    # With the program and its socket where account_changes.invalidate_caches() looks, the agent flushes after each
    # change.
    (tmp_path / "bin").mkdir()
    fake_program(tmp_path / "bin", "nscd", "exit 0\n")
    socket = tmp_path / "socket"
    socket.touch()
    flushed = nss(tmp_path / "b", "passwd: files", "nscd", sockets=(str(socket),))["nscd"]
    assert flushed.level == "ok" and "nscd -i passwd" in flushed.detail


# --- clock skew ------------------------------------------------------------------------------------------------


NOW = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("offset", "level", "words"),
    [(0, "ok", "within"), (4, "ok", "within"), (30, "warn", "30s behind"), (-30, "warn", "30s ahead of"),
     (120, "fail", "120s behind"), (-3600, "fail", "3600s ahead of")],
)  # fmt: skip
def test_skew_from_the_date_header(offset: int, level: str, words: str) -> None:
    header = email.utils.format_datetime(NOW + timedelta(seconds=offset), usegmt=True)
    finding = skew_finding(header, NOW)
    assert finding.level == level and words in finding.detail
    assert (finding.fix != "") == (level != "ok")
    if level == "fail":
        assert "401" in finding.detail and "timedatectl" in finding.fix


@pytest.mark.parametrize("header", [None, "", "yesterday-ish"])
def test_without_a_usable_date_header_skew_is_not_measured(header: str | None) -> None:
    finding = skew_finding(header, NOW)
    assert finding.level == "skip" and "not measured" in finding.detail


# --- the network, against real servers on loopback -------------------------------------------------------------


@dataclass
class DateServer:
    """HTTP/1.1 (TLS when `tls` is given) answering every request 404 with Date = now + `offset` seconds."""

    offset: float = 0.0
    tls: ssl.SSLContext | None = None
    heads: list[str] = field(default_factory=list)

    async def handle(self, raw: trio.SocketStream) -> None:
        stream: trio.abc.Stream = raw
        if self.tls is not None:
            stream = trio.SSLStream(raw, self.tls, server_side=True, https_compatible=True)
        async with stream:
            try:
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = await stream.receive_some(4096)
                    if not chunk:
                        return
                    data += chunk
                self.heads.append(data.decode("latin-1"))
                date = email.utils.formatdate(time.time() + self.offset, usegmt=True)
                await stream.send_all(f"HTTP/1.1 404 Not Found\r\nDate: {date}\r\nContent-Length: 0\r\n\r\n".encode())
            except trio.BrokenResourceError:  # a client that gave up during the handshake (an untrusted cert)
                return


async def start_date_server(nursery: trio.Nursery, server: DateServer) -> int:
    listeners = await nursery.start(partial(trio.serve_tcp, server.handle, 0, host="127.0.0.1"))
    return int(listeners[0].socket.getsockname()[1])


async def with_servers(body: Callable[[trio.Nursery], Awaitable[None]]) -> None:
    with trio.fail_after(GUARD_SECONDS):
        async with trio.open_nursery() as nursery:
            await body(nursery)
            nursery.cancel_scope.cancel()


async def probe(
    url: str, *, proxy: str | None = None, ca_file: Path | None = None, pins: tuple[str, ...] = (), **env: str
) -> dict[str, Finding]:
    found = await probe_backend(url, config_proxy=proxy, env=env, ca_file=ca_file, pins=pins, timeout=5.0)
    assert [f.name for f in found] == ["proxy", "tls", "pin", "clock"]
    return by_name(found)


async def test_the_dev_backend_is_clear_text_loopback_and_sends_no_date() -> None:
    async def body(nursery: trio.Nursery) -> None:
        dev = DevBackend()
        await nursery.start(dev.serve)
        found = await probe(dev.rpc_url)
        assert found["proxy"].level == "skip" and "directly" in found["proxy"].detail
        assert found["tls"].level == "skip" and found["tls"].detail == "clear text to loopback (dev backend)"
        assert found["clock"].level == "skip" and "no Date header" in found["clock"].detail

    await with_servers(body)


@pytest.mark.parametrize(("offset", "level"), [(0, "ok"), (-30, "warn"), (120, "fail")])
async def test_clock_skew_against_a_real_http_server(offset: float, level: str) -> None:
    async def body(nursery: trio.Nursery) -> None:
        server = DateServer(offset)
        port = await start_date_server(nursery, server)
        clock = (await probe(f"ws://127.0.0.1:{port}/rpc"))["clock"]
        assert clock.level == level, clock
        (head,) = server.heads
        assert head.startswith("HEAD / HTTP/1.1\r\n") and f"Host: 127.0.0.1:{port}\r\n" in head
        assert "authorization" not in head.lower()  # doctor makes no token, so it can send none

    await with_servers(body)


async def test_tls_verified_with_tunnel_ca_file_then_the_clock_over_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)  # its server certificate is valid for one day

    async def body(nursery: trio.Nursery) -> None:
        server = DateServer(200, tls=pki.server)
        port = await start_date_server(nursery, server)
        found = await probe(f"wss://localhost:{port}", ca_file=tmp_path / "ca.pem")
        assert found["tls"].level == "warn" and "expires soon" in found["tls"].detail and found["tls"].fix
        monkeypatch.setattr(network_checks, "CERT_WARN_DAYS", 0)
        found = await probe(f"wss://localhost:{port}", ca_file=tmp_path / "ca.pem")
        assert found["tls"].level == "ok" and f"tunnelCaFile {tmp_path / 'ca.pem'}" in found["tls"].detail
        assert "certificate for localhost from p0 test CA" in found["tls"].detail
        assert found["clock"].level == "fail" and "behind" in found["clock"].detail
        assert len(server.heads) == 2  # each clock reading went over that probe's TLS connection

    await with_servers(body)


async def test_an_untrusted_certificate_fails_naming_tunnel_ca_file(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    other = tmp_path / "other"
    other.mkdir()
    make_pki(other)

    async def body(nursery: trio.Nursery) -> None:
        port = await start_date_server(nursery, DateServer(tls=pki.server))
        system = await probe(f"wss://127.0.0.1:{port}")
        assert system["tls"].level == "fail" and "system trust store" in system["tls"].detail
        assert "unable to get local issuer certificate" in system["tls"].detail
        assert "tunnelCaFile:" in system["tls"].fix
        assert system["clock"].level == "skip" and "tls step failed" in system["clock"].detail
        wrong = await probe(f"wss://127.0.0.1:{port}", ca_file=other / "ca.pem")
        assert wrong["tls"].level == "fail" and f"tunnelCaFile {other / 'ca.pem'}" in wrong["tls"].fix

    await with_servers(body)


async def test_a_proxy_that_connects_then_tls_and_clock_through_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pki = make_pki(tmp_path)
    monkeypatch.setattr(network_checks, "CERT_WARN_DAYS", 0)  # the test certificate lives one day

    async def body(nursery: trio.Nursery) -> None:
        port = await start_date_server(nursery, DateServer(tls=pki.server))
        proxy = ConnectProxy()
        proxy_port = await start_proxy(nursery, proxy)
        # HTTPS_PROXY never applies to loopback (runtime/backend_dial.py, as Go does); the config's `proxy` always does.
        ca_file = tmp_path / "ca.pem"
        env_proxy = await probe(f"wss://localhost:{port}", ca_file=ca_file, HTTPS_PROXY=f"127.0.0.1:{proxy_port}")
        assert env_proxy["proxy"].level == "skip" and not proxy.heads
        found = await probe(f"wss://localhost:{port}", ca_file=ca_file, proxy=f"http://127.0.0.1:{proxy_port}")
        assert found["proxy"].level == "ok" and f"CONNECT localhost:{port}" in found["proxy"].detail
        assert found["tls"].level == "ok" and found["clock"].level == "ok"
        assert proxy.heads[0].startswith(f"CONNECT localhost:{port} HTTP/1.1")
        assert b"HEAD /" not in proxy.client_bytes  # TLS end to end: the proxy saw only ciphertext

    await with_servers(body)


@pytest.mark.parametrize(
    ("proxy", "detail", "fix"),
    [
        (ConnectProxy(answer=b"HTTP/1.1 403 Forbidden by policy\r\n\r\n"), "403 Forbidden by policy", "allow CONNECT"),
        (ConnectProxy(expected_auth="Basic dTpw"), "HTTP 407", "http://user:password@host:port"),
    ],
)
async def test_a_proxy_that_refuses_connect_fails_with_its_status_line(
    proxy: ConnectProxy, detail: str, fix: str
) -> None:
    async def body(nursery: trio.Nursery) -> None:
        proxy_port = await start_proxy(nursery, proxy)
        found = await probe("wss://backend.invalid", proxy=f"http://doctor:s3cret-pw@127.0.0.1:{proxy_port}")
        assert found["proxy"].level == "fail" and detail in found["proxy"].detail and fix in found["proxy"].fix
        assert found["tls"].level == "skip" and found["clock"].level == "skip"
        assert "s3cret-pw" not in repr(found)  # the proxy password is never shown

    await with_servers(body)


async def test_an_unreachable_backend_or_proxy_fails_the_first_step() -> None:
    with trio.socket.socket() as probe_socket:  # a port nobody listens on
        await probe_socket.bind(("127.0.0.1", 0))
        port = probe_socket.getsockname()[1]
    direct = await probe(f"wss://127.0.0.1:{port}")
    assert direct["tls"].level == "fail" and "Connection refused" in direct["tls"].detail
    proxied = await probe("wss://backend.invalid", proxy=f"http://127.0.0.1:{port}")
    assert proxied["proxy"].level == "fail" and "cannot reach the proxy" in proxied["proxy"].detail


# --- ledger vs host ------------------------------------------------------------------------------------------


def test_ledger_drift_is_listed_and_nothing_is_repaired(tmp_path: Path) -> None:
    """A key the ledger holds for an account that is gone: key_missing, reported even with `reconcile: repair`."""
    state = tmp_path / "state"
    assert check_ledger(AgentConfig(), state).level == "ok"  # no state directory yet
    state.mkdir(mode=0o700)
    ledger = Ledger()
    ledger.record_key("p0-doctor-gone", "req-1", "key", "SHA256:" + "A" * 43)
    save_ledger(ledger, state)
    before = digest(state)
    finding = check_ledger(AgentConfig(state_dir=state, reconcile="repair"), state)
    assert finding.level == "warn" and "1 difference" in finding.detail and "reconcile: repair" in finding.fix
    (item,) = finding.items
    assert item.startswith("key_missing p0-doctor-gone req-1 ")
    assert digest(state) == before


# --- the command end to end ------------------------------------------------------------------------------------


def agent_config(tmp_path: Path, tunnel: str, extra: str = "") -> Path:
    keys = tmp_path / "keys"
    generate_keys(keys)
    config = tmp_path / "config.yaml"
    config.write_text(
        f"orgId: acme\nhostId: web-1\ntunnelHost: {tunnel}\nkeyPath: {keys}\nstateDir: {tmp_path}/state\n{extra}"
    )
    return config


async def doctor(*argv: str) -> subprocess.CompletedProcess[bytes]:
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("P0_SSH_AGENT_") and not k.lower().endswith("_proxy")
    }
    return await trio.run_process(
        [str(AGENT), "doctor", *argv], capture_stdout=True, capture_stderr=True, check=False, env=env
    )


async def test_the_command_reports_json_and_fails_on_skew(tmp_path: Path) -> None:
    pki = make_pki(tmp_path)
    config = agent_config(tmp_path, "wss://localhost:{port}", f"tunnelCaFile: {tmp_path / 'ca.pem'}\n")

    async def body(nursery: trio.Nursery) -> None:
        port = await start_date_server(nursery, DateServer(-300, tls=pki.server))
        config.write_text(config.read_text().replace("{port}", str(port)))
        before = digest(tmp_path)
        done = await doctor("--config", str(config), "--json", "--timeout", "5")
        assert digest(tmp_path) == before
        document = json.loads(done.stdout)
        checks = {c["name"]: c for c in document["checks"]}
        assert checks["tls"]["level"] == "warn" and "expires soon" in checks["tls"]["detail"]  # a one-day cert
        assert checks["proxy"]["level"] == "skip"
        assert checks["clock"]["level"] == "fail" and "ahead of" in checks["clock"]["detail"] and checks["clock"]["fix"]
        assert set(checks) >= {"sudoers includedir", "visudo", "selinux", "nsswitch", "ledger"}
        assert all(set(c) == {"name", "level", "detail", "fix", "items"} for c in document["checks"])
        assert done.returncode == 1 and document["ok"] is False
        private = json.loads((tmp_path / "keys" / "jwk.private.json").read_text())
        assert private["d"] not in done.stdout.decode() + done.stderr.decode()

    await with_servers(body)


async def test_offline_text_output_and_exit_codes(tmp_path: Path) -> None:
    config = agent_config(tmp_path, "wss://backend.invalid")
    done = await doctor("--config", str(config), "--offline")
    text = done.stdout.decode()
    for name in ("proxy", "tls", "pin", "clock"):
        assert f"[skip] {name}" in text
    failed = "FAIL" in text
    assert done.returncode == (1 if failed else 0)
    assert text.rstrip().endswith("check(s) failed" if failed else "no check failed")
    bad = tmp_path / "bad.yaml"
    bad.write_text("orgId: [\n")
    assert (await doctor("--config", str(bad))).returncode == 78
    assert (await doctor("--config", str(config), "--timeout", "0")).returncode == 64


def test_exit_code_is_one_only_when_a_finding_fails() -> None:
    assert exit_code([Finding("a", "ok", ""), Finding("b", "warn", ""), Finding("c", "skip", "")]) == 0
    assert exit_code([Finding("a", "ok", ""), Finding("b", "fail", "")]) == 1


# --- in the sandbox: the real sshd, visudo, sudoers tree and grants ---------------------------------------------


def sshd_config(directory: Path, *lines: str) -> str:
    host_key = directory / "host_ed25519"
    if not host_key.exists():
        run_tool([SSH_KEYGEN, "-q", "-t", "ed25519", "-N", "", "-f", host_key])
    config = directory / "sshd_config"
    config.write_text("\n".join([f"HostKey {host_key}", *lines, ""]))
    return str(config)


@pytest.mark.sandbox
def test_real_sshd_t(sandbox: Sandbox, sshd: Sshd, tmp_path: Path) -> None:
    assert {f.level for f in check_sshd(config_file=str(sshd.config))} == {"ok"}
    bad = sshd_config(
        tmp_path,
        "PubkeyAuthentication no",
        "AuthorizedKeysFile /etc/ssh/authorized_keys/%u",
        "AuthorizedKeysCommand /usr/bin/true %u",
        "AuthorizedKeysCommandUser nobody",
    )
    found = by_name(check_sshd(config_file=bad))
    assert found["sshd PubkeyAuthentication"].level == "fail"
    assert (
        found["sshd AuthorizedKeysFile"].level == "fail"
        and "/etc/ssh/authorized_keys/%u" in found["sshd AuthorizedKeysFile"].detail
    )
    assert (
        found["sshd AuthorizedKeysCommand"].level == "warn"
        and "/usr/bin/true %u" in found["sshd AuthorizedKeysCommand"].detail
    )
    (broken,) = check_sshd(config_file=sshd_config(tmp_path, "NoSuchKeyword yes"))
    assert broken.level == "warn" and "NoSuchKeyword" in broken.detail  # sshd's own complaint, passed on


@pytest.mark.sandbox
def test_real_visudo_and_a_broken_tree(sandbox: Sandbox) -> None:
    found = by_name(check_visudo())
    assert found["visudo"].level == "ok" and found["visudo"].detail.startswith("/usr/sbin/visudo: visudo version ")
    assert found["sudoers valid"].level == "ok"
    assert check_sudoers().level == "ok"  # the sandbox's copy of this machine's /etc/sudoers
    broken = Path("/etc/sudoers.d/p0doctorbroken")  # removed after the test (conftest.py)
    broken.write_text("this is not sudoers\n")
    broken.chmod(0o440)
    invalid = by_name(check_visudo())["sudoers valid"]
    assert invalid.level == "fail" and "visudo -c" in invalid.fix


@pytest.mark.sandbox
def test_doctor_on_a_granted_host_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    """Real grants, one rule removed by hand: doctor lists the drift and leaves sudoers.d, /home and the ledger."""
    state = tmp_path / "state"
    state.mkdir(mode=0o700)
    config = AgentConfig(state_dir=state, reconcile="repair")
    engine = Engine.on_host(config, state, audit_trail=AuditTrail.off())
    user = unique_user_name()
    for command, fields in (
        ("provisionUser", {"userName": user}),
        ("provisionAuthorizedKeys", {"userName": user, "publicKey": KEY}),
        ("provisionSudo", {"userName": user, "sudo": True}),
    ):
        data: dict[str, object] = {"command": command, "action": "grant", "requestId": "req-doc", **fields}
        result = run_change(engine, parse_change(command, data)).result
        assert result.success, result.error
    keys = Path("/home", user, ".ssh", "authorized_keys")
    keys.write_text("")  # the key removed by hand
    watched = (Path("/etc/sudoers.d"), Path("/home"), state, Path("/etc/passwd"), Path("/etc/sudoers"))
    before = digest(*watched)
    found = by_name(collect(config, {}, offline=True))
    assert digest(*watched) == before
    ledger = found["ledger"]
    assert ledger.level == "warn" and any(item.startswith(f"key_missing {user} req-doc") for item in ledger.items)
    assert found["sudoers includedir"].level == "ok" and found["sudoers valid"].level == "ok"
    assert found["nsswitch"].level == "ok"


async def test_an_incomplete_configuration_is_named_first(tmp_path: Path) -> None:
    """Before registration (issue 15): doctor says which keys are missing and how to get them."""
    config = tmp_path / "config.yaml"
    config.write_text(f"keyPath: {tmp_path / 'keys'}\nstateDir: {tmp_path}/state\n")
    done = await doctor("--config", str(config), "--offline", "--json")
    document = json.loads(done.stdout)
    first = document["checks"][0]
    assert first["name"] == "config" and first["level"] == "fail"
    assert "orgId and hostId are not set" in first["detail"] and "--org-id" in first["fix"]
    assert done.returncode == 1
