"""`p0-ssh-agent register`: build the registration request; optionally send it and write the configuration.

Without --url it prints the request (upstream-protocol.md §9.2) and the base64 registration code to paste in the
P0 UI; with --org-id and --host-id (and --tunnel-host) from the P0 UI it also writes them into the configuration,
so that keygen -> register -> paste the code -> `systemctl enable --now` is the whole flow. With --url and a
token it POSTs `{"key": <code>}` and writes orgId, hostId, tunnelHost, environmentId and keyPath from the answer
(§9.3) into the configuration, atomically and keeping its comments, after validating every value with the
loader's own rules. The private key never leaves the host; the token never appears in output, errors or logs,
and is never sent anywhere but the given URL (redirects are refused).
"""

from __future__ import annotations

import argparse
import base64
import ipaddress
import json
import os
import sys
from collections.abc import Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn
from urllib.parse import urlsplit

from p0_ssh_agent._version import __version__
from p0_ssh_agent.errors import AgentError, DataError, KeyFileError, UsageError

if TYPE_CHECKING:
    from p0_ssh_agent.config import AgentConfig
    from p0_ssh_agent.identity.hostfacts import HostKey

TOKEN_ENV = "P0_REGISTRATION_TOKEN"  # noqa: S105 (the name of a variable, not a secret)
MAX_RESPONSE_BYTES = 65536
MAX_SHOWN_BODY_CHARS = 500
MAX_TOKEN_LENGTH = 16384
NEXT_STEP = "next: systemctl enable --now p0-ssh-agent   (then check with: p0-ssh-agent status)"


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "register",
        parents=parents,
        help="register this host with P0 (prints the request, or sends it with --url)",
        description=(
            "Print the registration request and code for the P0 UI; or, with --url and a token, send it and write "
            "orgId, hostId, tunnelHost and environmentId from P0's answer into the configuration (comments kept). "
            "Creates the agent's keys first if there are none."
        ),
    )
    parser.add_argument("--url", help="registration URL from the P0 UI (https://; http:// only to localhost)")
    parser.add_argument("--auth", metavar="TOKEN", help=f"registration token (better: set {TOKEN_ENV}, kept out of ps)")
    parser.add_argument("--hostname", help="hostname to register (default: config hostname, else this host's)")
    parser.add_argument("--label", action="append", metavar="KEY=VALUE", help="label to send (repeatable)")
    parser.add_argument("--key-path", metavar="DIR", help="key directory (default: config keyPath)")
    parser.add_argument("--org-id", help="without --url: P0 organisation id to write into the configuration (orgId)")
    parser.add_argument(
        "--host-id", help="without --url: host id from the P0 UI to write into the configuration (hostId)"
    )
    parser.add_argument(
        "--tunnel-host", metavar="URL", help="without --url: tunnel server to write into the configuration (tunnelHost)"
    )
    parser.add_argument("--output", choices=("json", "yaml"), default="json", help="format of the printed request")
    address = parser.add_mutually_exclusive_group()
    address.add_argument("--public-ip", metavar="IP", help="public IP address the P0 CLI should connect to")
    address.add_argument(
        "--detect-public-ip",
        action="store_true",
        help="ask api.ipify.org, checkip.amazonaws.com, icanhazip.com (5 s each) for this host's public IP",
    )
    parser.add_argument(
        "--timeout", type=_positive_seconds, default=30.0, metavar="SECONDS", help="wait for P0 (default 30)"
    )
    return parser


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 3600:
        raise argparse.ArgumentTypeError("must be more than 0 and at most 3600 seconds")
    return value


def build_request(
    config: AgentConfig,
    public_jwk: Mapping[str, str],
    *,
    hostname: str,
    host_key: HostKey,
    public_ip: str,
    now: datetime,
) -> dict[str, object]:
    """The RegistrationRequest of upstream-protocol.md §9.2, keys in the Go struct's order (pure)."""
    # Before registration there is no config: the backend derives org and environment from the URL and
    # assigns the host id (INFERRED in §9.2). So values the configuration does not have are sent as "", and
    # the built-in default environment "default" counts as not having one.
    org, host = config.org_id or "", config.host_id or ""
    request: dict[str, object] = {
        "hostId": host,
        "clientId": f"{org}:{host}:ssh" if org and host else "",
        "hostname": hostname,
        "publicIp": public_ip,
        "fingerprint": host_key.fingerprint,
        "fingerprintPublicKey": host_key.public_key,
        "jwkPublicKey": dict(public_jwk),
        "environmentId": "" if config.environment_id == "default" else config.environment_id,
        "orgId": org,
    }
    if config.labels:
        request["labels"] = list(config.labels)
    request["timestamp"] = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    return request


def registration_code(request: Mapping[str, object]) -> str:
    """Standard base64, with padding, of the compact JSON (utils.GenerateRegistrationRequestCode)."""
    compact = json.dumps(request, separators=(",", ":"), ensure_ascii=False)
    return base64.b64encode(compact.encode("utf-8")).decode("ascii")


def check_url(url: str) -> None:
    from p0_ssh_agent.config.values import is_loopback_host

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 (evaluated for its ValueError on a bad port)
    except ValueError:
        raise UsageError("--url is not a valid URL; copy it again from the P0 UI") from None
    if parts.hostname and (parts.scheme == "https" or (parts.scheme == "http" and is_loopback_host(parts.hostname))):
        return
    raise UsageError(
        f"--url must be an https:// URL (http:// only to localhost, for testing), got {parts.scheme or 'no'} "
        "scheme; the token must not travel in clear text"
    )


def check_token(token: str) -> None:
    # Checked before it goes into a header: a line break would split the request, and http.client's own
    # error for that would print the whole header, token included.
    if not token or len(token) > MAX_TOKEN_LENGTH or not all("!" <= c <= "~" for c in token):
        raise UsageError(
            "the registration token is empty, too long, or has spaces, line breaks or non-ASCII characters; "
            "copy it again from the P0 UI"
        )


def _printable(text: str) -> str:
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" if ord(c) < 256 else "?" for c in text)


def _shown_body(raw: bytes, token: str) -> str:
    # Redact before truncating, so that no prefix of the token survives the cut either.
    text = raw.decode("utf-8", "replace").replace(token, "[redacted]")
    shown = _printable(text.strip())
    return shown[:MAX_SHOWN_BODY_CHARS] + ("..." if len(shown) > MAX_SHOWN_BODY_CHARS else "")


def _fail_http(status: int, raw: bytes, token: str) -> NoReturn:
    hint = " (redirects are not followed, so the token goes nowhere else; use the final URL)" if status < 400 else ""
    raise AgentError(f"registration request failed with status {status}{hint}: {_shown_body(raw, token) or '-'}")


def post_registration(url: str, token: str, code: str, timeout: float) -> dict[str, object]:
    """POST {"key": code} with the bearer token; the parsed answer, which said ok: true. AgentError otherwise."""
    import http.client
    import urllib.error
    import urllib.request

    class RefuseRedirects(urllib.request.HTTPRedirectHandler):
        """urllib re-sends the Authorization header wherever a redirect points; the token goes nowhere else."""

        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    body = json.dumps({"key": code}).encode("utf-8")
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Authorization": f"Bearer {token}",
        "User-Agent": f"p0-ssh-agent/{__version__}",
    }
    request = urllib.request.Request(url, data=body, method="POST", headers=headers)  # noqa: S310 (check_url)
    opener = urllib.request.build_opener(RefuseRedirects)
    host = urlsplit(url).hostname
    try:
        with opener.open(request, timeout=timeout) as response:
            raw = response.read(MAX_RESPONSE_BYTES + 1)
    except urllib.error.HTTPError as exc:
        try:
            error_body = exc.read(4 * MAX_SHOWN_BODY_CHARS + len(token))
        except (OSError, http.client.HTTPException):
            error_body = b""
        _fail_http(exc.code, error_body, token)
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or exc.__class__.__name__
        raise AgentError(f"cannot reach {host}: {_printable(str(reason))}; check --url and the network") from None
    if len(raw) > MAX_RESPONSE_BYTES:
        raise DataError(f"the registration answer from {host} is larger than {MAX_RESPONSE_BYTES} bytes; not P0")
    try:
        answer = json.loads(raw)
    except ValueError:
        raise DataError(f"the registration answer from {host} is not JSON: {_shown_body(raw, token)}") from None
    if not isinstance(answer, dict):
        raise DataError(f"the registration answer from {host} is not a JSON object: {_shown_body(raw, token)}")
    if answer.get("ok") is not True:
        raise AgentError(
            f"registration was not successful (the answer did not say ok: true): {_shown_body(raw, token)}"
        )
    return answer


def updates_from_answer(answer: Mapping[str, object], key_dir: Path) -> dict[str, object]:
    """The configuration keys to write, each checked with the loader's rules first. trustedCa is ignored, as
    upstream ignores it: trusting a CA in sshd is a change that needs its own design and review (§9.3)."""
    from p0_ssh_agent.config.model import KEY_BY_NAME
    from p0_ssh_agent.config.values import ValueProblem, convert

    updates: dict[str, object] = {"version": "1.0"}
    for name in ("orgId", "hostId", "tunnelHost", "environmentId"):
        value = answer.get(name)
        if value is None or value == "":
            if name in ("orgId", "hostId"):  # without both there is no client id and `start` cannot run
                raise DataError(f"the registration answer has no {name}; nothing was written. Is --url right?")
            continue  # tunnelHost and environmentId keep what the file has, or the default
        if not isinstance(value, str):
            raise DataError(f"the registration answer's {name} is not a string; nothing was written")
        try:
            convert(KEY_BY_NAME[name], value)
        except ValueProblem as exc:
            raise DataError(f"the registration answer's {name} is unusable, nothing was written: {exc}") from None
        updates[name] = value
    updates["keyPath"] = str(key_dir)
    return updates


def ensure_keys(key_dir: Path) -> tuple[dict[str, str], bool]:
    """The public JWK to register, and whether it was just generated (only when neither key file exists)."""
    from p0_ssh_agent.identity.signing_key import (
        PRIVATE_KEY_FILE,
        PUBLIC_KEY_FILE,
        generate_keys,
        load_private_key,
        load_public_jwk,
    )

    private_path, public_path = key_dir / PRIVATE_KEY_FILE, key_dir / PUBLIC_KEY_FILE
    if not os.path.lexists(private_path):
        if os.path.lexists(public_path):
            raise KeyFileError(
                f"{public_path} exists without {PRIVATE_KEY_FILE}; remove it, or restore the private key "
                f"(a new key means registering again): p0-ssh-agent keygen --key-path {key_dir} --force"
            )
        return generate_keys(key_dir).public_jwk, True
    # Register the key the agent will actually sign with: the public file must match the private one.
    private = load_private_key(key_dir)
    public = load_public_jwk(key_dir)
    if (public.get("x"), public.get("y")) != (private.public_jwk.get("x"), private.public_jwk.get("y")):
        raise KeyFileError(
            f"{public_path} does not belong to {private_path}; fix with: p0-ssh-agent keygen --key-path {key_dir} "
            "--force (then register again)"
        )
    return public, False


def _print_request(request: dict[str, object], code: str, output: str) -> None:
    if output == "yaml":
        from ruamel.yaml import YAML

        yaml = YAML(typ="rt")
        yaml.indent(mapping=2, sequence=4, offset=2)
        yaml.width = 4096  # one line per value: a folded public key is valid YAML but hard to copy
        yaml.dump(request, sys.stdout)
    else:
        print(json.dumps(request, indent=2, ensure_ascii=False))
    print(f"\nregistration code:\n{code}")
    print("\nnext: paste the code in the P0 UI, or run this again with --url and --auth (or $P0_REGISTRATION_TOKEN)")


PRINT_MODE_KEYS = (("orgId", "org_id"), ("hostId", "host_id"), ("tunnelHost", "tunnel_host"))


def print_mode_updates(args: argparse.Namespace) -> dict[str, str]:
    """--org-id/--host-id/--tunnel-host, checked with the loader's rules; only without --url (there P0's answer
    says what they are, and two sources could disagree)."""
    from p0_ssh_agent.config.model import KEY_BY_NAME
    from p0_ssh_agent.config.values import ValueProblem, convert

    given = {name: getattr(args, attr) for name, attr in PRINT_MODE_KEYS if getattr(args, attr) is not None}
    if given and args.url:
        raise UsageError(
            "--org-id, --host-id and --tunnel-host are for the print mode; with --url P0's answer sets them"
        )
    for name, value in given.items():
        try:
            convert(KEY_BY_NAME[name], value)
        except ValueProblem as exc:
            raise UsageError(f"{KEY_BY_NAME[name].flag_name}: {exc}") from None
    return given


def _token(args: argparse.Namespace) -> str | None:
    """The token to send (only with --url): --auth, else $P0_REGISTRATION_TOKEN."""
    if not args.url:
        if args.auth:
            raise UsageError("--auth is only used with --url; without --url nothing is sent")
        return None
    check_url(args.url)
    token: str | None = args.auth or os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(f"--url needs the registration token: set {TOKEN_ENV}, or pass --auth")
    check_token(token)
    return token


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.config import DEFAULT_CONFIG_PATH, load_config, write_config
    from p0_ssh_agent.identity import hostfacts

    # Everything the operator can get wrong is checked before anything is created or sent.
    token = _token(args)
    written = print_mode_updates(args)
    public_ip = ""
    if args.public_ip:
        try:
            public_ip = str(ipaddress.ip_address(args.public_ip))
        except ValueError:
            raise UsageError(f"--public-ip {args.public_ip!r} is not an IP address") from None
    config_path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    overrides = {
        "hostname": args.hostname,
        "labels": args.label,
        "keyPath": str(Path(args.key_path).absolute()) if args.key_path else None,
        **written,
    }
    config = load_config(config_path, overrides=overrides, missing_ok=True)

    if args.detect_public_ip:
        detected = hostfacts.detect_public_ip()
        if detected is None:
            raise AgentError(
                "could not learn the public IP from "
                + ", ".join(urlsplit(u).netloc for u in hostfacts.PUBLIC_IP_SERVICES)
                + "; pass --public-ip IP, or leave both options out to send none"
            )
        public_ip = detected
    public_jwk, generated = ensure_keys(config.key_path)
    if generated:
        print(f"no keys in {config.key_path}: generated a new key pair there", file=sys.stderr)
    name = config.hostname or hostfacts.hostname()
    host_key = hostfacts.read_host_key() or hostfacts.fallback_host_key(name)
    request = build_request(
        config, public_jwk, hostname=name, host_key=host_key, public_ip=public_ip, now=datetime.now(UTC)
    )
    code = registration_code(request)
    if args.url is None or token is None:
        _print_request(request, code, args.output)
        if written:
            updates: dict[str, object] = {"version": "1.0", **written, "keyPath": str(config.key_path)}
            write_config(config_path, updates, defaults={"heartbeatIntervalSeconds": 60})
            print(f"\nwrote {config_path}: " + ", ".join(f"{k}={v}" for k, v in updates.items()))
            still = [name for name, value in (("orgId", config.org_id), ("hostId", config.host_id)) if not value]
            if still:
                print(f"still missing: {' and '.join(still)} (run again with --org-id/--host-id from the P0 UI)")
            else:
                print(f"then, once the code is in the P0 UI: {NEXT_STEP.removeprefix('next: ')}")
        return 0

    answer = post_registration(args.url, token, code, args.timeout)
    updates = updates_from_answer(answer, config.key_path)
    write_config(config_path, updates, defaults={"heartbeatIntervalSeconds": 60})
    print(f"registered {request['hostname']} with P0 as {updates['orgId']}:{updates['hostId']}:ssh")
    print(f"wrote {config_path}: " + ", ".join(f"{k}={v}" for k, v in updates.items()))
    print(NEXT_STEP)
    return 0
