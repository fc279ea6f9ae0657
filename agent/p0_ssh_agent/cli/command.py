"""`p0-ssh-agent command`: run one provisioning request by hand, through the daemon's own code path.

P0's commands (provisionUser, ...) are built from flags and run for real unless --dry-run (or dryRun: true): that
is how `command` has always worked. The agent-access commands (`ssh_*`, issue 17) take their body as JSON
(--body; --username and --request-id fill in or replace its members) and go through agent_access/line.py's
AccessPipeline as the daemon's lane would run them, but ONLY as a dry run: every check (the account, the UCAN,
the cosignature, the policy) and a description of what would run, so an operator sees what a request would do or
why it is refused. A real run by hand is refused (exit 64): a cosignature counts once through the daemon's replay
cache, which lives in the daemon's memory and would not see a claim made here, and the lane's limits are the
daemon's. The UCAN, the cosignature and the content are never printed, only their sizes and digests.
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

from p0_ssh_agent.errors import ExitCode, UsageError


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
    parser.add_argument(
        "--command",
        required=True,
        help="provisionUser, provisionAuthorizedKeys, listUsers, ...; or an agent-access ssh_* command (dry run only)",
    )
    parser.add_argument("--username", help="target Linux user (userName; an ssh_* body's username)")
    parser.add_argument("--action", help="grant or revoke (default grant)")
    parser.add_argument("--request-id", help="request id (default: derived from the user name, like the Go agent)")
    parser.add_argument("--public-key", help="OpenSSH public key line (provisionAuthorizedKeys)")
    parser.add_argument("--ca-public-key", help="OpenSSH CA public key line (provisionCAKeys)")
    parser.add_argument("--sudo", action="store_true", help="grant sudo (provisionSudo)")
    parser.add_argument("--run-as-user", help="sudo run-as user (provisionSudo; default ALL)")
    parser.add_argument("--start-time", help="collectSudoshRecordings: from (unix seconds or RFC 3339)")
    parser.add_argument("--end-time", help="collectSudoshRecordings: until")
    parser.add_argument(
        "--body",
        metavar="FILE",
        help="ssh_* commands: the request body as JSON, as the backend forwards it ('-' for stdin)",
    )
    parser.add_argument("--dry-run", action="store_true", help="validate and print the plan; change nothing")
    return parser


def build_request(args: argparse.Namespace) -> dict[str, object]:
    data: dict[str, object] = {"command": args.command, "action": args.action or "grant"}
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
    from p0_ssh_agent.runtime.limits import is_access_command

    if is_access_command(args.command):  # routed as the daemon routes it: to the agent-access lane
        return run_access(args)
    if args.body is not None:
        raise UsageError("--body is for the agent-access ssh_* commands; P0's commands take their members as flags")
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
    fields = ("success", "message", "error", "output", "http_status", "result")
    return {f: getattr(result, f) for f in fields if getattr(result, f, None) not in (None, "")}


# --- the agent-access commands (ssh_*): a dry run through the AccessPipeline -----------------------------------

# Flags of P0's commands, which no ssh_* body takes (their members would be refused as unknown).
P0_ONLY_FLAGS = {
    "action": "--action",
    "public_key": "--public-key",
    "ca_public_key": "--ca-public-key",
    "run_as_user": "--run-as-user",
    "start_time": "--start-time",
    "end_time": "--end-time",
}
SECRET_MEMBERS = ("ucan", "cosignature")  # shown by size and digest only


def build_access_body(args: argparse.Namespace, body: dict[str, object]) -> dict[str, object]:
    """The ssh_* body: --body's object, its command, and --username / --request-id over its own members (the
    request id derived from the account like P0's when neither gives one)."""
    given = [flag for name, flag in P0_ONLY_FLAGS.items() if getattr(args, name) is not None] + (
        ["--sudo"] if args.sudo else []
    )
    if given:
        raise UsageError(f"{', '.join(given)}: not taken by {args.command}; give its members in --body FILE")
    data = {"command": args.command, **body}
    if args.username is not None:
        data["username"] = args.username
    if args.request_id is not None:
        data["requestId"] = args.request_id
    elif "requestId" not in data and isinstance(data.get("username"), str):
        data["requestId"] = default_request_id(str(data["username"]))
    return data


def shown_body(data: dict[str, object]) -> dict[str, object]:
    """The body as printed: the UCAN and the cosignature (secrets) and the content (the user's) by size and
    digest; a member that is not the string it should be is left to the pipeline to refuse, and shown by type."""
    import hashlib

    shown = dict(data)
    for name in (*SECRET_MEMBERS, "data"):
        value = shown.get(name)
        if name not in shown:
            continue
        if isinstance(value, str):
            digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()
            shown[name] = f"<{len(value)} characters, sha256:{digest}>"
        else:
            shown[name] = f"<{type(value).__name__}>"
    return shown


def run_access(args: argparse.Namespace) -> int:
    import trio

    from p0_ssh_agent.cli.policy import read_request_json
    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.host.audit_trail import AuditTrail
    from p0_ssh_agent.protocol.forwarded import CommandResult, ForwardedRequest
    from p0_ssh_agent.runtime.access_lane import access_off_result
    from p0_ssh_agent.runtime.statedir import resolve_state_dir

    config = load_config(args.config)
    if not (args.dry_run or config.dry_run):
        raise UsageError(
            f"{args.command}: agent-access commands run by hand only as a dry run (--dry-run): a real run is the "
            "daemon's, whose replay cache keeps each cosignature to one use; send it through the tunnel"
        )
    data = build_access_body(args, read_request_json(args.body) if args.body is not None else {})
    request = ForwardedRequest(
        headers={}, method="POST", path="", params={}, data=data, timeout_millis=None, command=args.command
    )
    result: CommandResult
    if not config.agent_access:  # what the daemon answers with the switch off: nothing of the feature loads
        result = access_off_result()
    else:
        from p0_ssh_agent.agent_access.line import build_access_pipeline

        state_dir = resolve_state_dir(config.state_dir, os.environ)
        audit = AuditTrail.from_config(config, os.environ)
        pipeline = build_access_pipeline(config, state_dir, audit, by_hand=True)
        result = trio.run(pipeline.execute, request, None)
    print("Provisioning Request:")
    print(json.dumps(shown_body(data), indent=2))
    print("Execution Result:")
    print(json.dumps(_as_dict(result), indent=2))
    return int(ExitCode.OK) if result.success else int(ExitCode.FAILURE)
