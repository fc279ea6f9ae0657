"""`p0-ssh-agent keygen`: create the agent's ES384 key pair (jwk.private.json, jwk.public.json)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "keygen",
        parents=parents,
        help="create the agent's ES384 key pair",
        description=(
            "Write jwk.private.json (0600) and jwk.public.json (0644) in a 0700 directory. Refuses to replace "
            "existing keys without --force: a new key breaks the host's registration with P0."
        ),
    )
    parser.add_argument("--key-path", metavar="DIR", help="key directory (default: config keyPath)")
    parser.add_argument("--path", metavar="DIR", help=argparse.SUPPRESS)  # deprecated alias (old Go flag)
    parser.add_argument("--force", action="store_true", help="replace existing keys (you must register again)")
    return parser


def key_dir_from(args: argparse.Namespace) -> Path:
    """--key-path, then the deprecated --path, then the configuration's keyPath (default /etc/p0-ssh-agent/keys)."""
    if args.key_path or args.path:
        return Path(args.key_path or args.path)
    from p0_ssh_agent.config import load_config

    return load_config(args.config).key_path


def run(args: argparse.Namespace) -> int:
    from p0_ssh_agent.identity.signing_key import generate_keys

    key_dir = key_dir_from(args)
    key = generate_keys(key_dir, force=args.force)
    print(json.dumps(key.public_jwk, indent=2))
    print(f"thumbprint (RFC 7638): {key.thumbprint}")
    print(f"wrote {key_dir / 'jwk.private.json'} (0600) and {key_dir / 'jwk.public.json'} (0644)")
    print("next: p0-ssh-agent register --url <registration URL from the P0 UI> --auth <token>")
    return 0
