"""Canonical public keys on a real host (issue 11 item 4; namespace sandbox: real useradd, sshd and the CLI).

sshd reads an RSA key whose exponent is zero-padded as the key itself and logs the key's real fingerprint, so a
policy that forbids that fingerprint must not see another one for the padded copy: the agent refuses the padded
encoding with an error naming the field, before the policy and before any change to the host.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from p0_ssh_agent.host.policy_file import builtin_text
from provisioning_support import AGENT, AgentCli, authorized_keys, changed, host_state, make_keys, write_config
from sandbox.fixtures import CHILD_ENV, Sandbox, Sshd, unique_user_name

pytestmark = pytest.mark.sandbox
SSH_KEYGEN = "/usr/bin/ssh-keygen"


def ssh_string(data: bytes) -> bytes:
    return len(data).to_bytes(4, "big") + data


def rsa_keypair(directory: Path) -> tuple[Path, str]:
    private = directory / "id_rsa"
    subprocess.run(
        [SSH_KEYGEN, "-q", "-t", "rsa", "-b", "2048", "-N", "", "-C", "alice", "-f", str(private)], check=True
    )
    return private, private.with_name("id_rsa.pub").read_text().strip()


def zero_padded(line: str, *, field: int) -> str:
    """The same key with one more zero byte in front of field 1 (the exponent) or 2 (the modulus)."""
    key_type, data, comment = line.split(" ", 2)
    blob, fields, offset = base64.b64decode(data), [], 0
    while offset < len(blob):
        length = int.from_bytes(blob[offset : offset + 4], "big")
        fields.append(blob[offset + 4 : offset + 4 + length])
        offset += 4 + length
    fields[field] = b"\0" + fields[field]
    return f"{key_type} {base64.b64encode(b''.join(ssh_string(f) for f in fields)).decode()} {comment}"


def keygen_fingerprint(line: str, directory: Path) -> str:
    pub = directory / "fingerprint-me.pub"
    pub.write_text(line + "\n")
    done = subprocess.run(
        [SSH_KEYGEN, "-l", "-E", "sha256", "-f", str(pub)], capture_output=True, text=True, check=True
    )
    return done.stdout.split()[1]


def test_sshd_takes_a_zero_padded_key_for_the_key_itself(sandbox: Sandbox, sshd: Sshd, tmp_path: Path) -> None:
    """The threat, shown on sshd itself: the padded line logs in, and sshd logs the canonical fingerprint."""
    private, line = rsa_keypair(tmp_path)
    padded = zero_padded(line, field=1)
    canonical = keygen_fingerprint(line, tmp_path)
    assert keygen_fingerprint(padded, tmp_path) == canonical
    name = unique_user_name()
    sandbox.useradd(name)
    try:
        sandbox.install_key(name, padded)
        assert sshd.ssh(name, private, "true").returncode == 0
        accepted = [row for row in sshd.log.read_text().splitlines() if f"Accepted publickey for {name} " in row]
        assert accepted and canonical in accepted[-1], accepted
    finally:
        sandbox.userdel(name)


def test_a_zero_padded_key_is_refused_before_a_policy_that_forbids_the_key(sandbox: Sandbox, tmp_path: Path) -> None:
    _, line = rsa_keypair(tmp_path)
    banned = keygen_fingerprint(line, tmp_path)
    policy = tmp_path / "policy.cedar"
    forbid_it = f'forbid (principal, action, resource) when {{ context.keyFingerprint == "{banned}" }};'
    policy.write_text(f'{builtin_text()}\n@id("banned-key")\n{forbid_it}\n')
    policy.chmod(0o644)
    config = write_config(tmp_path, make_keys(tmp_path / "agent"))
    with config.open("a") as out:
        out.write(f"policyFile: {policy}\n")
    cli = AgentCli(config)
    name = unique_user_name()
    assert cli.command("provisionUser", name, request_id="req-K1").success

    denied = cli.command("provisionAuthorizedKeys", name, request_id="req-K1", public_key=line)
    assert denied.result["http_status"] == 403 and "forbidden by banned-key" in denied.error, denied.result
    before = host_state(tmp_path / "state")
    for field, words in ((1, "the RSA exponent is zero-padded"), (2, "the RSA modulus is zero-padded")):
        padded = cli.command(
            "provisionAuthorizedKeys", name, request_id="req-K1", public_key=zero_padded(line, field=field)
        )
        assert not padded.success, f"the padded copy of a forbidden key was granted: {padded.result}"
        assert "invalid publicKey" in padded.error and words in padded.error, padded.result
        assert "banned-key" not in padded.error  # refused as malformed, before the policy is asked
    assert changed(before, host_state(tmp_path / "state")) == []
    assert not authorized_keys(name).exists() or "ssh-rsa" not in authorized_keys(name).read_text()

    # `policy check` answers the same offline: the key is denied, its padded copy is not a valid request (65).
    def policy_check(public_key: str) -> subprocess.CompletedProcess[str]:
        request = tmp_path / "request.json"
        body = {"command": "provisionAuthorizedKeys", "userName": name, "action": "grant", "requestId": "r1"}
        request.write_text(json.dumps({**body, "publicKey": public_key}))
        argv = [str(AGENT), "policy", "check", "--config", str(config), str(request)]
        return subprocess.run(argv, capture_output=True, text=True, env=CHILD_ENV, timeout=60, check=False)

    checked = policy_check(line)
    assert checked.returncode == 1 and "forbidden by banned-key" in checked.stdout, checked
    checked = policy_check(zero_padded(line, field=1))
    assert checked.returncode == 65 and "publicKey" in checked.stderr and "zero-padded" in checked.stderr, checked
    assert cli.command("provisionUser", name, action="revoke", request_id="req-K1").success
