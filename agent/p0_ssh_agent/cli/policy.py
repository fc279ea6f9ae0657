"""`p0-ssh-agent policy check [--policy FILE] [--agent-access] [REQUEST.json]`: check the policy files, and evaluate
a request against the local policy, offline.

The request is the JSON body the backend would send (`{"command": "provisionSudo", "userName": ..., ...}`), or a
forwarded request with that body under "data". The target account's facts come from this host, as they would for
the daemon; nothing is changed and no backend is needed. Exit 0 allow, 1 deny, 65 a request that is not valid,
78 a policy that does not load.

With agentAccess on (or --agent-access, or either of its file options) the agent-access policy
(agentAccessPolicyFile) and the trust file (agentAccessKeysFile) are loaded as the daemon loads them at start-up and
on reload, and a file that does not is exit 78 naming file:line, as for policy.cedar (diagnostics/access_checks.py).
Without REQUEST.json only the files are checked. An `ssh_*` request is judged by `command --dry-run`, which runs
all of agent access's checks, not by this command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p0_ssh_agent.core import messages
from p0_ssh_agent.errors import DataError, ExitCode

if TYPE_CHECKING:
    from p0_ssh_agent.config import AgentConfig
    from p0_ssh_agent.diagnostics.access_checks import AccessFiles


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
    check.add_argument(
        "--agent-access",
        action="store_true",
        help="also check the agent-access policy and trust file when agentAccess is off (on: always checked)",
    )
    check.add_argument("--access-policy", metavar="FILE", help="agent-access policy (default: agentAccessPolicyFile)")
    check.add_argument("--access-keys", metavar="FILE", help="agent-access trust file (default: agentAccessKeysFile)")
    check.add_argument(
        "request", metavar="REQUEST.json", nargs="?", help="the request body as JSON ('-' for stdin); none: files only"
    )
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
    access = _access_files(args, config)  # PolicyError / TrustKeysError: exit 78, file:line named
    if args.request is None:
        return _files_only(args, policy.source, access)
    body = read_request_json(args.request)
    command = str(body.get("command", ""))
    if command.startswith("ssh_"):
        name = messages.shown(command, limit=40)
        raise DataError(
            f"{args.request}: {name} is an agent-access request, judged by all of its checks with "
            f"`p0-ssh-agent command --command {name} --dry-run --body {args.request}`"
        )
    try:
        request = parse_request(command, body)
    except RequestInvalid as exc:
        raise DataError(f"{args.request}: {exc.message}") from exc
    grant = request if isinstance(request, UserRequest | KeyRequest | CaKeyRequest | SudoRequest) else None
    if grant is None or grant.action is not Action.GRANT:
        verdict = {"decision": "allow", "reason": "not evaluated: revokes and read-only commands are always allowed"}
        print(json.dumps(verdict) if args.json else f"ALLOW  {verdict['reason']}")
        _print_access(args, access)
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
                    **({"agentAccess": _access_json(access)} if access is not None else {}),
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
        _print_access(args, access)
    return int(ExitCode.OK) if decision.allowed else int(ExitCode.FAILURE)


def _access_files(args: argparse.Namespace, config: AgentConfig) -> AccessFiles | None:
    """The agent-access files, loaded when agentAccess is on or the command line asks; None otherwise."""
    asked = args.agent_access or args.access_policy is not None or args.access_keys is not None
    if not (config.agent_access or asked):
        return None
    from p0_ssh_agent.diagnostics.access_checks import load_access_files

    policy_path = Path(args.access_policy) if args.access_policy else config.agent_access_policy_file
    keys_path = Path(args.access_keys) if args.access_keys else config.agent_access_keys_file
    return load_access_files(policy_path, keys_path)


def _access_json(access: AccessFiles) -> dict[str, object]:
    return {
        "policyFile": access.policy_source,
        "permits": access.shape.permits,
        "forbids": access.shape.forbids,
        "permitted": list(access.shape.permitted),
        "keysFile": str(access.keys_file),
        "issuers": access.issuers,
        "approvers": access.approvers,
    }


def _access_lines(access: AccessFiles) -> list[str]:
    from p0_ssh_agent.diagnostics.access_checks import describe_shape, describe_trust

    trust = describe_trust(access.keys_file, access.issuers, access.approvers, exists=access.keys_file_exists)
    return [
        f"  agent-access policy  {describe_shape(access.policy_source, access.shape)}",
        f"  trust file           {trust}",
    ]


def _print_access(args: argparse.Namespace, access: AccessFiles | None) -> None:
    """After a request's verdict, in text: what the agent-access files hold (JSON carries it in the document)."""
    if access is not None and not args.json:
        print("\n".join(_access_lines(access)))


def _files_only(args: argparse.Namespace, source: str, access: AccessFiles | None) -> int:
    """No request: the files loaded (any that did not has raised, exit 78), and what they hold."""
    if args.json:
        document: dict[str, object] = {"policyFile": source}
        if access is not None:
            document["agentAccess"] = _access_json(access)
        print(json.dumps(document, indent=2))
        return int(ExitCode.OK)
    print(f"OK  policy               {source}")
    if access is not None:
        print("\n".join(_access_lines(access)))
    else:
        print("  agent access is off (agentAccess: false): its files not checked (--agent-access checks them)")
    return int(ExitCode.OK)


def read_request_json(name: str) -> dict[str, object]:
    """A request body from the file `name` ('-': stdin), or the body under "data" of a forwarded request;
    DataError naming name:line:col. Shared with `command --body`."""
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
