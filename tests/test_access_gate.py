"""The agent-access decision (agent_access/gate.py), pure: real keys and signatures (minting), the real starter
policies compiled by the real loader, accounts built by hand. Each refusal is checked by its kind and its text,
and the order of the checks by requests that fail two of them."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from access_tokens import AUDIENCE, HOST, NOW, READ_APP, issuer_id, key, trust, ucan
from p0_ssh_agent.agent_access.access_model import (
    AccessCommand,
    Grant,
    Operation,
    Refusal,
    RefusalKind,
    TargetAccount,
)
from p0_ssh_agent.agent_access.access_policy import AccessPolicy, compile_access_policy
from p0_ssh_agent.agent_access.gate import Allowed, GateFacts, decide, own_place
from p0_ssh_agent.agent_access.minting import mint_cosignature, mint_ucan

STARTERS = Path(__file__).resolve().parents[1] / "docs" / "policies" / "agent-access"
DEPLOY = TargetAccount("deploy", 1001, 1001, "/home/deploy", "/bin/bash", ("deploy",), False, False)
ALL = Grant("ssh/*", HOST, "deploy", "/var/www/app")


def policy(*names: str, extra: str = "") -> AccessPolicy:
    text = "\n".join((STARTERS / name).read_text() for name in names) + extra
    return compile_access_policy(text, "test.cedar")


PERMIT_ALL = policy(extra='@id("everything")\npermit (principal, action, resource);\n')
# The deploy bot's policy, for ops-01.example.com: uploads under /var/www/app, never exec.
UPLOAD = policy("ssh-sftp-upload.cedar")


def facts(**changes: object) -> GateFacts:
    base = GateFacts(
        enabled=True,
        listed=("deploy",),
        account=DEPLOY,
        trust=trust(),
        policy=PERMIT_ALL,
        hostname=HOST,
        now=NOW,
        own_directories=("/data/p0-state",),
        own_files=("/var/audit/agent.jsonl",),
    )
    return replace(base, **changes)  # type: ignore[arg-type]


def op(command: AccessCommand, *paths: str, token: str | None = None, **fields: object) -> Operation:
    return Operation(
        command,
        "req-0001",
        "deploy",
        HOST,
        paths,
        token or ucan(grants=(ALL,)),
        **fields,  # type: ignore[arg-type]
    )


def cosigned(
    operation: Operation, *, approver: str = "alice", algorithm: str = "ES256", **options: object
) -> Operation:
    signature = mint_cosignature(
        key(approver, algorithm),
        algorithm=algorithm,
        key_id=approver,
        op=operation,
        audience=AUDIENCE,
        ucan_token=operation.ucan,
        now=NOW,
        **options,  # type: ignore[arg-type]
    )
    return replace(operation, cosignature=signature)


def refusal(verdict: Allowed | Refusal) -> tuple[RefusalKind, str]:
    assert isinstance(verdict, Refusal), verdict
    return verdict.kind, verdict.message


def test_an_allowed_read_names_the_grant_and_the_policies() -> None:
    verdict = decide(op(AccessCommand.FILE_READ, "/var/www/app/index.html", token=ucan()), facts())
    assert isinstance(verdict, Allowed)
    assert verdict.grant == READ_APP and verdict.prefix == "/var/www/app"
    assert verdict.capability.issuer == issuer_id("EdDSA") and verdict.policies == ("everything",)
    assert (verdict.cosigner, verdict.approver, verdict.jti) == (False, "", "")


def test_the_switch_and_the_account_come_before_the_capability() -> None:
    forged = op(AccessCommand.FILE_READ, "/var/www/app/a", token="e30.e30.c2ln")  # would be CAPABILITY
    assert refusal(decide(forged, facts(enabled=False))) == (
        RefusalKind.DISABLED,
        "agent access is off (agentAccess: false)",
    )
    kind, message = refusal(decide(forged, facts(listed=("other",))))
    assert kind is RefusalKind.DISABLED and "not in agentAccess" in message
    root = replace(DEPLOY, uid=0)
    assert refusal(decide(forged, facts(account=root)))[0] is RefusalKind.ACCOUNT
    assert refusal(decide(forged, facts(account=None)))[0] is RefusalKind.ACCOUNT
    assert refusal(decide(forged, facts(account=replace(DEPLOY, groups=("deploy", "docker")))))[0] is (
        RefusalKind.ACCOUNT
    )


@pytest.mark.parametrize(
    ("token", "words"),
    [
        (ucan(name="stranger"), "is not a configured issuer"),  # forged: signed by a key this host does not list
        (ucan(now=NOW - 4000), "expired"),
        (
            mint_ucan(
                key("issuer", "EdDSA"),
                algorithm="EdDSA",
                issuer=issuer_id("EdDSA"),
                audience="did:web:other.example.com",
                grants=(ALL,),
                now=NOW,
            ),
            "audience is not this host",
        ),
        (ucan(proofs=("e30.e30.c2ln",)), "delegation chains are refused"),
    ],
)
def test_a_ucan_that_does_not_verify_is_capability_rejected(token: str, words: str) -> None:
    kind, message = refusal(decide(op(AccessCommand.FILE_READ, "/var/www/app/a", token=token), facts()))
    assert kind is RefusalKind.CAPABILITY and words in message and message.startswith("capability rejected: ")
    assert token not in message


def test_host_constraint_and_paths_outside_are_refused_on_components() -> None:
    read = op(AccessCommand.FILE_READ, "/var/www/app/a", token=ucan())
    kind, message = refusal(decide(replace(read, host="db-01.example.com"), facts()))
    assert kind is RefusalKind.OUTSIDE and "names host db-01.example.com, this is ops-01.example.com" in message
    other_host = ucan(grants=(Grant("ssh/file/read", "db-01.example.com", "deploy", "/var/www/app"),))
    kind, message = refusal(decide(op(AccessCommand.FILE_READ, "/var/www/app/a", token=other_host), facts()))
    assert (kind, message) == (
        RefusalKind.OUTSIDE,
        "outside the capability: it grants ssh/file/read on no host named ops-01.example.com",
    )
    sibling = op(AccessCommand.FILE_READ, "/var/www/app2", token=ucan())
    assert refusal(decide(sibling, facts())) == (
        RefusalKind.OUTSIDE,
        "outside the capability: /var/www/app2 is not under /var/www/app",
    )
    write = op(AccessCommand.FILE_WRITE, "/var/www/app/a", token=ucan(), data=b"x", offset=0)
    kind, message = refusal(decide(write, facts()))
    assert (kind, message) == (RefusalKind.OUTSIDE, "outside the capability: it grants no ssh/file/write")
    other_user = ucan(grants=(replace(READ_APP, username="www-data"),))
    kind, message = refusal(decide(op(AccessCommand.FILE_READ, "/var/www/app/a", token=other_user), facts()))
    assert kind is RefusalKind.OUTSIDE and "to no account named deploy" in message


def test_a_prefix_at_above_or_beneath_the_agents_own_places_is_refused() -> None:
    assert own_place("/var/lib", ("/var/lib/p0-state",), ()) == "directory /var/lib/p0-state"
    assert own_place("/var/lib/p0-state/keys", ("/var/lib/p0-state",), ()) == "directory /var/lib/p0-state"
    assert own_place("/var/lib/p0-statex", ("/var/lib/p0-state",), ()) == ""
    assert own_place("/srv", (), ("/srv/audit/agent.jsonl",)) == "file /srv/audit/agent.jsonl"
    assert own_place("/srv/audit/other", (), ("/srv/audit/agent.jsonl",)) == ""
    for prefix, own in (("/data", "directory /data/p0-state"), ("/var/audit", "file /var/audit/agent.jsonl")):
        grant = Grant("ssh/file/read", HOST, "deploy", prefix)
        read = op(AccessCommand.FILE_READ, f"{prefix}/x", token=ucan(grants=(grant,)))
        kind, message = refusal(decide(read, facts()))
        assert kind is RefusalKind.OUTSIDE and f"lies beneath the agent's own {own}" in message


def test_exec_always_needs_a_cosignature_whatever_the_policy_says() -> None:
    execute = op(AccessCommand.EXEC, argv=("/usr/bin/id",), cwd="/var/www/app")
    kind, message = refusal(decide(execute, facts(policy=PERMIT_ALL)))
    assert kind is RefusalKind.STEP_UP and "ssh_exec needs a cosignature" in message
    verdict = decide(cosigned(execute), facts())
    assert isinstance(verdict, Allowed) and verdict.cosigner and verdict.approver == "alice"
    assert len(verdict.jti) >= 16 and verdict.jti_expires > NOW


@pytest.mark.parametrize(
    ("forge", "words"),
    [
        (lambda o: cosigned(replace(o, argv=("/bin/sh", "-c", "id"))), "digest does not match"),  # another command
        (lambda o: cosigned(replace(o, command=AccessCommand.FILE_READ, argv=())), "command does not match"),
        (lambda o: cosigned(o, approver="mallory"), "not a configured approver"),
        (lambda o: cosigned(o, lifetime_seconds=3600), "lifetime"),
        (lambda o: cosigned(o, claim_overrides={"aud": "did:web:db-01"}), "aud does not match"),
    ],
)
def test_a_cosignature_for_something_else_is_refused(forge: object, words: str) -> None:
    execute = op(AccessCommand.EXEC, argv=("/usr/bin/id",), cwd="/var/www/app")
    assert callable(forge)
    forged = forge(execute)
    kind, message = refusal(decide(replace(execute, cosignature=forged.cosignature), facts()))
    assert kind is RefusalKind.STEP_UP and words in message and forged.cosignature not in message


def test_the_issuer_cannot_cosign_its_own_ucan() -> None:
    execute = op(AccessCommand.EXEC, argv=("/usr/bin/id",))
    own = mint_cosignature(
        key("issuer", "EdDSA"),
        algorithm="EdDSA",
        key_id=issuer_id("EdDSA"),
        op=execute,
        audience=AUDIENCE,
        ucan_token=execute.ucan,
        now=NOW,
    )
    kind, message = refusal(decide(replace(execute, cosignature=own), facts()))
    assert kind is RefusalKind.STEP_UP and "an approver must sign" in message


def test_policy_denials_name_the_policy() -> None:
    grants = (Grant("ssh/*", HOST, "deploy", "/var/www/app"),)
    token = ucan(grants=grants)
    upload = facts(policy=UPLOAD)
    execute = cosigned(op(AccessCommand.EXEC, argv=("/usr/bin/id",), token=token))
    verdict = decide(execute, upload)
    assert isinstance(verdict, Refusal) and verdict.kind is RefusalKind.POLICY
    assert verdict.message == "denied by policy ssh:sftp-upload:no-exec (forbid)"
    assert verdict.policy == "ssh:sftp-upload:no-exec"
    delete = op(AccessCommand.FILE_DELETE, "/var/www/app/a", token=token)
    assert refusal(decide(delete, upload)) == (
        RefusalKind.POLICY,
        "denied by policy default-deny (no agent-access policy permits /ssh/file/delete)",
    )
    allowed = decide(op(AccessCommand.FILE_WRITE, "/var/www/app/a", token=token, data=b"x", offset=0), upload)
    assert isinstance(allowed, Allowed) and allowed.policies == ("ssh:sftp-upload",)


def test_a_move_is_judged_on_both_paths_and_the_denial_names_the_destination() -> None:
    full = policy("ssh-host-subdir-full.cedar")
    recovery = replace(DEPLOY, name="recovery")
    grant = Grant("ssh/*", HOST, "recovery", "/srv")
    move = replace(
        op(AccessCommand.FILE_MOVE, "/srv/app/a", "/srv/other/a", token=ucan(grants=(grant,))), username="recovery"
    )
    kind, message = refusal(decide(move, facts(policy=full, account=recovery, listed=("recovery",))))
    assert kind is RefusalKind.POLICY and message.endswith("for /srv/other/a")
