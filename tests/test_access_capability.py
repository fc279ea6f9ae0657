"""The UCAN 0.10.0 check (agent_access/capability.py) with real keys and real signatures: what verifies, every way
a token is refused, and which grant covers a request (components, never string prefixes)."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from access_tokens import (
    ALGORITHMS,
    AUDIENCE,
    HOST,
    NOW,
    READ_APP,
    issuer_id,
    key,
    raw_payload,
    raw_token,
    trust,
    ucan,
)
from p0_ssh_agent.agent_access.access_model import AccessCommand, Capability, Grant
from p0_ssh_agent.agent_access.capability import (
    CLOCK_SKEW_SECONDS,
    MAX_UCAN_BYTES,
    MAX_UCAN_LIFETIME_SECONDS,
    CapabilityRejected,
    covering_grant,
    ucan_digest,
    verify_ucan,
)
from p0_ssh_agent.agent_access.jws_compact import b64url_encode
from p0_ssh_agent.agent_access.minting import OMIT, mint_ucan

KEYS = trust(issuers=[("issuer", algorithm) for algorithm in ALGORITHMS] + [("other", "EdDSA")])
EDDSA_ISSUER = issuer_id("EdDSA")
HEADER = b'{"alg":"EdDSA","typ":"JWT"}'


def verify(token: str, *, now: int = NOW, audience: str = AUDIENCE) -> Capability:
    return verify_ucan(token, KEYS, audience=audience, now=now)


def refused(token: str, words: str, *, now: int = NOW) -> str:
    with pytest.raises(CapabilityRejected) as info:
        verify(token, now=now)
    message = str(info.value)
    assert words in message, message
    # Never the token, its payload or its signature in a message.
    for part in token.split("."):
        assert len(part) < 8 or part not in message
    return message


def payload(**members: object) -> dict[str, object]:
    base: dict[str, object] = {
        "ucv": "0.10.0",
        "iss": EDDSA_ISSUER,
        "aud": AUDIENCE,
        "exp": NOW + 600,
        "prf": [],
        "cap": {f"ssh://{HOST}": {"ssh/file/read": [caveat()]}},
    }
    for name, value in members.items():
        if value is OMIT:
            base.pop(name, None)
        else:
            base[name] = value
    return base


def caveat(**members: object) -> dict[str, object]:
    base: dict[str, object] = {"provider": "ssh", "host": HOST, "username": "deploy", "path_prefix": "/var/www/app"}
    base.update(members)
    return base


def signed(**members: object) -> str:
    return raw_token(HEADER, raw_payload(payload(**members)))


# --- what verifies ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_each_algorithm_verifies(algorithm: str) -> None:
    token = ucan(algorithm=algorithm, not_before=NOW - 10, lifetime_seconds=600)
    capability = verify(token)
    assert capability.issuer == issuer_id(algorithm)
    assert capability.audience == AUDIENCE
    assert (capability.not_before, capability.expires) == (NOW - 10, NOW + 590)
    assert capability.grants == (READ_APP,)
    assert capability.digest == "sha256:" + hashlib.sha256(token.encode()).hexdigest() == ucan_digest(token)
    assert capability.nonce


def test_a_token_without_nbf_or_prf_verifies() -> None:
    capability = verify(signed(prf=OMIT))
    assert capability.not_before is None and capability.expires == NOW + 600 and capability.nonce == ""


# --- signatures and algorithms ---------------------------------------------------------------------------------


def _with_signature(token: str, signature: bytes) -> str:
    return token.rsplit(".", 1)[0] + "." + b64url_encode(signature)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_a_forged_signature_is_refused(algorithm: str) -> None:
    token = ucan(algorithm=algorithm)
    signature = bytearray(base64.urlsafe_b64decode(token.rsplit(".", 1)[1] + "=="))
    signature[5] ^= 0x01
    refused(_with_signature(token, bytes(signature)), "signature does not verify")
    refused(_with_signature(token, bytes(signature[:-1])), "signature does not verify")  # wrong length
    refused(_with_signature(token, bytes(len(signature))), "signature does not verify")  # all zero: r = s = 0


def test_an_ecdsa_signature_must_be_jose_r_s_not_der() -> None:
    token = ucan(algorithm="ES256")
    signing_input = token.rsplit(".", 1)[0].encode()
    private = key("issuer", "ES256")
    assert isinstance(private, ec.EllipticCurvePrivateKey)
    der = private.sign(signing_input, ec.ECDSA(hashes.SHA256()))
    refused(_with_signature(token, der), "signature does not verify")


def test_a_changed_payload_breaks_the_signature() -> None:
    header, _, signature = ucan().split(".")
    forged_payload = b64url_encode(raw_payload(payload(cap={f"ssh://{HOST}": {"ssh/*": [caveat(path_prefix="/srv")]}})))
    refused(f"{header}.{forged_payload}.{signature}", "signature does not verify")


def test_a_signature_by_another_key_is_refused() -> None:
    stranger = key("stranger", "EdDSA")
    token = mint_ucan(stranger, algorithm="EdDSA", issuer=EDDSA_ISSUER, audience=AUDIENCE, grants=[READ_APP], now=NOW)
    refused(token, "signature does not verify")
    # Another configured issuer's key does not speak for this one either.
    token = mint_ucan(
        key("other", "EdDSA"), algorithm="EdDSA", issuer=EDDSA_ISSUER, audience=AUDIENCE, grants=[READ_APP], now=NOW
    )
    refused(token, "signature does not verify")


def test_the_alg_must_be_the_issuers() -> None:
    # An ES256 key signing as the EdDSA issuer, with an honest header: refused before any signature check.
    token = mint_ucan(
        key("issuer", "ES256"), algorithm="ES256", issuer=EDDSA_ISSUER, audience=AUDIENCE, grants=[READ_APP], now=NOW
    )
    refused(token, "signed with ES256 but its issuer is configured for EdDSA")
    # The issuer's own key, with a header that claims another algorithm.
    refused(ucan(header_overrides={"alg": "ES384"}), "signed with ES384 but its issuer is configured for EdDSA")
    refused(ucan(algorithm="ES384", header_overrides={"alg": "ES256"}), "configured for ES384")


@pytest.mark.parametrize("alg", ["none", "None", "HS256", "RS256", "", None, 1, ["EdDSA"]])
def test_alg_none_and_every_other_alg_are_refused(alg: object) -> None:
    refused(ucan(header_overrides={"alg": alg}), "is refused (only EdDSA, ES256, ES384)")
    unsigned = ucan(header_overrides={"alg": alg}).rsplit(".", 1)[0] + "."
    refused(unsigned, "is refused")


def test_a_header_without_alg_is_refused() -> None:
    refused(ucan(header_overrides={"alg": OMIT}), "alg None is refused")


@pytest.mark.parametrize(
    ("overrides", "words"),
    [
        ({"typ": OMIT}, '"typ": "JWT"'),
        ({"typ": "p0-cosign+jwt"}, '"typ": "JWT"'),
        ({"kid": "issuer"}, "members this agent does not accept: ['kid']"),
        ({"crit": ["exp"]}, "members this agent does not accept: ['crit']"),
        ({"jku": "https://attacker.example/keys"}, "does not accept"),
    ],
)
def test_the_header_is_exactly_alg_and_typ(overrides: dict[str, object], words: str) -> None:
    refused(ucan(header_overrides=overrides), words)


# --- the text --------------------------------------------------------------------------------------------------

GOOD = ucan()
GOOD_HEADER, GOOD_PAYLOAD, GOOD_SIGNATURE = GOOD.split(".")


@pytest.mark.parametrize(
    ("token", "words"),
    [
        ("", "non-empty string"),
        ("abc", "1 dot-separated parts, not 3"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}", "2 dot-separated parts"),
        (f"{GOOD}.{GOOD_SIGNATURE}", "4 dot-separated parts"),
        (f"{GOOD_HEADER}=.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}", "the header is not unpadded base64url"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}==", "the signature is not unpadded base64url"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD.replace('-', '+')}x.{GOOD_SIGNATURE}", "base64url"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD} .{GOOD_SIGNATURE}", "base64url"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE}\n", "base64url"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.é{GOOD_SIGNATURE}", "not ASCII"),
        (f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE[:-1]}", "signature"),  # a byte short, or stray bits
        (f".{GOOD_PAYLOAD}.{GOOD_SIGNATURE}", "the header is not valid JSON"),
    ],
)
def test_malformed_text_is_refused(token: str, words: str) -> None:
    refused(token, words)


def test_stray_trailing_bits_are_a_second_spelling_and_refused() -> None:
    # 64 bytes are 86 characters; the last carries 2 bits of the signature and 4 that must be zero. Setting the
    # lowest spells the same bytes a second way.
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = alphabet[alphabet.index(GOOD_SIGNATURE[-1]) + 1]
    assert base64.urlsafe_b64decode(GOOD_SIGNATURE[:-1] + twin + "==") == base64.urlsafe_b64decode(
        GOOD_SIGNATURE + "=="
    )
    refused(f"{GOOD_HEADER}.{GOOD_PAYLOAD}.{GOOD_SIGNATURE[:-1]}{twin}", "not canonical base64url")


@pytest.mark.parametrize(
    ("header", "body", "words"),
    [
        (b"not json", raw_payload(payload()), "the header is not valid JSON"),
        (b'["EdDSA"]', raw_payload(payload()), "the header is not a JSON object"),
        (b'{"alg":"EdDSA","alg":"EdDSA","typ":"JWT"}', raw_payload(payload()), "duplicate JSON member 'alg'"),
        (HEADER, b"\xff\xfe", "the payload is not UTF-8"),
        (HEADER, b"", "the payload is not valid JSON"),
        (HEADER, b"[]", "the payload is not a JSON object"),
        (HEADER, raw_payload(payload())[:-1], "the payload is not valid JSON"),
        (HEADER, raw_payload(payload()) + b" {}", "the payload is not valid JSON"),
        (HEADER, raw_payload(payload(fct=[float("nan")])), "JSON constant NaN is not allowed"),
        (HEADER, raw_payload(payload(fct=[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]])), "nests deeper than 16 levels"),
        (HEADER, raw_payload(payload(fct=1)).replace(b'"fct": 1', b'"fct": ' + b"9" * 5000), "not valid JSON"),
    ],
)
def test_header_and_payload_junk_is_refused(header: bytes, body: bytes, words: str) -> None:
    refused(raw_token(header, body), words)


def test_a_duplicate_payload_member_is_refused_not_resolved() -> None:
    # json.loads alone would keep the second aud and accept this token for this host.
    text = raw_payload(payload(aud="did:web:elsewhere.example.com")).replace(
        b'"aud"', f'"aud": "{AUDIENCE}", "aud"'.encode()
    )
    refused(raw_token(HEADER, text), "duplicate JSON member 'aud'")
    nested = raw_payload(payload(cap={f"ssh://{HOST}": {"ssh/file/read": [{**caveat(), "x": 1}]}}))
    refused(raw_token(HEADER, nested.replace(b'"x": 1', b'"path_prefix": "/srv/other"')), "duplicate JSON member")


def test_a_string_that_looks_deep_is_not_counted_as_nesting() -> None:
    assert verify(signed(fct=[{"note": '[[[[[[[[[[[[[[[[[[[[[[[[[{{{{{{{{{{{{{{{{{{{{\\"[[[[[[[['}])).grants == (
        READ_APP,
    )


def test_an_oversize_token_is_refused_and_one_at_the_limit_is_not() -> None:
    padding_for = len(ucan(extra_payload={"fct": [{"pad": ""}]}))
    fits = ucan(extra_payload={"fct": [{"pad": "x" * ((MAX_UCAN_BYTES - padding_for) * 3 // 4)}]})
    assert len(fits) <= MAX_UCAN_BYTES
    assert verify(fits).grants == (READ_APP,)
    over = ucan(extra_payload={"fct": [{"pad": "x" * (MAX_UCAN_BYTES * 3 // 4)}]})
    refused(over, f"longer than {MAX_UCAN_BYTES} bytes")


# --- time ------------------------------------------------------------------------------------------------------


def test_expiry_with_the_clock_skew_edges() -> None:
    token = ucan(lifetime_seconds=600)
    assert verify(token, now=NOW + 600 + CLOCK_SKEW_SECONDS - 1).expires == NOW + 600
    refused(token, "expired 60 s ago", now=NOW + 600 + CLOCK_SKEW_SECONDS)
    refused(token, "expired", now=NOW + 10_000)


def test_not_before_with_the_clock_skew_edges() -> None:
    token = ucan(not_before=NOW + 100, lifetime_seconds=600)
    assert verify(token, now=NOW + 100 - CLOCK_SKEW_SECONDS).not_before == NOW + 100
    refused(token, "not yet valid", now=NOW + 100 - CLOCK_SKEW_SECONDS - 1)


def test_the_lifetime_is_bounded() -> None:
    assert verify(ucan(lifetime_seconds=MAX_UCAN_LIFETIME_SECONDS)).expires == NOW + MAX_UCAN_LIFETIME_SECONDS
    refused(ucan(lifetime_seconds=MAX_UCAN_LIFETIME_SECONDS + 1), "lifetime too long")
    # Measured from nbf when there is one: a far nbf does not make a long-lived token short.
    long_from_nbf = ucan(not_before=NOW - 3600, lifetime_seconds=MAX_UCAN_LIFETIME_SECONDS + 1)
    refused(long_from_nbf, "lifetime too long")
    refused(signed(nbf=NOW, exp=NOW), "exp is not after its nbf")


@pytest.mark.parametrize(
    ("members", "words"),
    [
        ({"exp": None}, "exp must be an integer (a UCAN that never expires is refused)"),
        ({"exp": OMIT}, "exp must be an integer"),
        ({"exp": float(NOW + 600)}, "exp must be an integer"),
        ({"exp": True}, "exp must be an integer"),
        ({"exp": str(NOW + 600)}, "exp must be an integer"),
        ({"nbf": None}, "nbf must be an integer when present"),
        ({"nbf": "now"}, "nbf must be an integer"),
        ({"nnc": 7}, "nnc must be a string"),
        ({"ucv": "0.9.1"}, "version (ucv) is '0.9.1', not '0.10.0'"),
        ({"ucv": OMIT}, "version (ucv) is None"),
        ({"iss": "did:key:z6MkStranger"}, "issuer 'did:key:z6MkStranger' is not a configured issuer"),
        ({"iss": OMIT}, "is not a configured issuer"),
        ({"prf": "bafy..."}, "prf must be a list"),
    ],
)
def test_bad_claims_are_refused(members: dict[str, object], words: str) -> None:
    refused(signed(**members), words)


def test_fct_and_unknown_claims_are_ignored() -> None:
    assert verify(signed(fct=[{"anything": [1, 2]}], jti="x", iat=NOW)).grants == (READ_APP,)


def test_the_audience_must_be_this_host() -> None:
    refused(signed(aud="did:web:ops-02.example.com"), f"audience is not this host (expected {AUDIENCE!r})")
    refused(signed(aud=OMIT), "audience is not this host")
    refused(signed(aud=[AUDIENCE]), "audience is not this host")
    with pytest.raises(CapabilityRejected, match="audience"):
        verify(ucan(), audience="did:web:ops-02.example.com")


def test_delegation_chains_are_refused() -> None:
    parent = ucan()
    refused(ucan(proofs=[parent]), "delegation chains are refused")
    refused(ucan(proofs=["bafyreihdwdcefgh4dqkjv67uzcmw7ojee6xedzdetojuzjevtenxquvyku"]), "delegation chains")


# --- capabilities and caveats ----------------------------------------------------------------------------------


def cap_token(capabilities: object) -> str:
    return signed(cap=capabilities)


@pytest.mark.parametrize(
    ("caveats", "words"),
    [
        ([caveat(path_prefix="/")], "path_prefix '/' is refused: it would cover the whole host"),
        ([caveat(path_prefix="/etc")], "is, covers or lies beneath /etc"),
        ([caveat(path_prefix="/etc/nginx")], "lies beneath /etc"),
        ([caveat(path_prefix="/home/x")], "lies beneath /home"),
        ([caveat(path_prefix="/var")], "covers or lies beneath /var/lib/p0-ssh-agent"),
        ([caveat(path_prefix="/var/www/app/../../etc")], "must not contain empty, '.' or '..'"),
        ([caveat(path_prefix="var/www/app")], "must be absolute"),
        ([caveat(path_prefix="/var/www/app/")], "or end in '/'"),
        ([caveat(path_prefix=["/var/www/app"])], "path_prefix must be a string"),
        ([caveat(extra="x")], "constraints this agent does not understand: ['extra']"),
        ([caveat(read_only=False)], "does not understand"),
        ([{}], "must be a non-empty caveat object (an empty one restricts nothing)"),
        (["/var/www/app"], "non-empty caveat object"),
        ([], "must be a non-empty list of caveats"),
        ({"provider": "ssh"}, "non-empty list of caveats"),
        ([{"provider": "ssh", "host": HOST, "username": "deploy"}], "lacks path_prefix"),
        ([caveat(provider="sftp")], 'provider must be "ssh"'),
        ([caveat(host="ops-02.example.com")], f"host is not its resource's host ({HOST!r})"),
        ([caveat(username="")], "is not a login name"),
        ([caveat(username="de ploy")], "is not a login name"),
        ([caveat(username=7)], "is not a login name"),
        ([caveat(), caveat(path_prefix="/root")], "[1]: path_prefix '/root' is refused"),
    ],
)
def test_bad_caveats_reject_the_whole_token(caveats: object, words: str) -> None:
    refused(cap_token({f"ssh://{HOST}": {"ssh/file/read": caveats}}), words)


@pytest.mark.parametrize(
    ("capabilities", "words"),
    [
        ([], "cap must be an object of resources"),
        ({f"ssh://{HOST}": ["ssh/file/read"]}, "must be an object of abilities"),
        ({"ssh://": {"ssh/file/read": [caveat()]}}, "is not ssh://<hostname>"),
        ({f"ssh://{HOST}/var/www": {"ssh/file/read": [caveat()]}}, "is not ssh://<hostname>"),
        ({f"ssh://deploy@{HOST}": {"ssh/file/read": [caveat()]}}, "is not ssh://<hostname>"),
        ({}, "grants nothing this agent can use"),
        ({f"ssh://{HOST}": {"ssh/teleport": [caveat()], "*": [{}]}}, "grants nothing"),
        ({"https://example.com": {"crud/read": [{}]}}, "grants nothing"),
    ],
)
def test_bad_or_empty_capabilities_are_refused(capabilities: object, words: str) -> None:
    refused(cap_token(capabilities), words)


def test_unknown_abilities_and_resources_are_ignored() -> None:
    capabilities = {
        f"ssh://{HOST}": {"ssh/teleport": [{"anything": True}], "ssh/file/read": [caveat()]},
        "mailto:ops@example.com": {"msg/send": [{}]},
    }
    assert verify(cap_token(capabilities)).grants == (READ_APP,)


def test_each_ability_and_caveat_is_one_grant() -> None:
    grants = (
        READ_APP,
        Grant("ssh/file/read", HOST, "deploy", "/var/log/myapp"),
        Grant("ssh/file/write", HOST, "deploy", "/var/www/app"),
        Grant("ssh/*", "ops-02.example.com", "ops", "/srv/data"),
    )
    assert verify(ucan(grants=grants)).grants == grants


# --- covering_grant --------------------------------------------------------------------------------------------


def covered(
    grants: tuple[Grant, ...], command: AccessCommand, *paths: str, host: str = HOST, username: str = "deploy"
) -> Grant | None:
    capability = verify(ucan(grants=grants))
    return covering_grant(capability, command, host=host, username=username, paths=paths)


def test_a_path_prefix_is_compared_on_components() -> None:
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app") == READ_APP
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app/index.html") == READ_APP
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app2") is None
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app2/index.html") is None
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www") is None
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app/../../../etc/shadow") is None


def test_a_constraint_for_another_host_or_user_covers_nothing_here() -> None:
    elsewhere = Grant("ssh/file/read", "ops-02.example.com", "deploy", "/var/www/app")
    assert covered((elsewhere,), AccessCommand.FILE_READ, "/var/www/app/x") is None
    assert covered((elsewhere,), AccessCommand.FILE_READ, "/var/www/app/x", host="ops-02.example.com") == elsewhere
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app/x", username="root") is None
    assert covered((READ_APP,), AccessCommand.FILE_READ, "/var/www/app/x", username="Deploy") is None


def test_the_ability_must_be_the_commands() -> None:
    assert covered((READ_APP,), AccessCommand.FILE_WRITE, "/var/www/app/x") is None
    assert covered((READ_APP,), AccessCommand.EXEC, "/var/www/app") is None
    assert covered((READ_APP,), AccessCommand.DIR_LIST, "/var/www/app") is None


def test_ssh_star_covers_every_command() -> None:
    everything = Grant("ssh/*", HOST, "deploy", "/var/www/app")
    for command in AccessCommand:
        assert covered((everything,), command, "/var/www/app/x") == everything
        assert covered((everything,), command, "/var/www/other") is None


def test_a_move_needs_both_paths_under_one_grant() -> None:
    move = Grant("ssh/file/move", HOST, "deploy", "/var/www/app")
    assert covered((move,), AccessCommand.FILE_MOVE, "/var/www/app/a", "/var/www/app/b") == move
    assert covered((move,), AccessCommand.FILE_MOVE, "/var/www/app/a", "/var/www/app2/b") is None
    assert covered((move,), AccessCommand.FILE_MOVE, "/tmp/a", "/var/www/app/b") is None
    # Two grants, one for each side, are not one grant covering both: a move is one operation beneath one prefix.
    other = Grant("ssh/file/move", HOST, "deploy", "/srv/upload")
    assert covered((move, other), AccessCommand.FILE_MOVE, "/srv/upload/a", "/var/www/app/a") is None
    assert covered((move, other), AccessCommand.FILE_MOVE, "/srv/upload/a", "/srv/upload/b") == other


def test_messages_quote_nothing_of_the_token() -> None:
    token = ucan(extra_payload={"aud": "did:web:secret-host.example.com"})
    message = refused(token, "audience")
    assert "secret-host" not in message and json.dumps(token) not in message
