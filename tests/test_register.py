"""`p0-ssh-agent register` end to end through the real CLI entry point: keys created through the identity API
in tmp_path, the request printed and encoded, and the POST to a real stdlib HTTP server on 127.0.0.1 that
records what it got. Every bad answer leaves the configuration byte for byte as it was, and the token never
shows up in any output."""

from __future__ import annotations

import base64
import http.server
import json
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from p0_ssh_agent.cli import main
from p0_ssh_agent.cli.register import build_request, registration_code
from p0_ssh_agent.config import AgentConfig, load_config
from p0_ssh_agent.identity.hostfacts import HostKey
from p0_ssh_agent.identity.signing_key import generate_keys

TOKEN = "reg-token-0123456789abcdef"
EXISTING = '# managed by hand: keep this comment\norgId: "old-org"  # first org\ndryRun: true\n'
GOOD_ANSWER = {
    "ok": True,
    "orgId": "acme",
    "hostId": "host-42",
    "environmentId": "prod",
    "tunnelHost": "wss://tunnel.example.com/ws",
    "trustedCa": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJdD7y3aLq454yWBdwLWbieU1ebz9/cu7/QEXn9OIeZJ ca",
}


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class FakeP0:
    """A real HTTP server on 127.0.0.1:0 that answers every request with `status`/`body` and records it."""

    status: int = 200
    body: bytes = json.dumps(GOOD_ANSWER).encode()
    location: str | None = None
    requests: list[Recorded] = field(default_factory=list)
    url: str = ""

    def handler(self) -> type[http.server.BaseHTTPRequestHandler]:
        fake = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                fake.requests.append(
                    Recorded(
                        "POST", self.path, {k.lower(): v for k, v in self.headers.items()}, self.rfile.read(length)
                    )
                )
                self.send_response(fake.status)
                if fake.location:
                    self.send_header("Location", fake.location)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(fake.body)))
                self.end_headers()
                self.wfile.write(fake.body)

            def do_GET(self) -> None:  # what urllib would turn a redirected POST into
                self.do_POST()

            def log_message(self, format: str, *args: object) -> None:
                pass

        return Handler


@pytest.fixture
def p0() -> Iterator[FakeP0]:
    yield from _serve(FakeP0())


@pytest.fixture
def elsewhere() -> Iterator[FakeP0]:
    yield from _serve(FakeP0())


def _serve(fake: FakeP0) -> Iterator[FakeP0]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), fake.handler())
    fake.url = f"http://127.0.0.1:{server.server_address[1]}/o/acme/integrations/self-hosted/prod/register"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield fake
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(autouse=True)
def no_agent_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """The developer's own P0_* variables must not leak into these tests."""
    for name in list(os.environ):
        if name.startswith("P0_"):
            monkeypatch.delenv(name)


def register(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["register", *argv])
    out, err = capsys.readouterr()
    assert TOKEN not in out + err
    return code, out, err


def printed(out: str) -> tuple[str, str]:
    document, _, rest = out.partition("\n\nregistration code:\n")
    return document, rest.splitlines()[0]


def decode(code: str) -> dict[str, object]:
    value = json.loads(base64.b64decode(code, validate=True))
    assert isinstance(value, dict)
    return value


def public_jwk(key_dir: Path) -> dict[str, object]:
    value = json.loads((key_dir / "jwk.public.json").read_text())
    assert isinstance(value, dict)
    return value


# --- without --url: print the request and the code -------------------------------------------------------------


def test_prints_request_and_code_and_generates_missing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config, keys = tmp_path / "config.yaml", tmp_path / "keys"
    argv = ["-c", str(config), "--key-path", str(keys), "--hostname", "web-1", "--public-ip", "203.0.113.7"]
    code, out, err = register(capsys, *argv, "--label", "env=prod", "--label", "team=a")
    assert code == 0
    assert f"no keys in {keys}: generated a new key pair there" in err
    document, registration = printed(out)
    request = json.loads(document)
    assert decode(registration) == request  # the code is the printed request, compact JSON in base64
    assert base64.b64encode(base64.b64decode(registration)).decode() == registration  # standard, padded
    assert list(request) == [
        "hostId",
        "clientId",
        "hostname",
        "publicIp",
        "fingerprint",
        "fingerprintPublicKey",
        "jwkPublicKey",
        "environmentId",
        "orgId",
        "labels",
        "timestamp",
    ]
    assert request["jwkPublicKey"] == public_jwk(keys)
    assert "d" not in request["jwkPublicKey"]
    assert (request["hostId"], request["clientId"], request["orgId"], request["environmentId"]) == ("", "", "", "")
    assert (request["hostname"], request["publicIp"]) == ("web-1", "203.0.113.7")
    assert request["labels"] == ["env=prod", "team=a"]
    assert str(request["fingerprint"]).startswith("SHA256:")
    assert len(str(request["timestamp"])) == 20 and str(request["timestamp"]).endswith("Z")
    assert out.rstrip().endswith("run this again with --url and --auth (or $P0_REGISTRATION_TOKEN)")
    assert not config.exists()  # printing registers nothing and writes nothing


def test_uses_the_configuration_and_existing_keys(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    before = public_jwk(keys)
    config = tmp_path / "config.yaml"
    config.write_text(f"orgId: acme\nhostId: h1\nenvironmentId: prod\nlabels: [a=b]\nkeyPath: {keys}\n")
    code, out, err = register(capsys, "-c", str(config))
    assert code == 0
    assert "generated" not in err
    request = json.loads(printed(out)[0])
    assert (request["orgId"], request["hostId"], request["clientId"]) == ("acme", "h1", "acme:h1:ssh")
    assert (request["environmentId"], request["labels"], request["publicIp"]) == ("prod", ["a=b"], "")
    assert request["jwkPublicKey"] == before == public_jwk(keys)


def test_yaml_output(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = register(
        capsys, "-c", str(tmp_path / "c.yaml"), "--key-path", str(tmp_path / "k"), "--output", "yaml"
    )
    assert code == 0
    document, registration = printed(out)
    assert YAML(typ="safe", pure=True).load(document) == decode(registration)


def test_request_builder_is_pure_and_omits_empty_labels() -> None:
    request = build_request(
        AgentConfig(environment_id="default"),
        {"kty": "EC", "crv": "P-384", "x": "X", "y": "Y"},
        hostname="h",
        host_key=HostKey("SHA256:abc", "ssh-ed25519 AAAA"),
        public_ip="",
        now=datetime(2025, 8, 13, 5, 0, 0, 123, tzinfo=UTC),
    )
    assert "labels" not in request
    assert request["timestamp"] == "2025-08-13T05:00:00Z"
    assert request["environmentId"] == ""
    assert registration_code({"a": "é"}) == base64.b64encode('{"a":"é"}'.encode()).decode()


@pytest.mark.parametrize(
    ("argv", "fragment"),
    [
        (["--public-ip", "not-an-ip"], "--public-ip 'not-an-ip' is not an IP address"),
        (["--label", "nope"], "command-line flag --label/--labels: item 1, 'nope', is not key=value"),
        (["--hostname", "two\nlines"], "control characters and line breaks are not allowed"),
        (["--auth", TOKEN], "--auth is only used with --url"),
        (["--url", "http://p0.example.com/register", "--auth", TOKEN], "--url must be an https:// URL"),
        (["--url", "ftp://127.0.0.1/register", "--auth", TOKEN], "--url must be an https:// URL"),
        (["--url", "https://p0.example.com/register"], "--url needs the registration token"),
        (["--url", "https://p0.example.com/register", "--auth", "two words"], "copy it again from the P0 UI"),
        (["--url", "https://p0.example.com/register", "--auth", f"{TOKEN}\r\nX-Evil: 1"], "line breaks"),
        (["--url", "https://p0.example.com/register", "--auth", TOKEN, "--org-id", "acme"], "for the print mode"),
        (["--org-id", "a:b"], "--org-id:"),
        (["--host-id", "h", "--tunnel-host", "ws://p0.example.com"], "--tunnel-host:"),
    ],
)
def test_bad_arguments_change_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], argv: list[str], fragment: str
) -> None:
    keys = tmp_path / "keys"
    code, _, err = register(capsys, "-c", str(tmp_path / "config.yaml"), "--key-path", str(keys), *argv)
    assert code in (64, 78)
    assert fragment in err
    assert not keys.exists()  # refused before any key was made
    assert not (tmp_path / "config.yaml").exists()


# --- without --url, with --org-id/--host-id: print, and write the configuration (issue 15) -----------------------


def test_print_mode_with_ids_writes_a_config_that_start_and_status_accept(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, keys = tmp_path / "etc" / "config.yaml", tmp_path / "keys"
    argv = ["-c", str(config), "--key-path", str(keys), "--org-id", "acme", "--host-id", "host-42"]
    code, out, _ = register(capsys, *argv, "--tunnel-host", "wss://tunnel.example.com/ws")
    assert code == 0
    request = json.loads(printed(out)[0])
    assert (request["orgId"], request["hostId"], request["clientId"]) == ("acme", "host-42", "acme:host-42:ssh")
    assert f"wrote {config}" in out and "systemctl enable --now p0-ssh-agent" in out
    loaded = load_config(config, env={})
    assert (loaded.org_id, loaded.host_id, loaded.tunnel_host) == ("acme", "host-42", "wss://tunnel.example.com/ws")
    assert loaded.key_path == keys and loaded.heartbeat_interval_seconds == 60
    # `status` now gets past the configuration: the only thing it lacks is a running agent.
    assert main(["status", "-c", str(config)]) == 3
    assert "[ok  ] config" in capsys.readouterr().out


def test_print_mode_updates_an_existing_config_keeping_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config, keys = tmp_path / "config.yaml", tmp_path / "keys"
    config.write_text(EXISTING)
    code, out, _ = register(capsys, "-c", str(config), "--key-path", str(keys), "--host-id", "host-42")
    assert code == 0
    text = config.read_text()
    assert text.startswith("# managed by hand: keep this comment\n")
    assert 'orgId: "old-org"  # first org' in text and 'hostId: "host-42"' in text and "dryRun: true" in text
    assert "still missing" not in out
    request = json.loads(printed(out)[0])
    assert request["clientId"] == "old-org:host-42:ssh"


def test_print_mode_says_what_is_still_missing(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    config = tmp_path / "config.yaml"
    code, out, _ = register(capsys, "-c", str(config), "--key-path", str(tmp_path / "keys"), "--org-id", "acme")
    assert code == 0 and "still missing: hostId" in out
    assert main(["status", "-c", str(config)]) == 78
    assert "hostId is not set" in capsys.readouterr().out


# --- with --url: send, then write the configuration ------------------------------------------------------------


def test_registers_and_writes_the_config_keeping_comments(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], p0: FakeP0, monkeypatch: pytest.MonkeyPatch
) -> None:
    config, keys = tmp_path / "config.yaml", tmp_path / "keys"
    config.write_text(EXISTING)
    monkeypatch.setenv("P0_REGISTRATION_TOKEN", TOKEN)  # not on the command line, so not in ps
    code, out, _ = register(capsys, "-c", str(config), "--key-path", str(keys), "--url", p0.url, "--label", "env=prod")
    assert code == 0

    [sent] = p0.requests
    assert sent.method == "POST"
    assert sent.path == "/o/acme/integrations/self-hosted/prod/register"
    assert sent.headers["authorization"] == f"Bearer {TOKEN}"
    assert sent.headers["content-type"] == "application/json"
    body = json.loads(sent.body)
    assert list(body) == ["key"]
    request = decode(body["key"])
    assert request["jwkPublicKey"] == public_jwk(keys)
    assert request["labels"] == ["env=prod"]
    assert request["orgId"] == "old-org"  # from the existing file
    private = json.loads((keys / "jwk.private.json").read_text())
    assert private["d"].encode() not in sent.body  # the private key never leaves the host

    text = config.read_text()
    assert text.startswith("# managed by hand: keep this comment\n")
    assert "# first org" in text
    assert "trustedCa" not in text and "ssh-ed25519" not in text  # parsed, deliberately not stored
    loaded = load_config(config, env={})
    assert (loaded.org_id, loaded.host_id, loaded.environment_id) == ("acme", "host-42", "prod")
    assert loaded.tunnel_host == "wss://tunnel.example.com/ws"
    assert (loaded.key_path, loaded.heartbeat_interval_seconds, loaded.dry_run) == (keys, 60, True)
    assert loaded.client_id == "acme:host-42:ssh"
    assert f"wrote {config}: " in out
    assert "next: systemctl enable --now p0-ssh-agent" in out


def test_an_existing_heartbeat_is_kept_and_absent_optional_answers_keep_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], p0: FakeP0
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text("heartbeatIntervalSeconds: 15\nenvironmentId: staging\ntunnelHost: wss://own.example\n")
    p0.body = json.dumps({"ok": True, "orgId": "acme", "hostId": "h", "environmentId": ""}).encode()
    argv = ["-c", str(config), "--key-path", str(tmp_path / "k"), "--url", p0.url, "--auth", TOKEN]
    assert register(capsys, *argv)[0] == 0
    loaded = load_config(config, env={})
    assert (loaded.heartbeat_interval_seconds, loaded.environment_id) == (15, "staging")
    assert loaded.tunnel_host == "wss://own.example"


@dataclass(frozen=True)
class BadAnswer:
    status: int
    body: object  # JSON-encoded unless it is a str, which is sent as is
    exit_code: int
    fragment: str


BAD_ANSWERS = [
    pytest.param(BadAnswer(200, {"ok": False, "error": "quota"}, 1, "registration was not successful"), id="ok-false"),
    pytest.param(BadAnswer(200, {"orgId": "acme", "hostId": "h"}, 1, "did not say ok: true"), id="ok-missing"),
    pytest.param(
        BadAnswer(200, {"ok": "true", "orgId": "a", "hostId": "h"}, 1, "did not say ok: true"), id="ok-not-bool"
    ),
    pytest.param(BadAnswer(500, "x" * 2000, 1, "registration request failed with status 500: xxx"), id="status-500"),
    pytest.param(BadAnswer(401, f"bad token {TOKEN}", 1, "status 401: bad token [redacted]"), id="401-echoes-token"),
    pytest.param(BadAnswer(200, "<html>garbage", 65, "is not JSON: <html>garbage"), id="garbage"),
    pytest.param(BadAnswer(200, ["ok"], 65, "is not a JSON object"), id="not-an-object"),
    pytest.param(
        BadAnswer(200, {**GOOD_ANSWER, "tunnelHost": "ws://evil.example"}, 65, "ws:// to evil.example would send"),
        id="ws-evil",
    ),
    pytest.param(
        BadAnswer(200, {**GOOD_ANSWER, "orgId": "acme\nhostId: x"}, 65, "orgId is unusable"), id="orgId-newline"
    ),
    pytest.param(BadAnswer(200, {**GOOD_ANSWER, "hostId": "a:b"}, 65, "hostId is unusable"), id="hostId-colon"),
    pytest.param(BadAnswer(200, {**GOOD_ANSWER, "hostId": 7}, 65, "hostId is not a string"), id="hostId-number"),
    pytest.param(BadAnswer(200, {"ok": True, "orgId": "acme"}, 65, "has no hostId"), id="hostId-missing"),
    pytest.param(
        BadAnswer(200, {**GOOD_ANSWER, "environmentId": "a\tb"}, 65, "environmentId is unusable"), id="env-tab"
    ),
]


@pytest.mark.parametrize("bad", BAD_ANSWERS)
def test_bad_answers_leave_the_config_byte_for_byte(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], p0: FakeP0, bad: BadAnswer
) -> None:
    config = tmp_path / "config.yaml"
    config.write_text(EXISTING)
    before = config.read_bytes()
    p0.status = bad.status
    p0.body = bad.body.encode() if isinstance(bad.body, str) else json.dumps(bad.body).encode()
    argv = ["-c", str(config), "--key-path", str(tmp_path / "keys"), "--url", p0.url, "--auth", TOKEN]
    code, _, err = register(capsys, *argv)
    assert code == bad.exit_code
    assert bad.fragment in err
    assert len(err) < 800  # bodies are cut to 500 characters
    assert config.read_bytes() == before
    assert sorted(entry.name for entry in tmp_path.iterdir()) == ["config.yaml", "keys"]  # no temp file left


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
def test_redirects_are_not_followed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], p0: FakeP0, elsewhere: FakeP0, status: int
) -> None:
    # Plain urllib turns a POST answered by 301/302/303 into a GET to the new place, Authorization included.
    p0.status, p0.location, p0.body = status, elsewhere.url, b""
    config = tmp_path / "config.yaml"
    argv = ["-c", str(config), "--key-path", str(tmp_path / "keys"), "--url", p0.url, "--auth", TOKEN]
    code, _, err = register(capsys, *argv)
    assert code == 1
    assert f"status {status} (redirects are not followed, so the token goes nowhere else" in err
    assert elsewhere.requests == []
    assert not config.exists()


def test_unreachable_backend(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["-c", str(tmp_path / "c.yaml"), "--key-path", str(tmp_path / "k"), "--auth", TOKEN]
    code, _, err = register(capsys, *argv, "--url", "http://127.0.0.1:1/register", "--timeout", "5")
    assert code == 1
    assert "cannot reach 127.0.0.1: " in err
    assert "check --url and the network" in err


def test_as_a_real_process(tmp_path: Path, p0: FakeP0) -> None:
    config = tmp_path / "config.yaml"
    env = {k: v for k, v in os.environ.items() if not k.startswith("P0_")} | {"P0_REGISTRATION_TOKEN": TOKEN}
    argv = [sys.executable, "-m", "p0_ssh_agent", "register", "-c", str(config), "--key-path", str(tmp_path / "k")]
    result = subprocess.run([*argv, "--url", p0.url], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert TOKEN not in result.stdout + result.stderr
    assert load_config(config, env={}).client_id == "acme:host-42:ssh"
    p0.body = json.dumps({**GOOD_ANSWER, "tunnelHost": "ws://evil.example"}).encode()
    before = config.read_bytes()
    result = subprocess.run([*argv, "--url", p0.url], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 65
    assert config.read_bytes() == before


def test_a_public_key_that_does_not_match_the_private_one_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    keys, other = tmp_path / "keys", tmp_path / "other"
    generate_keys(keys)
    generate_keys(other)
    (keys / "jwk.public.json").write_bytes((other / "jwk.public.json").read_bytes())
    code, out, err = register(capsys, "-c", str(tmp_path / "c.yaml"), "--key-path", str(keys))
    assert code == 78
    assert f"{keys / 'jwk.public.json'} does not belong to {keys / 'jwk.private.json'}" in err
    assert out == ""


def test_a_lone_public_key_is_not_silently_replaced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    keys = tmp_path / "keys"
    generate_keys(keys)
    (keys / "jwk.private.json").unlink()
    public_before = (keys / "jwk.public.json").read_bytes()
    code, _, err = register(capsys, "-c", str(tmp_path / "c.yaml"), "--key-path", str(keys))
    assert code == 78
    assert "exists without jwk.private.json" in err
    assert (keys / "jwk.public.json").read_bytes() == public_before
    assert not (keys / "jwk.private.json").exists()
