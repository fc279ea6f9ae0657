"""`p0-ssh-agent command`: run one provisioning request by hand, through the daemon's own code path."""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from p0_ssh_agent.errors import ExitCode


def default_request_id(user: str) -> str:
    """The Go agent's auto id: cmd-<1000000 + (|javaHash(user)| mod 8999999)> (upstream-protocol.md §7)."""
    h = 0
    for char in user:
        h = (31 * h + ord(char)) & 0xFFFFFFFF
    signed = h - (1 << 32) if h >= 1 << 31 else h
    return f"cmd-{1000000 + abs(signed) % 8999999}"


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "command",
        parents=parents,
        help="run one provisioning request by hand (try it with --dry-run)",
        description="Build a request like the backend would and run it through the same code as the daemon.",
    )
    parser.add_argument("--command", required=True, help="provisionUser, provisionAuthorizedKeys, listUsers, ...")
    parser.add_argument("--username", help="target Linux user (userName)")
    parser.add_argument("--action", default="grant", help="grant or revoke (default grant)")
    parser.add_argument("--request-id", help="request id (default: derived from the user name, like the Go agent)")
    parser.add_argument("--public-key", help="OpenSSH public key line (provisionAuthorizedKeys)")
    parser.add_argument("--ca-public-key", help="OpenSSH CA public key line (provisionCAKeys)")
    parser.add_argument("--sudo", action="store_true", help="grant sudo (provisionSudo)")
    parser.add_argument("--run-as-user", help="sudo run-as user (provisionSudo; default ALL)")
    parser.add_argument("--start-time", help="collectSudoshRecordings: from (unix seconds or RFC 3339)")
    parser.add_argument("--end-time", help="collectSudoshRecordings: until")
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; change nothing")
    return parser


def build_request(args: argparse.Namespace) -> dict[str, object]:
    data: dict[str, object] = {"command": args.command, "action": args.action}
    if args.username is not None:
        data["userName"] = args.username
        data["requestId"] = args.request_id or default_request_id(args.username)
    elif args.request_id:
        data["requestId"] = args.request_id
    optional = {
        "publicKey": args.public_key,
        "caPublicKey": args.ca_public_key,
        "runAsUser": args.run_as_user,
        "startTime": args.start_time,
        "endTime": args.end_time,
    }
    data.update({k: v for k, v in optional.items() if v is not None})
    if args.sudo:
        data["sudo"] = True
    return data


def run(args: argparse.Namespace) -> int:
    import trio

    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.host.audit_trail import AuditTrail
    from p0_ssh_agent.protocol.forwarded import ForwardedRequest
    from p0_ssh_agent.provisioning.pipeline import build_pipeline
    from p0_ssh_agent.runtime.jobs import job_key
    from p0_ssh_agent.runtime.statedir import ensure_state_dir, resolve_state_dir

    config = load_config(args.config)
    dry_run = args.dry_run or config.dry_run
    state_dir = resolve_state_dir(config.state_dir, os.environ)
    if not dry_run:
        ensure_state_dir(state_dir)
    data = build_request(args)
    request = ForwardedRequest(
        headers={}, method="POST", path="", params={}, data=data, timeout_millis=None, command=args.command
    )
    pipeline = build_pipeline(config, state_dir, AuditTrail.from_config(config, os.environ), dry_run=dry_run)
    result = trio.run(pipeline.execute, request, job_key(request))
    print("Provisioning Request:")
    print(json.dumps(data, indent=2))
    print("Execution Result:")
    print(json.dumps(_as_dict(result), indent=2))
    return int(ExitCode.OK) if result.success else int(ExitCode.FAILURE)


def _as_dict(result: object) -> dict[str, object]:
    fields = ("success", "message", "error", "output", "http_status")
    return {f: getattr(result, f) for f in fields if getattr(result, f, None) not in (None, "")}
