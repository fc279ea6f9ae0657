"""The agent-access trust file (agent_access/trust_keys.py): real files in tmp_path, real keys."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from access_tokens import ALGORITHMS, AUDIENCE, NOW, issuer_id, key, ucan
from p0_ssh_agent.agent_access.capability import verify_ucan
from p0_ssh_agent.agent_access.jws_compact import b64url_encode
from p0_ssh_agent.agent_access.minting import base58btc, did_key_ed25519, public_jwk, trust_file_json
from p0_ssh_agent.agent_access.trust_keys import (
    DEFAULT_TRUST_KEYS_PATH,
    MAX_TRUST_FILE_BYTES,
    TrustKeysError,
    entry_lines,
    load_trust_keys,
)
from p0_ssh_agent.errors import ConfigError


def write(tmp_path: Path, document: object, mode: int = 0o644) -> Path:
    path = tmp_path / "agent-access-keys.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    path.chmod(mode)
    return path


def entry(key_id: str, algorithm: str, name: str | None = None, **jwk_members: object) -> dict[str, object]:
    jwk: dict[str, object] = {**public_jwk(key(name or key_id, algorithm)), **jwk_members}
    return {"id": key_id, "alg": algorithm, "jwk": jwk}


def refused(path: Path, words: str) -> TrustKeysError:
    with pytest.raises(TrustKeysError) as info:
        load_trust_keys(path)
    assert words in str(info.value), str(info.value)
    assert f"{path}:" in str(info.value)
    return info.value


def test_the_default_path_is_under_etc() -> None:
    assert Path("/etc/p0-ssh-agent/agent-access-keys.json") == DEFAULT_TRUST_KEYS_PATH


def test_a_file_from_trust_file_json_loads_and_its_issuers_verify(tmp_path: Path) -> None:
    issuers = [(issuer_id(algorithm), algorithm, key("issuer", algorithm)) for algorithm in ALGORITHMS]
    approvers = [("alice", "ES256", key("alice", "ES256")), ("bob", "EdDSA", key("bob", "EdDSA"))]
    text = trust_file_json(issuers, approvers)
    assert '"d"' not in text
    keys = load_trust_keys(write(tmp_path, text))
    assert sorted(keys.issuers) == sorted(issuer_id(algorithm) for algorithm in ALGORITHMS)
    assert {name: trusted.algorithm for name, trusted in keys.approvers.items()} == {"alice": "ES256", "bob": "EdDSA"}
    assert isinstance(keys.approvers["bob"].public_key, Ed25519PublicKey)
    for algorithm in ALGORITHMS:
        capability = verify_ucan(ucan(algorithm=algorithm), keys, audience=AUDIENCE, now=NOW)
        assert capability.issuer == issuer_id(algorithm)


def test_a_missing_file_means_no_keys(tmp_path: Path) -> None:
    keys = load_trust_keys(tmp_path / "absent.json")
    assert keys.issuers == {} and keys.approvers == {}


def test_an_empty_object_means_no_keys(tmp_path: Path) -> None:
    keys = load_trust_keys(write(tmp_path, {}))
    assert keys.issuers == {} and keys.approvers == {}


@pytest.mark.parametrize("member", ["d", "k", "p"])
def test_a_private_member_is_refused(tmp_path: Path, member: str) -> None:
    private = key("issuer", "ES256")
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    d = b64url_encode(private.private_numbers().private_value.to_bytes(32, "big"))
    path = write(tmp_path, {"issuers": [entry(issuer_id("ES256"), "ES256", "issuer", **{member: d})]})
    error = refused(path, f"issuers[0]: the jwk holds a private member ({member}); put only the public key")
    assert d not in str(error)
    assert isinstance(error, ConfigError) and error.exit_code == 78


@pytest.mark.parametrize(
    ("algorithm", "key_algorithm", "words"),
    [
        ("EdDSA", "ES256", "alg EdDSA needs a OKP Ed25519 key"),
        ("ES256", "EdDSA", "alg ES256 needs a EC P-256 key"),
        ("ES256", "ES384", "alg ES256 needs a EC P-256 key"),
        ("ES384", "ES256", "alg ES384 needs a EC P-384 key"),
    ],
)
def test_the_alg_must_fit_the_key(tmp_path: Path, algorithm: str, key_algorithm: str, words: str) -> None:
    bad = {"id": "did:web:issuer.example.com", "alg": algorithm, "jwk": public_jwk(key("issuer", key_algorithm))}
    refused(write(tmp_path, {"issuers": [entry(issuer_id("EdDSA"), "EdDSA", "issuer"), bad]}), f"issuers[1]: {words}")


@pytest.mark.parametrize("algorithm", ["none", "HS256", "RS256", "Ed25519", None])
def test_only_three_algorithms_exist(tmp_path: Path, algorithm: object) -> None:
    bad = {**entry("alice", "ES256"), "alg": algorithm}
    refused(write(tmp_path, {"approvers": [bad]}), "approvers[0]: alg must be one of EdDSA, ES256, ES384")


def test_one_id_cannot_be_issuer_and_approver(tmp_path: Path) -> None:
    did = issuer_id("EdDSA")
    document = {"issuers": [entry(did, "EdDSA", "issuer")], "approvers": [entry(did, "ES256", "alice")]}
    refused(write(tmp_path, document), f"approvers[0]: id {did!r} is also an issuer")


def test_an_approver_cannot_hold_an_issuers_key(tmp_path: Path) -> None:
    did = issuer_id("ES384")
    document = {
        "issuers": [entry(issuer_id("EdDSA"), "EdDSA", "issuer"), entry(did, "ES384", "issuer")],
        "approvers": [entry("alice", "ES256"), entry("carol", "ES384", "issuer")],
    }
    refused(write(tmp_path, document), f"approvers[1]: holds the public key of issuer {did!r}; step-up must come")


def test_an_id_listed_twice_is_refused(tmp_path: Path) -> None:
    document = {"approvers": [entry("alice", "ES256"), entry("alice", "EdDSA", "bob")]}
    refused(write(tmp_path, document), "approvers[1]: id 'alice' is listed twice")


@pytest.mark.parametrize(
    ("document", "words"),
    [
        ("not json", "the trust file is not valid JSON"),
        ("[]", "the trust file is not a JSON object"),
        ('{"issuers": [], "issuers": []}', "duplicate JSON member 'issuers'"),
        ({"issuer": []}, "unknown member(s) issuer: only issuers and approvers"),
        ({"issuers": {}}, "issuers must be a list"),
        ({"approvers": ["alice"]}, "approvers[0]: must be an object with id, alg and jwk"),
        (
            {"approvers": [{"id": "alice", "alg": "ES256"}]},
            "approvers[0]: must have exactly id, alg and jwk (not: jwk)",
        ),
        ({"approvers": [{**entry("alice", "ES256"), "note": "x"}]}, "must have exactly id, alg and jwk (not: note)"),
        ({"approvers": [{**entry("alice", "ES256"), "id": ""}]}, "approvers[0]: id must be a non-empty printable"),
        ({"approvers": [{**entry("alice", "ES256"), "id": "al\nice"}]}, "id must be a non-empty printable"),
        ({"approvers": [{**entry("alice", "ES256"), "jwk": "x"}]}, "approvers[0]: jwk must be a JWK object"),
        ({"issuers": [entry("issuer", "EdDSA")]}, "issuers[0]: an issuer's id is the DID its UCANs name as iss"),
        ({"approvers": [entry("alice", "ES256", x="AAAA")]}, "the jwk's x must encode 32 bytes"),
        ({"approvers": [entry("alice", "ES256", y=None)]}, "the jwk's y is missing or not a string"),
        ({"approvers": [entry("alice", "ES256", x=public_jwk(key("alice", "ES256"))["x"] + "=")]}, "base64url"),
        ({"approvers": [entry("alice", "ES256", y=b64url_encode(b"\x01" * 32))]}, "the point (x, y) is not on P-256"),
        ({"approvers": [entry("alice", "ES256", use="enc")]}, 'use must be "sig"'),
        ({"approvers": [entry("alice", "ES256", alg="ES384")]}, "the jwk's own alg is not the entry's alg ES256"),
        ({"approvers": [entry("bob", "EdDSA", x=b64url_encode(b"\x00" * 31))]}, "the jwk's x must encode 32 bytes"),
    ],
)
def test_malformed_files_name_the_path_and_the_entry(tmp_path: Path, document: object, words: str) -> None:
    refused(write(tmp_path, document), words)


def test_jwk_members_that_agree_are_accepted(tmp_path: Path) -> None:
    document = {"approvers": [entry("alice", "ES256", alg="ES256", use="sig", kid="alice-2025")]}
    assert set(load_trust_keys(write(tmp_path, document)).approvers) == {"alice"}


def test_loose_permissions_are_refused(tmp_path: Path) -> None:
    text = trust_file_json([(issuer_id("EdDSA"), "EdDSA", key("issuer", "EdDSA"))])
    for mode in (0o666, 0o664, 0o646):
        refused(write(tmp_path, text, mode), "writable by group or others")
    assert load_trust_keys(write(tmp_path, text, 0o644)).issuers
    assert load_trust_keys(write(tmp_path, text, 0o600)).issuers


def test_a_symlink_a_directory_and_an_oversize_file_are_refused(tmp_path: Path) -> None:
    good = write(tmp_path, {})
    link = tmp_path / "link.json"
    link.symlink_to(good)
    refused(link, "a symlink is refused")
    directory = tmp_path / "dir.json"
    directory.mkdir()
    refused(directory, "not a regular file")
    big = tmp_path / "big.json"
    big.write_text('{"issuers": []}' + " " * MAX_TRUST_FILE_BYTES)
    big.chmod(0o644)
    refused(big, f"it holds more than {MAX_TRUST_FILE_BYTES} bytes")
    binary = tmp_path / "binary.json"
    binary.write_bytes(b'{"issuers": []}\xff')
    binary.chmod(0o644)
    refused(binary, "not UTF-8")


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another UID needs root")
def test_a_file_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path, {})
    os.chown(path, 4321, 4321)
    refused(path, "owned by UID 4321; the agent-access trust file must be root's")


def test_did_key_is_multibase_base58btc_of_the_ed25519_multicodec() -> None:
    assert base58btc(b"") == ""
    assert base58btc(b"hello world") == "StV1DL6CwTryKyV"
    assert base58btc(b"\x00\x00\x01") == "112"
    # The W3C did:key test vector (did-method-key, Ed25519 "z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp").
    raw = bytes.fromhex("3b6a27bcceb6a42d62a3a8d02a6f0d73653215771de243a63ac048a18b59da29")
    public = Ed25519PublicKey.from_public_bytes(raw)
    assert did_key_ed25519(public) == "did:key:z6MkiTBz1ymuepAQ4HEHYSF1H8quG5GLVVQR3djdX3mDooWp"
    private = Ed25519PrivateKey.generate()
    assert did_key_ed25519(private) == did_key_ed25519(private.public_key())
    assert did_key_ed25519(private).startswith("did:key:z6Mk")


def test_an_entry_at_fault_is_named_by_its_line(tmp_path: Path) -> None:
    """As policy.cedar's errors name theirs: file:line of the entry, and line:column of a syntax error."""
    good = json.dumps(entry(issuer_id("EdDSA"), "EdDSA", "issuer"))
    approver = json.dumps(entry("alice", "ES256"))
    bad = json.dumps({**entry("bob", "ES256"), "alg": "HS256"})
    text = f'{{\n  "issuers": [\n    {good}\n  ],\n  "approvers": [\n    {approver},\n    {bad}\n  ]\n}}\n'
    path = write(tmp_path, text)
    error = refused(path, "approvers[1]: alg must be one of")
    assert str(error).startswith(f"{path}:7: approvers[1]:"), str(error)
    path.write_text('{\n  "issuers": [\n    {"id": }\n  ]\n}\n')
    error = refused(path, "the trust file is not valid JSON")
    assert str(error) == f"{path}:3:12: the trust file is not valid JSON (Expecting value)"


def test_entry_lines_reads_only_the_two_lists() -> None:
    text = '{"other": {"issuers": [1]},\n "issuers": [\n {"a": "]"},\n\n {}], "approvers": []}'
    assert entry_lines(text) == {"issuers[0]": 3, "issuers[1]": 5}
    assert entry_lines("{") == {} and entry_lines("{}") == {}
