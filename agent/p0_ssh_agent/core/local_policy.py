"""The host owner's local policy, in Cedar: compiled and validated once, evaluated before every grant (pure: the
file is read by host/policy_file.py).

    policy.cedar --(parse, validate against SCHEMA)--> LocalPolicy --(evaluate(facts))--> Decision

The file is the host owner's, never the network's: root-owned (or owned by whoever runs the agent), not writable
by group or others. It is validated against SCHEMA at load, so a misspelt attribute fails start-up with the line
of its policy instead of silently never matching at evaluation time. A missing file means the built-in default
(the same text the package installs as /etc/p0-ssh-agent/policy.cedar).

Cedar ignores a policy whose evaluation errors; for a `forbid` that would mean a broken guard allows the grant.
We fail closed instead: any evaluation error denies, naming the policy.

The machinery (compile_policy, split_statements, LocalPolicy.decide) also serves the agent-access policy
(agent_access/access_policy.py): the same compile with another schema, where a file of comments alone is allowed.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import cedarpy

from p0_ssh_agent.errors import ConfigError

BUILTIN_SOURCE = "<built-in default policy>"
GRANT_ACTIONS = ("provisionUser", "provisionAuthorizedKeys", "provisionCAKeys", "provisionSudo")
NO_PERMIT = "default-deny"  # the id reported when no permit matched

_STRING = {"type": "String"}
_LONG = {"type": "Long"}
_BOOL = {"type": "Boolean"}
CONTEXT_ATTRIBUTES: dict[str, dict[str, str]] = {
    "requestId": _STRING,
    "command": _STRING,
    "sudo": _BOOL,
    "runAsUser": _STRING,  # "" unless sudo; "ALL" for P0's usual rule
    "keyType": _STRING,  # "ssh-ed25519", ... for provisionAuthorizedKeys/provisionCAKeys, else ""
    "keyFingerprint": _STRING,  # "SHA256:..." likewise
    "hostname": _STRING,
    "hour": _LONG,  # host local time: office hours are a local notion
    "minute": _LONG,
    "weekday": _LONG,  # ISO: 1 = Monday ... 7 = Sunday
    "now": _LONG,  # unix seconds
}
SCHEMA: dict[str, object] = {
    "P0": {
        "entityTypes": {
            "Backend": {"shape": {"type": "Record", "attributes": {}}},
            "Group": {"shape": {"type": "Record", "attributes": {}}},
            "User": {
                "memberOfTypes": ["Group"],
                "shape": {
                    "type": "Record",
                    "attributes": {
                        "name": _STRING,
                        "exists": _BOOL,
                        "uid": _LONG,  # -1 when the account does not exist
                        "managed": _BOOL,
                        "system": _BOOL,
                        "groups": {"type": "Set", "element": _STRING},
                    },
                },
            },
        },
        "actions": {
            "grant": {},
            **{
                name: {
                    "memberOf": [{"id": "grant"}],
                    "appliesTo": {
                        "principalTypes": ["Backend"],
                        "resourceTypes": ["User"],
                        "context": {"type": "Record", "attributes": CONTEXT_ATTRIBUTES},
                    },
                }
                for name in GRANT_ACTIONS
            },
        },
    }
}


# Parsed once: given the dict, cedarpy re-serialises and re-parses the schema on every call (about 0.7 ms of the
# 1 ms an evaluation took).
PARSED_SCHEMA = cedarpy.Schema.from_json_str(json.dumps(SCHEMA))


class PolicyError(ConfigError):
    """The policy file cannot be used (unreadable, unsafe, does not parse or validate): exit 78."""


@dataclass(frozen=True)
class Decision:
    allowed: bool
    policies: tuple[str, ...]  # the ids that decided: the forbids that matched, or the permits that allowed
    reason: str
    errors: tuple[str, ...] = ()

    @property
    def policy(self) -> str:
        return ",".join(self.policies)


@dataclass(frozen=True)
class Facts:
    """One grant as Cedar sees it (built by provisioning.policy_gate from the request and the host)."""

    org_id: str
    command: str
    user: str
    exists: bool
    uid: int
    managed: bool
    system: bool
    groups: tuple[str, ...]
    context: dict[str, object] = field(default_factory=dict)

    def request(self) -> dict[str, object]:
        return {
            "principal": _uid("Backend", self.org_id),
            "action": _uid("Action", self.command),
            "resource": _uid("User", self.user),
            "context": self.context,
        }

    def resource_attributes(self) -> dict[str, object]:
        return {
            "name": self.user,
            "exists": self.exists,
            "uid": self.uid,
            "managed": self.managed,
            "system": self.system,
            "groups": list(self.groups),
        }

    def entities(self) -> list[dict[str, object]]:
        user: dict[str, object] = {
            "uid": {"type": "P0::User", "id": self.user},
            "attrs": self.resource_attributes(),
            "parents": [{"type": "P0::Group", "id": group} for group in self.groups],
        }
        groups: list[dict[str, object]] = [
            {"uid": {"type": "P0::Group", "id": g}, "attrs": {}, "parents": []} for g in self.groups
        ]
        backend: dict[str, object] = {"uid": {"type": "P0::Backend", "id": self.org_id}, "attrs": {}, "parents": []}
        return [user, backend, *groups]


def _uid(kind: str, name: str) -> str:
    return entity_uid(f"P0::{kind}", name)


def entity_uid(entity_type: str, name: str) -> str:
    """A Cedar entity literal; the id is a Cedar string, so quote and escape it (names are validated, org ids and
    UCAN issuers not)."""
    escaped = name.replace("\\", "\\\\").replace('"', '\\"')
    return f'{entity_type}::"{escaped}"'


@dataclass(frozen=True)
class LocalPolicy:
    text: str
    source: str  # the file, or BUILTIN_SOURCE
    ids: dict[str, str]  # cedar's "policyN" -> "@id" or "<file>:<line>"
    policy_set: cedarpy.PolicySet
    lines: dict[str, int] = field(default_factory=dict)  # id -> the line its policy starts on
    schema: cedarpy.Schema = PARSED_SCHEMA  # what it was validated against, and requests are judged against

    def where(self, policy_id: str) -> str:
        line = self.lines.get(policy_id)
        return f"{policy_id} ({self.source}:{line})" if line else policy_id

    def evaluate(self, facts: Facts) -> Decision:
        return self.decide(facts.request(), facts.entities())

    def decide(self, request: dict[str, object], entities: list[dict[str, object]]) -> Decision:
        """One Cedar request against this policy set and its schema; an evaluation error denies."""
        result = cedarpy.is_authorized(request, self.policy_set, entities, self.schema)
        reasons = tuple(self.ids.get(r, r) for r in result.diagnostics.reasons)
        errors = tuple(str(e) for e in result.diagnostics.errors)
        if errors:
            failing = tuple(name for raw, name in self.ids.items() if f"`{raw}`" in " ".join(errors)) or ("error",)
            return Decision(False, failing, f"policy evaluation failed ({'; '.join(errors)}), denying", errors)
        if result.allowed:
            return Decision(True, reasons, f"allowed by {', '.join(reasons)}")
        if reasons:
            return Decision(False, reasons, f"forbidden by {', '.join(reasons)}")
        return Decision(
            False,
            (NO_PERMIT,),
            f"no permit policy matches this request ({NO_PERMIT}: Cedar denies what no policy permits)",
        )


def compile_policy(
    text: str, source: str, *, schema: cedarpy.Schema = PARSED_SCHEMA, empty_allowed: bool = False
) -> LocalPolicy:
    """Parse and validate `text` against `schema`; every error names `source` and the line of the policy at fault.

    `empty_allowed`: a text without any policy (comments only) compiles to a set that denies everything; the main
    policy refuses that (it would deny every grant), the agent-access policy is exactly that by default."""
    statements = split_statements(text)
    for line, statement in statements:  # one at a time: cedarpy's parse errors carry no position
        try:
            cedarpy.policies_to_json_str(statement)
        except ValueError as exc:
            raise PolicyError(f"{source}:{line}: {exc} (the policy starting on this line does not parse)") from exc
    if not statements and not empty_allowed:
        raise PolicyError(f"{source}: no policies (an empty policy denies every grant; write `forbid` rules instead)")
    validation = cedarpy.validate_policies(text, schema)
    # The @id annotations, from Cedar's own JSON form of the policies (ValidationResult does not carry them).
    annotations = {
        raw: str(body.get("annotations", {}).get("id", ""))
        for raw, body in json.loads(cedarpy.policies_to_json_str(text))["staticPolicies"].items()
    }
    ids = {f"policy{n}": annotations.get(f"policy{n}") or f"{source}:{line}" for n, (line, _) in enumerate(statements)}
    if not validation.validation_passed:
        first = validation.errors[0]
        line = statements[int(first.policy_id.removeprefix("policy"))][0] if first.policy_id else 0
        details = "; ".join(str(e.error) for e in validation.errors)
        for raw, name in ids.items():  # Cedar says `policy3`; the operator knows the @id or the line
            details = details.replace(f"`{raw}`", f"`{name}`")
        raise PolicyError(f"{source}:{line}: policy {ids.get(first.policy_id, '?')} does not validate: {details}")
    lines = {ids[f"policy{n}"]: line for n, (line, _) in enumerate(statements)}
    return LocalPolicy(text, source, ids, cedarpy.PolicySet.from_str(text), lines, schema)


def split_statements(text: str) -> list[tuple[int, str]]:
    """Each policy with the line it starts on (annotations included), skipping comments and strings' semicolons."""
    statements: list[tuple[int, str]] = []
    start: int | None = None
    start_line = line = 1
    index, length = 0, len(text)
    while index < length:
        char = text[index]
        if char == "/" and text.startswith("//", index):
            end = text.find("\n", index)
            index = length if end == -1 else end
            continue
        if char == "\n":
            line += 1
        elif not char.isspace() and start is None:
            start, start_line = index, line
        if char == '"':
            index += 1
            while index < length and text[index] != '"':
                line += text[index] == "\n"
                index += 2 if text[index] == "\\" else 1
        elif char == ";" and start is not None:
            statements.append((start_line, text[start : index + 1]))
            start = None
        index += 1
    if start is not None:  # a last policy without its semicolon: let the parser say what is missing
        statements.append((start_line, text[start:]))
    return statements
