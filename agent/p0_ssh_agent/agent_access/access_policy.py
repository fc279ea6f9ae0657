"""The agent-access Cedar policy: a file of its own, /etc/p0-ssh-agent/agent-access.cedar, denying by default.

    agent-access.cedar --(parse, validate against SCHEMA)--> AccessPolicy --(evaluate, once per path)--> Decision

Separate from the main policy (policy.cedar) on purpose: an operator's main policy with a broad
`permit (principal, action, resource);` must not open `/ssh/*`, and dpkg keeps an edited conffile on upgrade, so a
new action could never be added to it safely. The main schema's actions live in the P0 namespace and cannot even
name these; this schema has NO namespace, so the issue's fragment works as written:

    permit (principal, action in [Action::"/ssh/file/read", Action::"/ssh/dir/list", Action::"/ssh/dir/tree"],
            resource) when { resource.host == "ops-01.example.com" && resource.username == "deploy" };
    forbid (principal, action == Action::"/ssh/exec", resource) when { !context.cosigner };

Principal: Agent::"<the UCAN's issuer>" (no attributes). Action: one per AccessCommand.action. Resource:
Target {host, username, path, ancestors}, where `ancestors` is scoped_paths.ancestors(path) ("/" first, the path
last): `resource.ancestors.contains("/var/www/app")` is the component-wise prefix test `like "/var/www/app*"` gets
wrong. Context: cosigner (a verified cosignature, never the sender's say-so), command, requestId, hostname, size.

The file may hold only comments (the built-in default, default_access_policy.cedar): then nothing is permitted.
Compilation, file:line errors, @id names and failing closed on an evaluation error are core/local_policy.py's.

Keep this module lazily imported: only the code that serves agent access imports it, and only when agentAccess is
on, so an agent without the feature never parses this schema nor holds it (the idle footprint, issue 16).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from importlib import resources
from pathlib import Path

import cedarpy

from p0_ssh_agent.agent_access.access_model import AccessCommand, Operation
from p0_ssh_agent.agent_access.scoped_paths import ancestors
from p0_ssh_agent.core.local_policy import Decision, LocalPolicy, compile_policy, entity_uid
from p0_ssh_agent.host.policy_file import read_policy_text

BUILTIN_ACCESS_SOURCE = "<built-in agent-access policy>"
DEFAULT_ACCESS_POLICY_PATH = Path("/etc/p0-ssh-agent/agent-access.cedar")

_STRING = {"type": "String"}
CONTEXT_ATTRIBUTES: dict[str, dict[str, str]] = {
    "cosigner": {"type": "Boolean"},  # a valid cosignature from an approver key (cosign.py), else false
    "command": _STRING,  # "ssh_file_read", ...
    "requestId": _STRING,
    "hostname": _STRING,  # this host's name, as the agent knows it
    "size": {"type": "Long"},  # the bytes the operation writes (write/create), 0 otherwise
}
SCHEMA: dict[str, object] = {
    "": {
        "entityTypes": {
            "Agent": {"shape": {"type": "Record", "attributes": {}}},
            "Target": {
                "shape": {
                    "type": "Record",
                    "attributes": {
                        "host": _STRING,
                        "username": _STRING,
                        "path": _STRING,
                        "ancestors": {"type": "Set", "element": _STRING},
                    },
                }
            },
        },
        "actions": {
            command.action: {
                "appliesTo": {
                    "principalTypes": ["Agent"],
                    "resourceTypes": ["Target"],
                    "context": {"type": "Record", "attributes": CONTEXT_ATTRIBUTES},
                }
            }
            for command in AccessCommand
        },
    }
}
# Parsed once, at import (core/local_policy.py's PARSED_SCHEMA says why): hence the lazy import above.
PARSED_ACCESS_SCHEMA = cedarpy.Schema.from_json_str(json.dumps(SCHEMA))


@dataclass(frozen=True)
class AccessPolicy:
    compiled: LocalPolicy  # the policy set, its source, @ids and lines, validated against SCHEMA

    @property
    def source(self) -> str:
        return self.compiled.source

    def evaluate(
        self,
        *,
        principal: str,
        command: AccessCommand,
        host: str,
        username: str,
        path: str,
        context: Mapping[str, object],
    ) -> Decision:
        """Whether `principal` (the UCAN's issuer) may run `command` on `path` as `username` on `host`."""
        target = entity_uid("Target", path)
        request: dict[str, object] = {
            "principal": entity_uid("Agent", principal),
            "action": entity_uid("Action", command.action),
            "resource": target,
            "context": dict(context),
        }
        entities: list[dict[str, object]] = [
            {"uid": {"type": "Agent", "id": principal}, "attrs": {}, "parents": []},
            {
                "uid": {"type": "Target", "id": path},
                "attrs": {"host": host, "username": username, "path": path, "ancestors": list(ancestors(path))},
                "parents": [],
            },
        ]
        return self.compiled.decide(request, entities)

    def evaluate_all(
        self,
        *,
        principal: str,
        command: AccessCommand,
        host: str,
        username: str,
        paths: Sequence[str],
        context: Mapping[str, object],
    ) -> Decision:
        """Each path judged on its own (move/copy: the source and the destination); allowed only if every one is.
        A denial's reason starts with the path it denied."""
        if not paths:
            raise ValueError("evaluate_all needs at least one path")
        allowed_by: list[str] = []
        for path in paths:
            decision = self.evaluate(
                principal=principal, command=command, host=host, username=username, path=path, context=context
            )
            if not decision.allowed:
                return replace(decision, reason=f"{path}: {decision.reason}")
            allowed_by.extend(name for name in decision.policies if name not in allowed_by)
        return Decision(True, tuple(allowed_by), f"allowed by {', '.join(allowed_by)}")


@dataclass(frozen=True)
class PolicyShape:
    """What a policy's statements say on their face (policy_shape): for doctor, and `policy check`."""

    permits: int
    forbids: int
    permitted: tuple[str, ...]  # the actions some permit names, in AccessCommand order (every one for `action`)


def policy_shape(policy: AccessPolicy) -> PolicyShape:
    """The permits and forbids of `policy` and the actions its permits name, from Cedar's own JSON form of the text.
    Static: a permit whose `when` can never hold still counts; no permit at all means every request is denied."""
    every = tuple(command.action for command in AccessCommand)
    statements = json.loads(cedarpy.policies_to_json_str(policy.compiled.text))["staticPolicies"].values()
    named: set[str] = set()
    permits = forbids = 0
    for statement in statements:
        if statement.get("effect") != "permit":
            forbids += 1
            continue
        permits += 1
        scope = statement.get("action", {})
        entities = scope.get("entities") or ([scope["entity"]] if "entity" in scope else None)
        if scope.get("op") == "All" or entities is None:  # `action`, or a scope this reading does not know
            named.update(every)
        else:  # == or in: this schema has no action groups, so `in` names exactly its entities
            named.update(str(entity.get("id", "")) for entity in entities)
    return PolicyShape(permits, forbids, tuple(action for action in every if action in named))


def access_context(operation: Operation, *, cosigner: bool, hostname: str) -> dict[str, object]:
    """The context one operation is judged with; `cosigner` is what cosign.py verified, never a request member."""
    return {
        "cosigner": cosigner,
        "command": operation.command.value,
        "requestId": operation.request_id,
        "hostname": hostname,
        "size": len(operation.data),
    }


def judged_paths(operation: Operation, prefix: str) -> tuple[str, ...]:
    """The paths the policy judges (evaluate_all): the operation's own; for exec, its working directory, which is
    the capability's path_prefix when the request names none."""
    if operation.command is AccessCommand.EXEC:
        return (operation.cwd or prefix,)
    return operation.paths


def compile_access_policy(text: str, source: str) -> AccessPolicy:
    """Parse and validate `text` against SCHEMA (PolicyError naming source:line); comments alone deny everything."""
    return AccessPolicy(compile_policy(text, source, schema=PARSED_ACCESS_SCHEMA, empty_allowed=True))


def builtin_access_text() -> str:
    return resources.files("p0_ssh_agent.agent_access").joinpath("default_access_policy.cedar").read_text("utf-8")


def load_access_policy(path: Path) -> AccessPolicy:
    """The policy in `path` (checked as host/policy_file.py checks policy.cedar: root's, a regular file, not
    group- or world-writable, bounded), or the built-in default, which denies everything, when there is none."""
    text = read_policy_text(path)
    if text is None:
        return compile_access_policy(builtin_access_text(), BUILTIN_ACCESS_SOURCE)
    return compile_access_policy(text, str(path))
