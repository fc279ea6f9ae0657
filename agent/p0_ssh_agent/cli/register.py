"""`p0-ssh-agent register`: build the registration request, and optionally send it and write the config.

Without --url it prints the request and the base64 registration code for the P0 UI. With --url and --auth it
POSTs `{"key": <code>}` and writes the configuration from the answer, atomically and keeping comments. The
private key never leaves the host; the token never appears in output or logs.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from p0_ssh_agent.errors import AgentError, ConfigError, UsageError

TOKEN_ENV = "P0_REGISTRATION_TOKEN"  # noqa: S105 (a variable name, not a secret)
MAX_RESPONSE_BYTES = 65536


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "register",
        parents=parents,
        help="register this host with P0 (prints the request, or sends it with --url)",
        description="Print the registration request and code, or send it with --url/--auth and write the config.",
    )
    parser.add_argument("--url", help="registration URL from the P0 UI (https://)")
    parser.add_argument("--auth", help=f"registration token (or set {TOKEN_ENV}, which keeps it out of ps)")
    parser.add_argument("--hostname", help="hostname to register (default: this host's)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE", help="label (repeatable)")
    parser.add_argument("--key-path", metavar="DIR", help="key directory (default: config keyPath)")
    parser.add_argument("--output", choices=("json", "yaml"), default="json", help="format of the printed request")
    parser.add_argument("--public-ip", metavar="IP", help="public IP address the P0 CLI should connect to")
    parser.add_argument("--timeout", type=float, default=30.0, help="seconds to wait for the backend")
    return parser


def registration_request(args: argparse.Namespace, config: Any, public_jwk: dict[str, str]) -> dict[str, object]:
    from p0_ssh_agent.identity import hostfacts

    host = args.hostname or config.hostname or hostfacts.hostname()
    host_key = hostfacts.read_host_key() or hostfacts.fallback_host_key(host)
    # Before registration there is no hostId; the backend derives org/environment from the URL and assigns the
    # host id (INFERRED, upstream-protocol.md §9.2), so absent values are sent as empty strings.
    org, host_id = config.org_id or "", config.host_id or ""
    request: dict[str, object] = {
        "hostId": host_id,
        "clientId": f"{org}:{host_id}:ssh" if org and host_id else "",
        "hostname": host,
        "publicIp": args.public_ip or "",
        "fingerprint": host_key.fingerprint,
        "fingerprintPublicKey": host_key.public_key,
        "jwkPublicKey": public_jwk,
        "environmentId": config.environment_id if config.environment_id != "default" else "",
        "orgId": org,
        "timestamp": datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    labels = list(args.label) or list(config.labels)
    if labels:
        request["labels"] = labels
    return request


def registration_code(request: dict[str, object]) -> str:
    return base64.b64encode(json.dumps(request, separators=(",", ":")).encode()).decode()


def _check_url(url: str) -> None:
    from p0_ssh_agent.config.values import is_loopback_host

    parts = urlsplit(url)
    if parts.scheme == "https" and parts.hostname:
        return
    if parts.scheme == "http" and parts.hostname and is_loopback_host(parts.hostname):
        return
    raise UsageError(f"--url must be an https:// URL (http:// only to localhost), got {parts.scheme}://...")


def post(url: str, token: str, code: str, timeout: float) -> dict[str, object]:
    import urllib.error
    import urllib.request

    body = json.dumps({"key": code}).encode()
    request = urllib.request.Request(  # noqa: S310 (scheme checked in _check_url)
        url,
        data=body,
        method="POST",
        headers={"content-type": "application/json", "authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
            raw = response.read(MAX_RESPONSE_BYTES)
    except urllib.error.HTTPError as exc:
        detail = exc.read(500).decode("utf-8", "replace")
        raise AgentError(f"registration request failed with status {exc.code}: {detail}") from None
    except (urllib.error.URLError, OSError) as exc:
        raise AgentError(f"cannot reach {urlsplit(url).hostname}: {getattr(exc, 'reason', exc)}") from None
    try:
        answer = json.loads(raw)
    except ValueError:
        raise AgentError("registration answer is not JSON") from None
    if not isinstance(answer, dict) or answer.get("ok") is not True:
        raise AgentError("registration was not successful (the answer did not say ok: true)")
    return answer


def config_updates(answer: dict[str, object], key_path: Path, existing: Any) -> dict[str, object]:
    updates: dict[str, object] = {"version": "1.0", "keyPath": str(key_path)}
    for name in ("orgId", "hostId", "tunnelHost", "environmentId"):
        value = answer.get(name)
        if value is not None:
            if not isinstance(value, str):
                raise AgentError(f"registration answer: {name} is not a string")
            updates[name] = value
    if existing.source is None:
        updates["heartbeatIntervalSeconds"] = 60
    return updates


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.config import DEFAULT_CONFIG_PATH, load_config, parse_config_text, write_config
    from p0_ssh_agent.config.writer import render_config
    from p0_ssh_agent.errors import KeyFileError
    from p0_ssh_agent.identity.keys import generate_keys, load_public_jwk

    config_path = Path(args.config) if args.config else DEFAULT_CONFIG_PATH
    config = load_config(config_path) if config_path.exists() else load_config(None, env={})
    key_dir = Path(args.key_path) if args.key_path else config.key_path
    try:
        public_jwk = load_public_jwk(key_dir)
    except KeyFileError:
        print(f"no keys in {key_dir}; generating them (p0-ssh-agent keygen)")
        public_jwk = generate_keys(key_dir).public_jwk
    request = registration_request(args, config, public_jwk)
    code = registration_code(request)
    if not args.url:
        if args.output == "yaml":
            print(_yaml(request), end="")
        else:
            print(json.dumps(request, indent=2))
        print(f"\nregistration code:\n{code}")
        print("\nnext: paste the code in the P0 UI, or run again with --url and --auth to register directly")
        return 0
    _check_url(args.url)
    token = args.auth or os.environ.get(TOKEN_ENV)
    if not token:
        raise UsageError(f"--url needs a token: pass --auth or set {TOKEN_ENV}")
    answer = post(args.url, token, code, args.timeout)
    updates = config_updates(answer, key_dir, config)
    existing = config_path.read_text(encoding="utf-8") if config_path.exists() else None
    try:
        parse_config_text(render_config(existing, updates), source="registration answer")
    except ConfigError as exc:
        raise AgentError(f"the backend's answer would make an invalid configuration, nothing written: {exc}") from None
    write_config(config_path, updates)
    print(f"registered; wrote {config_path}: " + ", ".join(f"{k}={v}" for k, v in updates.items()))
    print("next: systemctl enable --now p0-ssh-agent && p0-ssh-agent status")
    return 0


def _yaml(value: dict[str, object]) -> str:
    import io

    from ruamel.yaml import YAML

    out = io.StringIO()
    YAML(typ="safe", pure=True).dump(value, out)
    return out.getvalue()
