"""The agent's identity: loading JWK key files (and refusing unsafe or wrong ones), RFC 7638 thumbprints, and
verify_token against tokens built without python-jose.

The braekhus-style independent verification of the agent's own tokens and the golden header/claims test live in
test_token_independent.py; this module covers the other direction: tokens signed here with `cryptography` directly
(raw R||S, RFC 7518 §3.4) that verify_token must accept or reject, plus the key loader's refusals.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature

from p0_ssh_agent.errors import AgentError, KeyFileError
from p0_ssh_agent.identity.signing_key import (
    AgentKey,
    generate_keys,
    jwk_thumbprint,
    load_private_key,
    load_public_jwk,
    public_key_from_jwk,
)
from p0_ssh_agent.identity.token import TokenRejected, make_token, unverified_subject, verify_token

FIXTURES = Path(__file__).parent / "fixtures"
CLIENT_ID = "acme:host-1:ssh"
NOW = 1_790_000_000


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def coordinate(value: int) -> str:
    return b64(value.to_bytes(48, "big"))


def jwk_of(key: ec.EllipticCurvePrivateKey) -> dict[str, str]:
    """A private JWK built here, not by the agent's code."""
    numbers = key.private_numbers()
    return {
        "kty": "EC",
        "crv": "P-384",
        "x": coordinate(numbers.public_numbers.x),
        "y": coordinate(numbers.public_numbers.y),
        "d": coordinate(numbers.private_value),
    }


def write_key_dir(key_dir: Path, private: Mapping[str, object], public: Mapping[str, object] | None = None) -> Path:
    key_dir.mkdir(mode=0o700)
    private_path = key_dir / "jwk.private.json"
    private_path.write_text(json.dumps(private))
    private_path.chmod(0o600)
    public = public if public is not None else {k: v for k, v in private.items() if k != "d"}
    (key_dir / "jwk.public.json").write_text(json.dumps(public))
    return key_dir


def sign_es384(key: ec.EllipticCurvePrivateKey, header: Mapping[str, object], claims: Mapping[str, object]) -> str:
    """A JWS made with cryptography directly: DER signature -> raw R||S, 48 bytes each."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
    r, s = decode_dss_signature(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384())))
    return f"{signing_input}.{b64(r.to_bytes(48, 'big') + s.to_bytes(48, 'big'))}"


def good_claims(**changes: object) -> dict[str, object]:
    claims: dict[str, object] = {
        "iss": "kd-client",
        "sub": CLIENT_ID,
        "aud": "p0.dev",
        "iat": NOW - 30,
        "exp": NOW + 300,
        "tunnel-id": "my-tunnel-id",
    }
    claims.update(changes)
    return claims


HEADER: dict[str, object] = {"alg": "ES384", "typ": "JWT"}


@pytest.fixture
def agent_key(tmp_path: Path) -> AgentKey:
    return generate_keys(tmp_path / "keys")


@pytest.fixture
def public_jwk(agent_key: AgentKey) -> dict[str, str]:
    return load_public_jwk(agent_key.key_dir)


# --- keys on disk -------------------------------------------------------------------------------------------------


def test_generated_files_are_a_matching_p384_pair_and_the_public_file_holds_no_secret(agent_key: AgentKey) -> None:
    private = json.loads((agent_key.key_dir / "jwk.private.json").read_text())
    public = json.loads((agent_key.key_dir / "jwk.public.json").read_text())
    assert public == {k: v for k, v in private.items() if k != "d"}
    assert set(public) == {"kty", "crv", "x", "y"} and (public["kty"], public["crv"]) == ("EC", "P-384")
    rebuilt = ec.derive_private_key(int.from_bytes(unb64(private["d"]), "big"), ec.SECP384R1())
    assert coordinate(rebuilt.public_key().public_numbers().x) == public["x"]
    assert coordinate(rebuilt.public_key().public_numbers().y) == public["y"]
    loaded = load_private_key(agent_key.key_dir)
    assert loaded.private_key.private_numbers() == agent_key.private_key.private_numbers()
    assert private["d"] not in repr(loaded)


def test_the_golden_fixture_loads_with_the_thumbprint_computed_by_hand(tmp_path: Path) -> None:
    private = json.loads((FIXTURES / "golden.jwk.private.json").read_text())
    key = load_private_key(write_key_dir(tmp_path / "keys", private))
    # RFC 7638 §3: the required EC members in lexical order, no whitespace, SHA-256, base64url.
    canonical = '{"crv":"P-384","kty":"EC","x":"' + private["x"] + '","y":"' + private["y"] + '"}'
    assert key.thumbprint == b64(hashlib.sha256(canonical.encode()).digest())
    assert key.public_jwk == json.loads((FIXTURES / "golden.jwk.public.json").read_text())


def test_thumbprint_ignores_members_outside_rfc7638_and_order() -> None:
    jwk = json.loads((FIXTURES / "golden.jwk.public.json").read_text())
    shuffled = {"y": jwk["y"], "kid": "anything", "x": jwk["x"], "use": "sig", "crv": "P-384", "kty": "EC"}
    assert jwk_thumbprint(shuffled) == jwk_thumbprint(jwk)
    assert jwk_thumbprint({**jwk, "x": jwk["y"], "y": jwk["x"]}) != jwk_thumbprint(jwk)


@pytest.mark.parametrize("mode", [0o644, 0o640, 0o604, 0o660, 0o606, 0o601])
def test_a_private_key_group_or_others_can_touch_is_refused_with_the_chmod(agent_key: AgentKey, mode: int) -> None:
    path = agent_key.key_dir / "jwk.private.json"
    path.chmod(mode)
    with pytest.raises(KeyFileError) as refused:
        load_private_key(agent_key.key_dir)
    assert f"chmod 600 {path}" in str(refused.value)
    path.chmod(0o400)  # stricter than 0600 is fine
    assert load_private_key(agent_key.key_dir).thumbprint == agent_key.thumbprint


def test_missing_keys_name_the_keygen_command(tmp_path: Path) -> None:
    with pytest.raises(KeyFileError, match=f"p0-ssh-agent keygen --key-path {tmp_path}"):
        load_private_key(tmp_path)
    with pytest.raises(KeyFileError, match=f"p0-ssh-agent keygen --key-path {tmp_path}"):
        load_public_jwk(tmp_path)


def other_curve_jwk() -> dict[str, object]:
    numbers = ec.generate_private_key(ec.SECP256R1()).private_numbers()
    x, y = numbers.public_numbers.x, numbers.public_numbers.y
    return {"kty": "EC", "crv": "P-256", "x": b64(x.to_bytes(32, "big")), "y": b64(y.to_bytes(32, "big"))}


def mismatched_d() -> dict[str, object]:
    return {
        **jwk_of(ec.generate_private_key(ec.SECP384R1())),
        "d": jwk_of(ec.generate_private_key(ec.SECP384R1()))["d"],
    }


def off_curve() -> dict[str, object]:
    jwk = jwk_of(ec.generate_private_key(ec.SECP384R1()))
    return {**jwk, "y": coordinate(int.from_bytes(unb64(jwk["y"]), "big") ^ 1)}


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("{not json", "not valid JSON"),
        ('["kty", "EC"]', "JSON object"),
        (lambda: {**other_curve_jwk(), "d": "AAAA"}, "P-384"),
        (lambda: {**jwk_of(ec.generate_private_key(ec.SECP384R1())), "kty": "RSA"}, "P-384"),
        (lambda: {**jwk_of(ec.generate_private_key(ec.SECP384R1())), "x": "AAAA"}, "48 bytes"),
        (lambda: {**jwk_of(ec.generate_private_key(ec.SECP384R1())), "x": 12}, "'x'"),
        (lambda: {**jwk_of(ec.generate_private_key(ec.SECP384R1())), "y": "!!!!"}, "'y'"),
        (off_curve, "not on the P-384 curve"),
        (mismatched_d, "'d' does not match"),
        (lambda: {k: v for k, v in jwk_of(ec.generate_private_key(ec.SECP384R1())).items() if k != "d"}, "'d'"),
        (lambda: {**jwk_of(ec.generate_private_key(ec.SECP384R1())), "d": coordinate(0)}, "'d'"),
    ],
    ids=[
        "malformed-json",
        "not-an-object",
        "wrong-curve",
        "wrong-kty",
        "short-x",
        "x-not-a-string",
        "y-not-base64url",
        "point-off-curve",
        "d-not-matching-x-y",
        "public-key-in-private-file",
        "d-zero",
    ],
)
def test_a_bad_private_key_file_is_refused_naming_the_file(tmp_path: Path, content: object, problem: str) -> None:
    key_dir = tmp_path / "keys"
    key_dir.mkdir(mode=0o700)
    path = key_dir / "jwk.private.json"
    value = content() if callable(content) else content
    path.write_text(value if isinstance(value, str) else json.dumps(value))
    path.chmod(0o600)
    with pytest.raises(KeyFileError) as refused:
        load_private_key(key_dir)
    message = str(refused.value)
    assert problem in message and str(path) in message
    if isinstance(value, dict) and isinstance(value.get("d"), str):
        assert value["d"] not in message  # never echo key material


def test_key_files_that_are_symlinks_or_directories_are_refused(agent_key: AgentKey, tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere.json"
    private = agent_key.key_dir / "jwk.private.json"
    shutil.move(private, elsewhere)
    private.symlink_to(elsewhere)
    with pytest.raises(KeyFileError, match="symlink"):
        load_private_key(agent_key.key_dir)
    private.unlink()
    private.mkdir(mode=0o700)
    with pytest.raises(KeyFileError, match="regular file"):
        load_private_key(agent_key.key_dir)
    public = agent_key.key_dir / "jwk.public.json"
    public.unlink()
    public.symlink_to(elsewhere)
    with pytest.raises(KeyFileError, match="symlink"):
        load_public_jwk(agent_key.key_dir)


def test_public_key_from_jwk_rebuilds_the_same_point(agent_key: AgentKey, public_jwk: dict[str, str]) -> None:
    rebuilt = public_key_from_jwk(public_jwk)
    assert rebuilt.public_numbers() == agent_key.private_key.public_key().public_numbers()
    with pytest.raises(KeyFileError, match="P-384"):
        public_key_from_jwk({**public_jwk, "crv": "P-521"})


# --- tokens: verify_token against tokens made without python-jose ------------------------------------------------


def test_verify_token_accepts_a_token_signed_without_jose(agent_key: AgentKey, public_jwk: dict[str, str]) -> None:
    token = sign_es384(agent_key.private_key, HEADER, good_claims())
    assert verify_token(token, public_jwk, client_id=CLIENT_ID, now=NOW + 60) == good_claims()
    assert unverified_subject(token) == CLIENT_ID


def test_verify_token_accepts_the_agents_own_token_until_exp(agent_key: AgentKey, public_jwk: dict[str, str]) -> None:
    token = make_token(agent_key, CLIENT_ID, now=NOW)
    assert verify_token(token, public_jwk, client_id=CLIENT_ID, now=NOW + 300)["sub"] == CLIENT_ID
    with pytest.raises(TokenRejected, match="expired"):
        verify_token(token, public_jwk, client_id=CLIENT_ID, now=NOW + 301)
    # The real clock: a token made now verifies now; one made an hour ago does not.
    assert verify_token(make_token(agent_key, CLIENT_ID), public_jwk, client_id=CLIENT_ID)["aud"] == "p0.dev"
    with pytest.raises(TokenRejected, match="expired"):
        verify_token(make_token(agent_key, CLIENT_ID, now=time.time() - 3600), public_jwk, client_id=CLIENT_ID)


def hs384_with_public_key_as_secret(public_jwk: dict[str, str]) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the (public) verification key."""
    signing_input = (
        f"{b64(json.dumps({'alg': 'HS384', 'typ': 'JWT'}).encode())}.{b64(json.dumps(good_claims()).encode())}"
    )
    secret = json.dumps(public_jwk).encode()
    return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha384).digest())}"


def alg_none() -> str:
    return f"{b64(json.dumps({'alg': 'none', 'typ': 'JWT'}).encode())}.{b64(json.dumps(good_claims()).encode())}."


def der_signature_token(key: ec.EllipticCurvePrivateKey) -> str:
    signing_input = f"{b64(json.dumps(HEADER).encode())}.{b64(json.dumps(good_claims()).encode())}"
    return f"{signing_input}.{b64(key.sign(signing_input.encode(), ec.ECDSA(hashes.SHA384())))}"


def tampered(token: str) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{b64(json.dumps(good_claims(sub='evil:host:ssh')).encode())}.{signature}"


@pytest.mark.parametrize(
    ("forge", "reason"),
    [
        (lambda key, jwk: sign_es384(key, HEADER, good_claims(sub="acme:other:ssh")), "subject"),
        (lambda key, jwk: sign_es384(key, HEADER, good_claims(aud="evil.dev")), "audience"),
        (lambda key, jwk: sign_es384(key, HEADER, {k: v for k, v in good_claims().items() if k != "aud"}), "aud"),
        (lambda key, jwk: sign_es384(key, HEADER, good_claims(aud=None)), "claim"),
        (lambda key, jwk: sign_es384(key, HEADER, {k: v for k, v in good_claims().items() if k != "sub"}), "sub"),
        (lambda key, jwk: sign_es384(key, HEADER, good_claims(exp=NOW - 1)), "expired"),
        (lambda key, jwk: sign_es384(key, HEADER, {k: v for k, v in good_claims().items() if k != "exp"}), "exp"),
        (lambda key, jwk: sign_es384(key, {"alg": "ES256", "typ": "JWT"}, good_claims()), "ES384"),
        (lambda key, jwk: alg_none(), "none"),
        (lambda key, jwk: hs384_with_public_key_as_secret(jwk), "HS384"),
        (lambda key, jwk: tampered(sign_es384(key, HEADER, good_claims())), "Signature verification failed"),
        (lambda key, jwk: sign_es384(ec.generate_private_key(ec.SECP384R1()), HEADER, good_claims()), "Signature"),
        (lambda key, jwk: der_signature_token(key), ""),
        (lambda key, jwk: "not-a-token", "malformed"),
    ],
    ids=[
        "wrong-sub",
        "wrong-aud",
        "no-aud",
        "null-aud",
        "no-sub",
        "expired",
        "no-exp",
        "es256-header",
        "alg-none",
        "hs384-public-key-secret",
        "tampered-payload",
        "other-key",
        "der-not-raw-signature",
        "garbage",
    ],
)
def test_verify_token_rejects(agent_key: AgentKey, public_jwk: dict[str, str], forge: object, reason: str) -> None:
    assert callable(forge)
    token = forge(agent_key.private_key, public_jwk)
    with pytest.raises(TokenRejected) as rejected:
        verify_token(token, public_jwk, client_id=CLIENT_ID, now=NOW + 60)
    assert reason in str(rejected.value)
    assert token not in str(rejected.value)  # a rejection is logged: it must not carry the token
    assert isinstance(rejected.value, AgentError)


def test_unverified_subject_of_garbage_is_none() -> None:
    assert unverified_subject("x.y.z") is None
    assert unverified_subject("") is None
    header = b64(json.dumps(HEADER).encode())
    assert unverified_subject(f"{header}.{b64(json.dumps({'sub': 7}).encode())}.sig") is None


def test_the_key_directory_is_left_without_temporary_files(agent_key: AgentKey) -> None:
    assert sorted(p.name for p in agent_key.key_dir.iterdir()) == ["jwk.private.json", "jwk.public.json"]
