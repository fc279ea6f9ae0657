"""The local Cedar policy (issue 6): loading and its refusals with file:line, the built-in default, evaluation that
fails closed, the starter policies of docs/policy.md exactly as shipped there, `policy check` through the real CLI,
and the daemon's start-up (exit 78) and SIGHUP (old policy kept) behaviour.

Facts are built by hand here so every attribute is under the test's control; the sandbox tests in
tests/test_policy_sandbox.py build them from real accounts and prove a denial changes nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from p0_ssh_agent.core.local_policy import (
    BUILTIN_SOURCE,
    NO_PERMIT,
    Facts,
    LocalPolicy,
    PolicyError,
    compile_policy,
    split_statements,
)
from p0_ssh_agent.host.policy_file import MAX_POLICY_BYTES, builtin_policy, builtin_text, load_policy

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
STARTERS = Path(__file__).resolve().parent.parent / "docs" / "policies"
NFPM = Path(__file__).resolve().parent.parent / "nfpm.yaml"
ED25519 = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOMqqnkVzrm0SdG6UOoqKLsabgH5C9okWi0dh2l9GKJl alice@laptop"


def facts(command: str = "provisionAuthorizedKeys", user: str = "alice", **changes: object) -> Facts:
    """A managed, ordinary account on a Monday at 10:00 unless `changes` say otherwise."""
    context: dict[str, object] = {
        "requestId": "req-1",
        "command": command,
        "sudo": False,
        "runAsUser": "",
        "keyType": "ssh-ed25519" if command in ("provisionAuthorizedKeys", "provisionCAKeys") else "",
        "keyFingerprint": "SHA256:abc" if command in ("provisionAuthorizedKeys", "provisionCAKeys") else "",
        "hostname": "web-1",
        "hour": 10,
        "minute": 0,
        "weekday": 1,
        "now": 1_795_427_322,
    }
    context.update({k: v for k, v in changes.items() if k in context})
    attributes = {k: v for k, v in changes.items() if k not in context}
    base = Facts("org-1", command, user, exists=True, uid=1001, managed=True, system=False, groups=(user,))
    return replace(base, context=context, **attributes)  # type: ignore[arg-type]


def with_starter(name: str) -> LocalPolicy:
    """The default policy plus one starter from docs/policies, appended as docs/policy.md tells the operator."""
    return compile_policy(builtin_text() + "\n" + (STARTERS / name).read_text(), f"policy+{name}")


# --- the built-in default --------------------------------------------------------------------------------------


def test_the_package_installs_the_built_in_default_as_a_config_file() -> None:
    contents = YAML(typ="safe").load(NFPM.read_text())["contents"]
    entry = next(item for item in contents if item.get("dst") == "/etc/p0-ssh-agent/policy.cedar")
    assert entry["type"] == "config|noreplace" and entry["file_info"]["mode"] == 644  # nfpm reads 0644 as octal
    assert (NFPM.parent / entry["src"]).read_text() == builtin_text()


@pytest.mark.parametrize(
    ("case", "allowed", "policy"),
    [
        (facts(), True, "p0-permit-managed-users"),
        (facts("provisionUser", exists=False, uid=-1, managed=False, groups=()), True, "p0-permit-managed-users"),
        (facts(managed=False), False, NO_PERMIT),  # someone else's account: not P0's to grant on
        (facts(user="root", uid=0, managed=False, system=True), False, "p0-forbid-root"),
        (facts(user="root", uid=0, managed=True, system=True), False, "p0-forbid-root"),
        (facts(user="daemon", uid=1, managed=True, system=True), False, "p0-forbid-system-accounts"),
        (facts("provisionSudo", sudo=True, runAsUser="root"), False, "p0-forbid-run-as-root"),
        (facts("provisionSudo", sudo=True, runAsUser="ALL"), True, "p0-permit-managed-users"),
        (facts("provisionSudo", sudo=True, runAsUser="postgres"), True, "p0-permit-managed-users"),
    ],
    ids=["managed", "new-user", "unmanaged", "root", "root-adopted", "system", "run-as-root", "run-as-all", "run-as"],
)
def test_the_default_policy(case: Facts, allowed: bool, policy: str) -> None:
    decision = builtin_policy().evaluate(case)
    assert (decision.allowed, policy in decision.policies) == (allowed, True), decision


def test_policy_ids_are_the_id_annotations_or_the_line() -> None:
    policy = compile_policy(
        'permit (principal, action, resource);\n@id("named")\nforbid (principal, action, resource);', "f"
    )
    assert sorted(policy.lines.items()) == [("f:1", 1), ("named", 2)]
    decision = policy.evaluate(facts())
    assert not decision.allowed and decision.policies == ("named",) and policy.where("named") == "named (f:2)"


# --- loading and its refusals ----------------------------------------------------------------------------------


def test_statements_are_split_outside_comments_and_strings() -> None:
    text = (
        '// a; comment\n@id("x;y")\npermit (principal, action, resource)\n'
        '  when { resource.name == "a;\\"b" };\n\nforbid (principal, action, resource);'
    )
    assert [line for line, _ in split_statements(text)] == [2, 6]
    assert split_statements("// only a comment\n\n") == []


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("permit (principal, action, resource);\n\npermit (principal, action, resource) whn { true };", 3, "whn"),
        (
            '@id("a")\npermit (principal, action, resource);\n'
            'forbid (principal, action, resource) when { resource.nmae == "x" };',
            3,
            "`nmae`",
        ),
        ('permit (principal, action, resource) when { context.runAs == "root" };', 1, "`runAs`"),
        ("permit (principal, action, resource)", 1, "parse"),
        ("// nothing but a comment\n", None, "no policies"),
    ],
    ids=["parse-error", "unknown-attribute", "unknown-context", "no-semicolon", "empty"],
)
def test_a_bad_policy_names_the_file_and_line(tmp_path: Path, text: str, line: int | None, words: str) -> None:
    path = tmp_path / "policy.cedar"
    path.write_text(text)
    path.chmod(0o644)
    with pytest.raises(PolicyError) as info:
        load_policy(path)
    prefix = f"{path}:{line}:" if line else f"{path}:"
    assert str(info.value).startswith(prefix) and words in str(info.value), str(info.value)
    assert info.value.exit_code == 78


def test_unsafe_policy_files_are_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.cedar"
    good.write_text(builtin_text())
    good.chmod(0o664)
    with pytest.raises(PolicyError, match=r"writable by group or others.*chmod 644"):
        load_policy(good)
    good.chmod(0o644)
    assert load_policy(good).source == str(good)
    link = tmp_path / "link.cedar"
    link.symlink_to(good)
    with pytest.raises(PolicyError, match="symlink"):
        load_policy(link)
    binary = tmp_path / "binary.cedar"
    binary.write_bytes(b"permit (principal, action, resource);\xff")
    binary.chmod(0o644)
    with pytest.raises(PolicyError, match="not UTF-8"):
        load_policy(binary)


def test_a_policy_too_big_to_read_whole_is_refused_not_cut(tmp_path: Path) -> None:
    # Cut at the limit, this would compile without the forbid at its end (the cut falls inside the comment).
    path = tmp_path / "big.cedar"
    padding = "// padding\n" * (MAX_POLICY_BYTES // 10)
    path.write_text(f"{builtin_text()}\n{padding}forbid (principal, action, resource);\n")
    path.chmod(0o644)
    with pytest.raises(PolicyError, match=f"{path}: it holds more than {MAX_POLICY_BYTES} bytes"):
        load_policy(path)


@pytest.mark.skipif(os.geteuid() != 0, reason="chown to another UID needs root")
def test_a_policy_owned_by_someone_else_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "policy.cedar"
    path.write_text(builtin_text())
    path.chmod(0o644)
    os.chown(path, 4321, 4321)
    with pytest.raises(PolicyError, match="owned by UID 4321"):
        load_policy(path)


def test_a_missing_file_means_the_built_in_default(tmp_path: Path) -> None:
    policy = load_policy(tmp_path / "absent.cedar")
    assert policy.source == BUILTIN_SOURCE and "p0-forbid-root" in policy.lines


# --- evaluation fails closed -----------------------------------------------------------------------------------


def test_a_forbid_that_errors_denies_instead_of_being_skipped() -> None:
    # Cedar skips a policy whose evaluation errors; an overflowing forbid must not become an allow.
    text = (
        builtin_text()
        + '\n@id("overflows")\nforbid (principal, action, resource) when { context.now * 9223372036854775807 > 0 };'
    )
    decision = compile_policy(text, "t").evaluate(facts())
    assert not decision.allowed and decision.policies == ("overflows",) and decision.errors


# --- the starter policies of docs/policy.md --------------------------------------------------------------------


def test_starter_no_sudo() -> None:
    policy = with_starter("no-sudo.cedar")
    denied = policy.evaluate(facts("provisionSudo", sudo=True, runAsUser="ALL"))
    assert not denied.allowed and denied.policies == ("no-sudo-on-this-host",)
    assert policy.evaluate(facts("provisionSudo")).allowed  # sudo: false is a no-op grant upstream
    assert policy.evaluate(facts()).allowed


def test_starter_sudo_only_for_a_group() -> None:
    policy = with_starter("sudo-group.cedar")
    outsider = policy.evaluate(facts("provisionSudo", sudo=True, runAsUser="ALL"))
    assert not outsider.allowed and outsider.policies == ("sudo-only-for-p0-admins",)
    assert policy.evaluate(facts("provisionSudo", sudo=True, runAsUser="ALL", groups=("alice", "p0-admins"))).allowed
    assert policy.evaluate(facts(groups=())).allowed  # keys are not sudo


@pytest.mark.parametrize("command", ["provisionAuthorizedKeys", "provisionCAKeys"])
def test_starter_ed25519_keys_only(command: str) -> None:
    policy = with_starter("ed25519-only.cedar")
    assert policy.evaluate(facts(command, keyType="ssh-ed25519")).allowed
    assert policy.evaluate(facts(command, keyType="sk-ssh-ed25519@openssh.com")).allowed
    for key_type in ("ssh-rsa", "ecdsa-sha2-nistp256"):
        denied = policy.evaluate(facts(command, keyType=key_type))
        assert not denied.allowed and denied.policies == ("keys-ed25519-only",)
    assert policy.evaluate(facts("provisionUser")).allowed


@pytest.mark.parametrize(
    ("weekday", "hour", "allowed"),
    [(1, 8, True), (5, 17, True), (1, 7, False), (3, 18, False), (6, 10, False), (7, 12, False)],
)
def test_starter_office_hours(weekday: int, hour: int, allowed: bool) -> None:
    decision = with_starter("office-hours.cedar").evaluate(facts(weekday=weekday, hour=hour))
    assert decision.allowed == allowed
    if not allowed:
        assert decision.policies == ("grants-in-office-hours",)


# --- `p0-ssh-agent policy check` -------------------------------------------------------------------------------


def policy_check(tmp_path: Path, body: object, *extra: str) -> subprocess.CompletedProcess[str]:
    request = tmp_path / "request.json"
    request.write_text(json.dumps(body))
    config = tmp_path / "config.yaml"
    config.write_text(f"orgId: org-1\nhostId: h\nstateDir: {tmp_path / 'state'}\n")
    argv = [str(AGENT), "policy", "check", "--config", str(config), *extra, str(request)]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_policy_check_explains_allow_and_deny(tmp_path: Path) -> None:
    user = "p0polchk"  # does not exist on this machine: a new user, which the default permits
    grant = {
        "command": "provisionAuthorizedKeys",
        "userName": user,
        "action": "grant",
        "requestId": "r1",
        "publicKey": ED25519,
    }
    allowed = policy_check(tmp_path, grant)
    assert allowed.returncode == 0, allowed.stderr
    assert allowed.stdout.startswith("ALLOW  allowed by p0-permit-managed-users")
    assert f'P0::User::"{user}"' in allowed.stdout and '"keyType": "ssh-ed25519"' in allowed.stdout
    sudo = {
        "command": "provisionSudo",
        "userName": user,
        "action": "grant",
        "requestId": "r1",
        "sudo": True,
        "runAsUser": "root",
    }
    denied = policy_check(tmp_path, {"data": sudo}, "--json")  # a forwarded request's params work too
    assert denied.returncode == 1
    verdict = json.loads(denied.stdout)
    assert verdict["decision"] == "deny" and verdict["policies"] == [{"id": "p0-forbid-run-as-root", "line": 32}]
    revoke = policy_check(tmp_path, {**sudo, "action": "revoke"})
    assert revoke.returncode == 0 and "revokes and read-only commands are always allowed" in revoke.stdout


def test_policy_check_with_a_starter_and_a_time(tmp_path: Path) -> None:
    policy = tmp_path / "policy.cedar"
    policy.write_text(builtin_text() + "\n" + (STARTERS / "office-hours.cedar").read_text())
    policy.chmod(0o644)
    body = {"command": "provisionUser", "userName": "p0polchk", "action": "grant", "requestId": "r2"}
    monday = policy_check(tmp_path, body, "--policy", str(policy), "--at", "2026-11-23T09:30:00")
    sunday = policy_check(tmp_path, body, "--policy", str(policy), "--at", "2026-11-22T09:30:00")
    assert (monday.returncode, sunday.returncode) == (0, 1), (monday.stdout, sunday.stdout)
    assert f"grants-in-office-hours ({policy}:" in sunday.stdout


def test_policy_check_exit_codes_for_bad_input(tmp_path: Path) -> None:
    broken = tmp_path / "broken.cedar"
    broken.write_text("permit (principal, action, resource);\nforbid (principal, action, resource) whn { true };\n")
    broken.chmod(0o644)
    body = {"command": "provisionUser", "userName": "p0polchk", "action": "grant", "requestId": "r3"}
    bad_policy = policy_check(tmp_path, body, "--policy", str(broken))
    assert bad_policy.returncode == 78 and f"{broken}:2:" in bad_policy.stderr
    bad_request = policy_check(tmp_path, {**body, "userName": "bad\nname"})
    assert bad_request.returncode == 65 and "userName" in bad_request.stderr
    not_json = tmp_path / "not.json"
    not_json.write_text("{\n  nope")
    done = subprocess.run([str(AGENT), "policy", "check", str(not_json)], capture_output=True, text=True, check=False)
    assert done.returncode == 65 and f"{not_json}:2:3: not JSON" in done.stderr
