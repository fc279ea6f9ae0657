"""`p0-ssh-agent policy check [--policy FILE] REQUEST.json`: evaluate a request against the local policy, offline.

The request is the JSON body the backend would send (`{"command": "provisionSudo", "userName": ..., ...}`), or a
forwarded request with that body under "data". The target account's facts come from this host, as they would for
the daemon; nothing is changed and no backend is needed. Exit 0 allow, 1 deny, 65 a request that is not valid,
78 a policy that does not load.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

from p0_ssh_agent.errors import DataError, ExitCode


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "policy",
        parents=parents,
        help="check a request against the local Cedar policy (offline)",
        description="Work with the host's local Cedar policy (docs/policy.md).",
    )
    actions = parser.add_subparsers(dest="policy_action", metavar="ACTION", required=True)
    check = actions.add_parser(
        "check",
        parents=parents,
        help="evaluate REQUEST.json and explain the decision",
        description=(
            "Evaluate a request body against the policy and explain the decision. Exit 0 allow, 1 deny, "
            "65 invalid request, 78 the policy does not parse (file and line are named)."
        ),
    )
    check.add_argument("--policy", metavar="FILE", help="policy file (default: policyFile from the config)")
    check.add_argument(
        "--at",
        metavar="TIME",
        help="evaluate as at this ISO 8601 time, e.g. 2026-11-23T08:30:00+01:00 (default: now)",
    )
    check.add_argument("--json", action="store_true", help="print the decision and the facts as JSON")
    check.add_argument("request", metavar="REQUEST.json", help="the request body as JSON ('-' for stdin)")
    return parser


def run(args: argparse.Namespace) -> int:
    from datetime import UTC

    from p0_ssh_agent.config import load_config
    from p0_ssh_agent.core.request_errors import RequestInvalid
    from p0_ssh_agent.core.requests import Action, CaKeyRequest, KeyRequest, SudoRequest, UserRequest, parse_request
    from p0_ssh_agent.host.audit_trail import AuditTrail
    from p0_ssh_agent.host.policy_file import load_policy
    from p0_ssh_agent.provisioning.engine import Engine
    from p0_ssh_agent.provisioning.facts import gather, policy_facts
    from p0_ssh_agent.runtime.statedir import resolve_state_dir

    config = load_config(args.config, missing_ok=True)
    policy = load_policy(Path(args.policy) if args.policy else config.policy_file)
    body = _read_request(args.request)
    try:
        request = parse_request(str(body.get("command", "")), body)
    except RequestInvalid as exc:
        raise DataError(f"{args.request}: {exc.message}") from exc
    grant = request if isinstance(request, UserRequest | KeyRequest | CaKeyRequest | SudoRequest) else None
    if grant is None or grant.action is not Action.GRANT:
        verdict = {"decision": "allow", "reason": "not evaluated: revokes and read-only commands are always allowed"}
        print(json.dumps(verdict) if args.json else f"ALLOW  {verdict['reason']}")
        return int(ExitCode.OK)
    # Only looks (the facts a real grant would be decided on): it records nothing.
    engine = Engine.describing(config, resolve_state_dir(config.state_dir, os.environ), audit_trail=AuditTrail.off())
    now = _moment(args.at) if args.at else datetime.now(UTC)
    facts = policy_facts(gather(engine, grant, now), grant, org_id=config.org_id or "", adopted=config.adopt_users)
    decision = policy.evaluate(facts)
    request_text = facts.request()
    resource = facts.resource_attributes()
    if args.json:
        print(
            json.dumps(
                {
                    "decision": "allow" if decision.allowed else "deny",
                    "policies": [{"id": p, "line": policy.lines.get(p)} for p in decision.policies],
                    "reason": decision.reason,
                    "errors": list(decision.errors),
                    "policyFile": policy.source,
                    "request": request_text,
                    "resource": resource,
                },
                indent=2,
            )
        )
    else:
        print(f"{'ALLOW' if decision.allowed else 'DENY'}  {decision.reason}")
        for policy_id in decision.policies:
            print(f"  policy    {policy.where(policy_id)}")
        print(f"  principal {request_text['principal']}")
        print(f'  action    {request_text["action"]} (in P0::Action::"grant")')
        print(f"  resource  {request_text['resource']} {json.dumps(resource, sort_keys=True)}")
        print(f"  context   {json.dumps(facts.context, sort_keys=True)}")
    return int(ExitCode.OK) if decision.allowed else int(ExitCode.FAILURE)


def _read_request(name: str) -> dict[str, object]:
    try:
        text = sys.stdin.read() if name == "-" else Path(name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{name}: cannot read the request: {exc}") from exc
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{name}:{exc.lineno}:{exc.colno}: not JSON: {exc.msg}") from exc
    if isinstance(value, dict) and isinstance(value.get("data"), dict) and "command" not in value:
        value = value["data"]  # a forwarded request (the `call` params): the body is under "data"
    if not isinstance(value, dict):
        raise DataError(f"{name}: the request must be a JSON object like the backend's request body")
    return value


def _moment(text: str) -> datetime:
    try:
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise DataError(f"--at {text!r}: not an ISO 8601 time ({exc})") from exc
    return moment if moment.tzinfo is not None else moment.astimezone()  # naive: host local time, like the policy
