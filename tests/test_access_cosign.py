"""The step-up cosignature (agent_access/cosign.py) with real keys: what it binds, who may sign it, for how long."""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import replace
from typing import Any

import pytest

from access_tokens import AUDIENCE, HOST, NOW, exec_op, issuer_id, key, trust, ucan
from p0_ssh_agent.agent_access.access_model import AccessCommand, Capability, Grant, Operation, TrustedKey, TrustKeys
from p0_ssh_agent.agent_access.capability import verify_ucan
from p0_ssh_agent.agent_access.cosign import (
    COSIGN_SKEW_SECONDS,
    MAX_COSIGN_BYTES,
    MAX_COSIGN_SECONDS,
    CosignCheck,
    CosignRejected,
    binding_digest,
    check_cosignature,
    expected_claims,
)
from p0_ssh_agent.agent_access.jws_compact import PrivateKey, sign_compact
from p0_ssh_agent.agent_access.minting import OMIT, mint_cosignature

KEYS = trust(approvers=[("alice", "ES256"), ("bob", "EdDSA"), ("carol", "ES384")])
TOKEN = ucan(grants=[Grant("ssh/*", HOST, "deploy", "/var/www/app")])
CAPABILITY = verify_ucan(TOKEN, KEYS, audience=AUDIENCE, now=NOW)
JTI = "jti-0123456789abcdef"
APPROVER_ALGORITHM = {"alice": "ES256", "bob": "EdDSA", "carol": "ES384"}


def cosign(
    op: Operation,
    *,
    approver: str = "alice",
    algorithm: str = "",
    private_key: PrivateKey | None = None,
    audience: str = AUDIENCE,
    ucan_token: str = TOKEN,
    now: int = NOW,
    lifetime_seconds: int = 120,
    jti: str | None = JTI,
    claim_overrides: dict[str, object] | None = None,
) -> str:
    algorithm = algorithm or APPROVER_ALGORITHM.get(approver, "ES256")
    return mint_cosignature(
        private_key or key(approver, algorithm),
        algorithm=algorithm,
        key_id=approver,
        op=op,
        audience=audience,
        ucan_token=ucan_token,
        now=now,
        lifetime_seconds=lifetime_seconds,
        jti=jti,
        claim_overrides=claim_overrides,
    )


def check(op: Operation, *, now: int = NOW, keys: TrustKeys = KEYS, capability: Capability = CAPABILITY) -> CosignCheck:
    return check_cosignature(op, keys=keys, audience=AUDIENCE, capability=capability, now=now)


def refused(op: Operation, words: str, *, now: int = NOW, keys: TrustKeys = KEYS) -> None:
    with pytest.raises(CosignRejected) as info:
        check(op, now=now, keys=keys)
    message = str(info.value)
    assert words in message, message
    for part in op.cosignature.split("."):
        assert len(part) < 8 or part not in message


def signed(op: Operation, **options: Any) -> Operation:
    """`op` carrying a cosignature of itself (options change how it is minted)."""
    return replace(op, cosignature=cosign(op, **options))


EXEC = exec_op(TOKEN)
WRITE = replace(
    EXEC, command=AccessCommand.FILE_WRITE, paths=("/var/www/app/index.html",), argv=(), data=b"<h1>v2</h1>"
)
MOVE = replace(EXEC, command=AccessCommand.FILE_MOVE, paths=("/var/www/app/a", "/var/www/app/b"), argv=())


# --- what passes -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("approver", ["alice", "bob", "carol"])
def test_a_valid_cosignature_passes_for_each_algorithm(approver: str) -> None:
    result = check(signed(EXEC, approver=approver, lifetime_seconds=120))
    assert result == CosignCheck(approver=approver, jti=JTI, expires=NOW + 120 + COSIGN_SKEW_SECONDS)


def test_the_bound_claims_are_exactly_the_operations() -> None:
    claims = expected_claims(MOVE, audience=AUDIENCE, ucan_digest=CAPABILITY.digest)
    assert claims == {
        "aud": AUDIENCE,
        "requestId": "req-0001",
        "command": "ssh_file_move",
        "username": "deploy",
        "paths": ["/var/www/app/a", "/var/www/app/b"],
        "digest": "sha256:" + hashlib.sha256(b"").hexdigest(),
        "ucan": "sha256:" + hashlib.sha256(TOKEN.encode()).hexdigest(),
    }


def test_the_binding_digest_is_the_content_or_the_command_line() -> None:
    assert binding_digest(WRITE) == "sha256:" + hashlib.sha256(b"<h1>v2</h1>").hexdigest()
    create = replace(WRITE, command=AccessCommand.FILE_CREATE, data=b"")
    assert binding_digest(create) == "sha256:" + hashlib.sha256(b"").hexdigest()
    command_line = replace(EXEC, argv=("/usr/bin/echo", "é"), cwd="/var/www/app/bin")
    canonical = '{"argv":["/usr/bin/echo","é"],"cwd":"/var/www/app/bin"}'.encode()
    assert binding_digest(command_line) == "sha256:" + hashlib.sha256(canonical).hexdigest()
    # A delete carries nothing beyond its paths, whatever stray data the operation holds.
    assert binding_digest(replace(MOVE, command=AccessCommand.FILE_DELETE, data=b"x")) == binding_digest(MOVE)


# --- what it binds ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("signed_for", "words"),
    [
        (replace(EXEC, command=AccessCommand.DIR_DELETE_RECURSIVE, argv=()), "command"),
        (replace(EXEC, request_id="req-0002"), "requestId"),
        (replace(EXEC, username="ops"), "username"),
        (replace(EXEC, paths=("/var/www/app/bin",)), "paths"),
        (replace(EXEC, argv=("/usr/bin/rm", "-rf", "/var/www/app")), "digest"),
        (replace(EXEC, argv=("/usr/bin/true", "")), "digest"),
        (replace(EXEC, cwd="/var/www/app/bin"), "digest"),
    ],
)
def test_a_cosignature_for_another_exec_is_refused(signed_for: Operation, words: str) -> None:
    refused(replace(EXEC, cosignature=cosign(signed_for)), f"the cosignature's {words} does not match this request")


def test_a_cosignature_for_other_content_is_refused() -> None:
    other = cosign(replace(WRITE, data=b"<h1>evil</h1>"))
    refused(replace(WRITE, cosignature=other), "digest does not match")
    appended = cosign(replace(WRITE, data=WRITE.data + b"\n"))
    refused(replace(WRITE, cosignature=appended), "digest does not match")


def test_every_path_of_a_move_is_bound() -> None:
    assert check(signed(MOVE)).approver == "alice"
    for paths in [("/var/www/app/a", "/var/www/app/c"), ("/var/www/app/a",), ("/var/www/app/b", "/var/www/app/a")]:
        refused(replace(MOVE, cosignature=cosign(replace(MOVE, paths=paths))), "paths does not match")


def test_a_cosignature_for_another_ucan_or_audience_is_refused() -> None:
    other_ucan = ucan(grants=[Grant("ssh/exec", HOST, "deploy", "/var/www/app")])
    refused(replace(EXEC, cosignature=cosign(EXEC, ucan_token=other_ucan)), "ucan does not match")
    refused(replace(EXEC, cosignature=cosign(EXEC, audience="did:web:ops-02.example.com")), "aud does not match")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"paths": "/var/www/app"}, "paths does not match"),
        ({"paths": [["/var/www/app"]]}, "paths does not match"),
        ({"command": OMIT}, "command does not match"),
        ({"cosigner": True}, "claims this agent does not accept: cosigner"),
        ({"host": HOST}, "does not accept: host"),
    ],
)
def test_claims_are_compared_strictly(overrides: dict[str, object], words: str) -> None:
    refused(signed(EXEC, claim_overrides=overrides), words)


# --- who signs -------------------------------------------------------------------------------------------------


def test_the_issuers_key_cannot_cosign() -> None:
    issuer_key = key("issuer", "EdDSA")
    # As the issuer, by its own id.
    refused(signed(EXEC, approver=issuer_id("EdDSA"), algorithm="EdDSA", private_key=issuer_key), "issuer")
    # As an approver's kid, with the issuer's key: the signature is not the approver's.
    refused(signed(EXEC, approver="bob", private_key=issuer_key), "signature does not verify")


def test_an_approver_that_is_the_capabilitys_issuer_is_refused_even_if_misconfigured() -> None:
    # trust_keys.py refuses such a file; the check does not rely on it, nor on the issuer being listed alongside.
    issuer = CAPABILITY.issuer
    approver = TrustedKey(issuer, "EdDSA", key("issuer", "EdDSA").public_key())
    op = signed(EXEC, approver=issuer, algorithm="EdDSA", private_key=key("issuer", "EdDSA"))
    for keys in [TrustKeys(KEYS.issuers, {issuer: approver}), TrustKeys({}, {issuer: approver})]:
        refused(op, "the UCAN's issuer or another issuer", keys=keys)


def test_an_unknown_kid_or_another_key_is_refused() -> None:
    refused(signed(EXEC, approver="mallory", algorithm="ES256"), "kid is not a configured approver")
    refused(signed(EXEC, approver="alice", private_key=key("mallory", "ES256")), "signature does not verify")
    stranger = key("stranger", "ES384")
    refused(
        signed(EXEC, approver="alice", algorithm="ES384", private_key=stranger),
        "signed with ES384; its approver is configured for ES256",
    )


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "none", "kid": "alice", "typ": "p0-cosign+jwt"},
        {"alg": "ES256", "kid": "alice", "typ": "JWT"},
        {"alg": "ES256", "kid": "alice"},
        {"alg": "ES256", "kid": "alice", "typ": "p0-cosign+jwt", "jku": "https://attacker.example/keys"},
        {"alg": "ES256", "kid": ["alice"], "typ": "p0-cosign+jwt"},
    ],
)
def test_the_header_is_exactly_alg_kid_typ(header: dict[str, object]) -> None:
    payload = cosign(EXEC).split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    refused(replace(EXEC, cosignature=sign_compact(header, claims, key("alice", "ES256"), "ES256")), "the cosignature")


# --- time and jti ----------------------------------------------------------------------------------------------


def test_the_validity_window_with_its_skew() -> None:
    op = signed(EXEC, lifetime_seconds=120)
    assert check(op, now=NOW - COSIGN_SKEW_SECONDS).jti == JTI
    assert check(op, now=NOW + 120 + COSIGN_SKEW_SECONDS - 1).jti == JTI
    refused(op, "not yet valid", now=NOW - COSIGN_SKEW_SECONDS - 1)
    refused(op, "expired 60 s ago", now=NOW + 120 + COSIGN_SKEW_SECONDS)


def test_the_lifetime_is_at_most_five_minutes() -> None:
    assert check(signed(EXEC, lifetime_seconds=MAX_COSIGN_SECONDS)).expires == NOW + 300 + COSIGN_SKEW_SECONDS
    refused(signed(EXEC, lifetime_seconds=MAX_COSIGN_SECONDS + 1), "between 1 and 300 s")
    refused(signed(EXEC, lifetime_seconds=0), "between 1 and 300 s")
    refused(signed(EXEC, lifetime_seconds=-10), "between 1 and 300 s")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"iat": None}, "iat must be an integer"),
        ({"iat": OMIT}, "iat must be an integer"),
        ({"iat": True}, "iat must be an integer"),
        ({"exp": float(NOW + 60)}, "exp must be an integer"),
        ({"exp": OMIT}, "exp must be an integer"),
    ],
)
def test_times_must_be_integers(overrides: dict[str, object], words: str) -> None:
    refused(signed(EXEC, claim_overrides=overrides), words)


@pytest.mark.parametrize(
    "jti", ["a" * 15, "a" * 129, "a" * 16 + "!", "a" * 16 + "\n", "é" * 16, "", 1234567890123456789]
)
def test_a_bad_jti_is_refused(jti: object) -> None:
    refused(signed(EXEC, claim_overrides={"jti": jti}), "jti must be 16 to 128 characters")


def test_a_jti_at_the_bounds_passes() -> None:
    for jti in ["A" * 16, "z-_9" * 32]:
        assert check(signed(EXEC, jti=jti)).jti == jti


def test_a_minted_jti_is_random_and_acceptable() -> None:
    first, second = check(signed(EXEC, jti=None)).jti, check(signed(EXEC, jti=None)).jti
    assert first != second


# --- the text --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("text", ["", "true", "a.b.c", "cosigned", '{"cosigner": true}'])
def test_no_cosignature_or_junk_is_refused(text: str) -> None:
    refused(replace(EXEC, cosignature=text), "the cosignature is malformed")


def test_an_oversize_cosignature_is_refused() -> None:
    big = signed(EXEC, claim_overrides={"note": "x" * MAX_COSIGN_BYTES})
    refused(big, f"longer than {MAX_COSIGN_BYTES} bytes")
