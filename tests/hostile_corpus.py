"""A corpus of hostile provisioning requests: every field of every command, one bad value at a time.

Each case is (label, data, field): `data` is the JSON body the backend would send, `field` the request member the
error must name. The values come from upstream-protocol.md §12 (sed and sudoers injection, option injection in
keys, path traversal, control characters, look-alikes, wrong JSON types, over-long values) plus the generic
ones every parser should survive.
"""

from __future__ import annotations

import base64
from collections.abc import Iterator

# A real ed25519 key (public half only), used where the other fields must be valid.
GOOD_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE p0@test"
GOOD_BLOB = GOOD_KEY.split()[1]
GOOD_USER = "p0hostile"
GOOD_ID = "req-hostile-1"


def _wire(*fields: bytes) -> str:
    return base64.b64encode(b"".join(len(f).to_bytes(4, "big") + f for f in fields)).decode()


_ED25519_POINT = base64.b64decode(GOOD_BLOB)[4 + len("ssh-ed25519") + 4 :]
_RSA_MODULUS = ((1 << 2047) | 0xF00D).to_bytes(256, "big")
_OFF_CURVE = b"\x04" + (1).to_bytes(32, "big") + (1).to_bytes(32, "big")  # (1, 1) is not on nistp256
# Keys that OpenSSH reads as another, canonical key with another fingerprint, or not at all (issue 11 item 4).
NON_CANONICAL_KEYS = [
    f"ssh-rsa {_wire(b'ssh-rsa', bytes([0, 1, 0, 1]), bytes(1) + _RSA_MODULUS)}",  # zero-padded exponent
    f"ssh-rsa {_wire(b'ssh-rsa', bytes([1, 0, 1]), bytes(2) + _RSA_MODULUS)}",  # modulus padded twice
    f"sk-ssh-ed25519@openssh.com {_wire(b'sk-ssh-ed25519@openssh.com', _ED25519_POINT, b'ssh:' + bytes(1))}",
    f"ecdsa-sha2-nistp256 {_wire(b'ecdsa-sha2-nistp256', b'nistp256', _OFF_CURVE)}",
]

CONTROL = ["\n", "\r", "\x00", "\t", "\x1b[31m", "\u2028", "\x7f"]

USER_NAMES: list[object] = [
    "",
    "root",
    "daemon",
    "nobody",
    "Root",
    "ALICE",
    "a b",
    "-rf",
    "--help",
    "../etc",
    "a/b",
    "a:b",
    "a,b",
    "a(b)",
    "a=b",
    "a;id",
    "$(id)",
    "`id`",
    "a" * 33,
    "a" * 4096,
    "alice\nALL ALL=(ALL) NOPASSWD: ALL",
    "\u0430lice",  # Cyrillic a
    "al\u0456ce",  # Cyrillic i
    "\uff41\uff4c\uff49\uff43\uff45",  # fullwidth "alice"
    "alice\u200b",
    "ALL",
    "systemd-network",
    "1alice",
    *(f"al{c}ice" for c in CONTROL),
    123,
    True,
    None,
    ["alice"],
    {"name": "alice"},
    1.5,
]

REQUEST_IDS: list[object] = [
    "",
    "a/e id",
    "1/,$d",
    "x;e id",
    "1\n",
    "a b",
    "a.b",
    "../../etc/passwd",
    "a" * 129,
    "\uff52\uff45\uff51",  # fullwidth "req"
    "req\u200b",
    "req$",
    "req*",
    "req\\",
    "req'",
    'req"',
    "\\+\\?\\|",
    "# RequestID: x",
    *(f"r{c}q" for c in CONTROL),
    7,
    False,
    ["r1"],
    {"id": "r1"},
]

PUBLIC_KEYS: list[object] = [
    f'command="/bin/sh" {GOOD_KEY}',
    f'from="*" {GOOD_KEY}',
    f"no-pty {GOOD_KEY}",
    f"restrict {GOOD_KEY}",
    f'environment="LD_PRELOAD=/tmp/x" {GOOD_KEY}',
    f"{GOOD_KEY}\n{GOOD_KEY}",
    f"{GOOD_KEY}\nssh-ed25519 AAAA other",
    f"{GOOD_KEY}\r\nx",
    f"{GOOD_KEY}\x00",
    "ssh-ed25519",
    "ssh-ed25519 ",
    "ssh-ed25519 AAAA",
    "ssh-ed25519 !!!notbase64!!!",
    f"ssh-ed25519 {GOOD_BLOB[:-8]}",
    f"ssh-rsa {GOOD_BLOB}",  # the blob says ed25519
    f"ecdsa-sha2-nistp256 {GOOD_BLOB}",
    f"ssh-dss {GOOD_BLOB}",
    f"ssh-ed25519-cert-v01@openssh.com {GOOD_BLOB}",
    f"unknown-type {GOOD_BLOB}",
    f"ssh-ed25519 {GOOD_BLOB} " + "c" * 20_000,
    "x" * 20_000,
    f"ssh-ed25519 {GOOD_BLOB} comment\x1b[2J",
    f"ssh-ed25519 {GOOD_BLOB} comment\u2028next",
    "-----BEGIN OPENSSH PRIVATE KEY-----",
    "# RequestID: other",
    "cert-authority " + GOOD_KEY,
    *NON_CANONICAL_KEYS,
    42,
    True,
    [GOOD_KEY],
    {"key": GOOD_KEY},
]

RUN_AS: list[object] = [
    "root,ALL",
    "x)",
    "a\nb ALL=(ALL) NOPASSWD: ALL",
    "ALL, !root",
    "#0",
    "%sudo",
    "+netgroup",
    "a b",
    "Root",
    "a" * 33,
    "(ALL)",
    "ALL:ALL",
    "\uff52\uff4f\uff4f\uff54",  # fullwidth "root"
    *(f"ro{c}ot" for c in CONTROL[:4]),
    0,
    True,
    ["root"],
]

SUDO_FLAGS: list[object] = ["true", "yes", 1, 0, "1", ["true"], {"v": True}]  # null means absent, as in Go
ACTIONS: list[object] = ["", "GRANT", "Grant", "grant\n", " grant", "delete", "revoke;id", "grant\x00", 1, None, True]
TIMES: list[object] = ["yesterday", "2024-13-01T00:00:00Z", "-1", "1e9", "0x10", "9" * 40, "2024-01-01", 12.5, True]


def _base(command: str) -> dict[str, object]:
    data: dict[str, object] = {"command": command, "userName": GOOD_USER, "action": "grant", "requestId": GOOD_ID}
    if command == "provisionAuthorizedKeys":
        data["publicKey"] = GOOD_KEY
    if command == "provisionCAKeys":
        data["caPublicKey"] = GOOD_KEY
    if command == "provisionSudo":
        data["sudo"] = True
    if command == "provisionSession":
        data["action"] = "revoke"
    if command == "collectSudoshRecordings":
        data = {"command": command, "userName": GOOD_USER}
    return data


READ_ONLY_NAMES = ("root", "daemon", "nobody", "systemd-network")
PROVISIONING = ("provisionUser", "provisionAuthorizedKeys", "provisionCAKeys", "provisionSudo", "provisionSession")


def cases() -> Iterator[tuple[str, dict[str, object], str]]:
    for command in (*PROVISIONING, "collectSudoshRecordings"):
        for i, value in enumerate(USER_NAMES):
            if command == "collectSudoshRecordings" and value in READ_ONLY_NAMES:
                continue  # reading root's recordings is legitimate: only malformed names are hostile there
            yield f"{command}-userName-{i}", {**_base(command), "userName": value}, "userName"
    for command in PROVISIONING:
        for i, value in enumerate(REQUEST_IDS):
            if command == "provisionSession" and value == "":
                continue  # the session revoke's requestId is optional; "" means absent
            yield f"{command}-requestId-{i}", {**_base(command), "requestId": value}, "requestId"
    for command in PROVISIONING[:4]:
        for i, value in enumerate(ACTIONS):
            yield f"{command}-action-{i}", {**_base(command), "action": value}, "action"
    for i, value in enumerate(PUBLIC_KEYS):
        yield f"publicKey-{i}", {**_base("provisionAuthorizedKeys"), "publicKey": value}, "publicKey"
        yield f"caPublicKey-{i}", {**_base("provisionCAKeys"), "caPublicKey": value}, "caPublicKey"
    for i, value in enumerate(RUN_AS):
        yield f"runAsUser-{i}", {**_base("provisionSudo"), "runAsUser": value}, "runAsUser"
    for i, value in enumerate(SUDO_FLAGS):
        yield f"sudo-{i}", {**_base("provisionSudo"), "sudo": value}, "sudo"
    for i, value in enumerate(TIMES):
        yield f"startTime-{i}", {**_base("collectSudoshRecordings"), "startTime": value}, "startTime"
        yield f"endTime-{i}", {**_base("collectSudoshRecordings"), "endTime": value}, "endTime"
    # Ambiguous spellings of one member (Go's case-insensitive matching would pick one silently).
    yield "dup-userName", {**_base("provisionUser"), "username": "p0other"}, "userName"
    yield "dup-requestId", {**_base("provisionSudo"), "RequestId": "other"}, "requestId"
    yield "dup-publicKey", {**_base("provisionAuthorizedKeys"), "PUBLICKEY": GOOD_KEY}, "publicKey"
