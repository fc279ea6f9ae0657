"""agent_access/access_policy.py: the issue's fragment verbatim, the built-in default that denies everything, the
file's refusals, each starter policy of docs/policies/agent-access against a truth table computed here without
Cedar, and the main policy's inability to open /ssh/*.

The truth table: for each starter (and the use cases' combinations), the 12 commands x cosigner true/false x the
matching host/account/path, another host, another account, and a path that shares the prefix's *string* but not
its components (/var/www/app2 is not under /var/www/app). The expected answer comes from a small model of each
starter's rules written with plain string operations, so a starter that drifts from its documented meaning fails.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from p0_ssh_agent.agent_access.access_model import AccessCommand, Operation
from p0_ssh_agent.agent_access.access_policy import (
    BUILTIN_ACCESS_SOURCE,
    AccessPolicy,
    access_context,
    builtin_access_text,
    compile_access_policy,
    judged_paths,
    load_access_policy,
    policy_shape,
)
from p0_ssh_agent.core.local_policy import NO_PERMIT, Facts, PolicyError, compile_policy, split_statements
from p0_ssh_agent.host.policy_file import MAX_POLICY_BYTES, load_policy

ROOT = Path(__file__).resolve().parent.parent
STARTERS = ROOT / "docs" / "policies" / "agent-access"
NFPM = ROOT / "nfpm.yaml"
ISSUER = "did:key:z6MkhaXgBZDvotDkL5257faiztiGiC2QtKLGpbnnEGta2doK"
HOST = "ops-01.example.com"
FRAGMENT = (
    'permit (principal, action in [Action::"/ssh/file/read", Action::"/ssh/dir/list", Action::"/ssh/dir/tree"], '
    'resource) when { resource.host == "ops-01.example.com" && resource.username == "deploy" };\n'
    'forbid (principal, action == Action::"/ssh/exec", resource) when { !context.cosigner };\n'
)
FILE_ACTIONS = frozenset(AccessCommand) - {AccessCommand.EXEC}
DELETES = frozenset({AccessCommand.FILE_DELETE, AccessCommand.DIR_DELETE, AccessCommand.DIR_DELETE_RECURSIVE})


def context(command: AccessCommand, *, cosigner: bool, size: int = 0) -> dict[str, object]:
    return {"cosigner": cosigner, "command": command.value, "requestId": "req-1", "hostname": HOST, "size": size}


def judge(
    policy: AccessPolicy, command: AccessCommand, *, host: str, username: str, path: str, cosigner: bool
) -> tuple[bool, tuple[str, ...]]:
    decision = policy.evaluate_all(
        principal=ISSUER,
        command=command,
        host=host,
        username=username,
        paths=(path, path) if command in (AccessCommand.FILE_MOVE, AccessCommand.FILE_COPY) else (path,),
        context=context(command, cosigner=cosigner),
    )
    assert not decision.errors, decision
    return decision.allowed, decision.policies


# --- the model the starters are checked against ---------------------------------------------------------------


@dataclass(frozen=True)
class Permit:
    actions: frozenset[AccessCommand]
    username: str
    prefix: str | None  # None: any path

    def matches(self, command: AccessCommand, host: str, username: str, path: str) -> bool:
        beneath = self.prefix is None or path == self.prefix or path.startswith(self.prefix + "/")
        return command in self.actions and host == HOST and username == self.username and beneath


@dataclass(frozen=True)
class Forbid:
    id: str
    actions: frozenset[AccessCommand]
    unless_cosigner: bool  # True: forbidden without the cosigner; False: forbidden always
    username: str | None = None  # None: on any host, as any account

    def matches(self, command: AccessCommand, host: str, username: str, cosigner: bool) -> bool:
        scoped = self.username is None or (host == HOST and username == self.username)
        return command in self.actions and scoped and not (self.unless_cosigner and cosigner)


READ = Permit(frozenset({AccessCommand.FILE_READ, AccessCommand.DIR_LIST, AccessCommand.DIR_TREE}), "log-reader",
              "/var/log/myapp")  # fmt: skip
UPLOAD_ACTIONS = {AccessCommand.FILE_WRITE, AccessCommand.FILE_CREATE, AccessCommand.DIR_CREATE, AccessCommand.DIR_LIST}
UPLOAD = Permit(frozenset(UPLOAD_ACTIONS), "deploy", "/var/www/app")
NO_EXEC = Forbid("ssh:sftp-upload:no-exec", frozenset({AccessCommand.EXEC}), unless_cosigner=False, username="deploy")
FULL = Permit(FILE_ACTIONS, "recovery", "/srv/app")
EXEC = Permit(frozenset({AccessCommand.EXEC}), "recovery", None)
EXEC_COSIGNER = Forbid("ssh:exec-step-up:cosigner", frozenset({AccessCommand.EXEC}), unless_cosigner=True)
DELETE_COSIGNER = Forbid("ssh:delete-step-up", DELETES, unless_cosigner=True)

# file names -> (its permits, its forbids), as docs/ai-agents-policy.md describes each.
STARTER_MODELS: dict[str, tuple[tuple[Permit, ...], tuple[Forbid, ...]]] = {
    "ssh-host-pinned-read.cedar": ((READ,), ()),
    "ssh-sftp-upload.cedar": ((UPLOAD,), (NO_EXEC,)),
    "ssh-host-subdir-full.cedar": ((FULL,), ()),
    "ssh-exec-step-up.cedar": ((EXEC,), (EXEC_COSIGNER,)),
    "ssh-delete-step-up.cedar": ((), (DELETE_COSIGNER,)),
}
USE_CASES: dict[str, tuple[str, ...]] = {
    "incident-recovery": ("ssh-host-subdir-full.cedar", "ssh-exec-step-up.cedar", "ssh-delete-step-up.cedar"),
    "deploy-bot-beside-exec-step-up": ("ssh-sftp-upload.cedar", "ssh-exec-step-up.cedar"),
}


def scenarios(permits: tuple[Permit, ...]) -> Iterator[tuple[str, str, str, str]]:
    """(name, host, username, path): each permit's own target, beneath it, and the three ways to miss it."""
    for permit in permits or (FULL,):
        prefix = permit.prefix or "/srv/app"
        inside = f"{prefix}/releases/current.txt"
        yield "prefix", HOST, permit.username, prefix
        yield "beneath", HOST, permit.username, inside
        yield "other-host", "ops-02.example.com", permit.username, inside
        yield "other-username", HOST, "intruder", inside
        yield "string-prefix-sibling", HOST, permit.username, f"{prefix}2/releases/current.txt"
        yield "parent", HOST, permit.username, prefix.rsplit("/", 1)[0]


def load_starters(*names: str) -> AccessPolicy:
    text = "\n".join((STARTERS / name).read_text() for name in names)
    return compile_access_policy(text, "+".join(names))


def check_truth_table(names: tuple[str, ...]) -> int:
    permits = tuple(p for name in names for p in STARTER_MODELS[name][0])
    forbids = tuple(f for name in names for f in STARTER_MODELS[name][1])
    policy = load_starters(*names)
    checked = 0
    for label, host, username, path in scenarios(permits):
        for command in AccessCommand:
            for cosigner in (False, True):
                forbidding = [f.id for f in forbids if f.matches(command, host, username, cosigner)]
                permitted = any(p.matches(command, host, username, path) for p in permits)
                allowed, policies = judge(policy, command, host=host, username=username, path=path, cosigner=cosigner)
                where = f"{names} {label} {command.value} cosigner={cosigner}"
                assert allowed == (permitted and not forbidding), where
                if forbidding:
                    assert set(policies) == set(forbidding), where
                elif not permitted:
                    assert policies == (NO_PERMIT,), where
                checked += 1
    return checked


# --- the fragment, the default, the file ------------------------------------------------------------------------


def test_the_issues_fragment_validates_and_behaves_as_written() -> None:
    policy = compile_access_policy(FRAGMENT, "fragment")

    def read(host: str, username: str) -> tuple[bool, tuple[str, ...]]:
        return judge(policy, AccessCommand.FILE_READ, host=host, username=username, path="/var/www/a", cosigner=False)

    assert read(HOST, "deploy") == (True, ("fragment:1",))
    assert read("ops-02.example.com", "deploy")[0] is False
    assert read(HOST, "web")[0] is False
    for command in (AccessCommand.DIR_LIST, AccessCommand.DIR_TREE):
        assert judge(policy, command, host=HOST, username="deploy", path="/", cosigner=False)[0]
    assert not judge(policy, AccessCommand.FILE_WRITE, host=HOST, username="deploy", path="/x", cosigner=True)[0]
    # The forbid: with a permit for exec beside it, exec needs the cosigner.
    opened = compile_access_policy(FRAGMENT + 'permit (principal, action == Action::"/ssh/exec", resource);', "f")

    def run(cosigner: bool) -> tuple[bool, tuple[str, ...]]:
        return judge(opened, AccessCommand.EXEC, host=HOST, username="deploy", path="/var/www", cosigner=cosigner)

    assert run(cosigner=False) == (False, ("f:2",))
    assert run(cosigner=True) == (True, ("f:3",))


def test_the_built_in_default_permits_nothing_and_denies_everything() -> None:
    assert split_statements(builtin_access_text()) == []  # comments only
    policy = load_access_policy(Path("/nonexistent/agent-access.cedar"))
    assert policy.source == BUILTIN_ACCESS_SOURCE
    for command in AccessCommand:
        for cosigner in (False, True):
            for username in ("deploy", "recovery", "log-reader"):
                decision = policy.evaluate(
                    principal=ISSUER, command=command, host=HOST, username=username, path="/var/www/app",
                    context=context(command, cosigner=cosigner),
                )  # fmt: skip
                assert (decision.allowed, decision.policies) == (False, (NO_PERMIT,))


def test_the_shape_says_what_the_permits_name() -> None:
    """What doctor and `policy check` report: how many permits and forbids, and the actions some permit names."""
    shape = policy_shape(compile_access_policy(FRAGMENT, "fragment"))
    assert (shape.permits, shape.forbids) == (1, 1)
    assert shape.permitted == ("/ssh/file/read", "/ssh/dir/list", "/ssh/dir/tree")  # AccessCommand's order
    assert policy_shape(load_access_policy(Path("/nonexistent/agent-access.cedar"))).permits == 0
    everything = policy_shape(compile_access_policy("permit (principal, action, resource);", "all"))
    assert everything.permitted == tuple(command.action for command in AccessCommand)
    one = compile_access_policy('permit (principal, action in Action::"/ssh/exec", resource);', "in")
    assert policy_shape(one).permitted == ("/ssh/exec",)
    forbid_only = policy_shape(compile_access_policy("forbid (principal, action, resource);", "forbid"))
    assert (forbid_only.permits, forbid_only.forbids, forbid_only.permitted) == (0, 1, ())
    upload = policy_shape(load_starters("ssh-sftp-upload.cedar"))
    assert "/ssh/exec" not in upload.permitted and "/ssh/file/write" in upload.permitted


def test_the_package_installs_the_default_as_its_own_config_file() -> None:
    contents = YAML(typ="safe").load(NFPM.read_text())["contents"]
    entry = next(item for item in contents if item.get("dst") == "/etc/p0-ssh-agent/agent-access.cedar")
    assert entry["type"] == "config|noreplace" and entry["file_info"]["mode"] == 644
    assert (ROOT / entry["src"]).read_text() == builtin_access_text()
    # The default's commented example is the fragment, and it compiles when uncommented.
    example = "\n".join(
        line.removeprefix("//").strip()
        for line in builtin_access_text().splitlines()
        if line.startswith("//   permit") or line.startswith("//   forbid") or line.startswith("//           resource")
    )
    assert compile_access_policy(example, "example").compiled.ids == {"policy0": "example:1", "policy1": "example:3"}


def test_the_file_is_checked_like_the_main_policy(tmp_path: Path) -> None:
    path = tmp_path / "agent-access.cedar"
    path.write_text(FRAGMENT)
    path.chmod(0o644)
    assert load_access_policy(path).compiled.ids == {"policy0": f"{path}:1", "policy1": f"{path}:2"}
    path.chmod(0o664)
    with pytest.raises(PolicyError, match="writable by group or others"):
        load_access_policy(path)
    path.chmod(0o644)
    link = tmp_path / "link.cedar"
    link.symlink_to(path)
    with pytest.raises(PolicyError, match="symlink"):
        load_access_policy(link)
    big = tmp_path / "big.cedar"
    big.write_text("//" + "x" * MAX_POLICY_BYTES)
    big.chmod(0o644)
    with pytest.raises(PolicyError, match="more than"):
        load_access_policy(big)


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ('// ok\npermit (principal, action, resource) when { resource.hots == "x" };', 2, "`hots`"),
        ("permit (principal, action, resource) when { context.cosigned };", 1, "`cosigned`"),
        ('permit (principal, action == Action::"/ssh/shell", resource);', 1, "/ssh/shell"),
        ('permit (principal, action in P0::Action::"grant", resource);', 1, "grant"),
        ("permit (principal, action, resource) whn { true };", 1, "whn"),
        ('// c\n@id("a")\npermit (principal, action, resource) when { resource.path like "/a*" && 1 };', 2, "`a`"),
    ],
    ids=["misspelt-attribute", "misspelt-context", "unknown-action", "main-policy-action", "parse", "type-error"],
)
def test_a_bad_access_policy_names_the_file_and_line(tmp_path: Path, text: str, line: int, words: str) -> None:
    path = tmp_path / "agent-access.cedar"
    path.write_text(text)
    path.chmod(0o644)
    with pytest.raises(PolicyError) as info:
        load_access_policy(path)
    assert str(info.value).startswith(f"{path}:{line}:") and words in str(info.value), str(info.value)


def test_an_evaluation_error_denies_naming_the_policy() -> None:
    text = (
        "permit (principal, action, resource);\n"
        '@id("overflowing-guard")\n'
        "forbid (principal, action, resource) when { context.size + 9223372036854775807 < 0 };\n"
    )
    policy = compile_access_policy(text, "f")
    decision = policy.evaluate(
        principal=ISSUER, command=AccessCommand.FILE_WRITE, host=HOST, username="deploy", path="/srv/app/a",
        context=context(AccessCommand.FILE_WRITE, cosigner=True, size=1),
    )  # fmt: skip
    assert not decision.allowed and decision.policies == ("overflowing-guard",) and decision.errors
    # A context without the schema's attributes (a caller's mistake) denies too, rather than skipping a forbid.
    incomplete = policy.evaluate(
        principal=ISSUER, command=AccessCommand.FILE_READ, host=HOST, username="deploy", path="/srv/app/a",
        context={"cosigner": True},
    )  # fmt: skip
    assert not incomplete.allowed and incomplete.errors


def test_a_quote_in_the_issuer_or_the_path_is_an_id_not_cedar_syntax() -> None:
    policy = compile_access_policy('permit (principal, action, resource) when { resource.path == "/a\\"b" };', "f")
    decision = policy.evaluate(
        principal='did:x" || true || "', command=AccessCommand.FILE_READ, host=HOST, username="u", path='/a"b',
        context=context(AccessCommand.FILE_READ, cosigner=False),
    )  # fmt: skip
    assert decision.allowed and not decision.errors


# --- several paths: move and copy -------------------------------------------------------------------------------


def test_move_and_copy_need_every_path_allowed_and_name_the_one_denied() -> None:
    policy = load_starters("ssh-host-subdir-full.cedar")
    for command in (AccessCommand.FILE_MOVE, AccessCommand.FILE_COPY):
        for paths, allowed, named in [
            (("/srv/app/a", "/srv/app/b"), True, ""),
            (("/srv/app/a", "/srv/app2/b"), False, "/srv/app2/b"),
            (("/etc/passwd", "/srv/app/b"), False, "/etc/passwd"),
        ]:
            decision = policy.evaluate_all(
                principal=ISSUER, command=command, host=HOST, username="recovery", paths=paths,
                context=context(command, cosigner=False),
            )  # fmt: skip
            assert decision.allowed is allowed
            assert decision.reason.startswith(f"{named}: ") if named else decision.policies == ("ssh:host-subdir-full",)
    with pytest.raises(ValueError, match="at least one path"):
        policy.evaluate_all(
            principal=ISSUER, command=AccessCommand.FILE_MOVE, host=HOST, username="recovery", paths=(),
            context=context(AccessCommand.FILE_MOVE, cosigner=False),
        )  # fmt: skip


def test_the_context_and_the_paths_an_operation_is_judged_on() -> None:
    write = Operation(AccessCommand.FILE_WRITE, "req-9", "deploy", "", ("/var/www/app/a",), "u.c.s", data=b"12345")
    assert access_context(write, cosigner=False, hostname=HOST) == {
        "cosigner": False, "command": "ssh_file_write", "requestId": "req-9", "hostname": HOST, "size": 5,
    }  # fmt: skip
    assert judged_paths(write, "/var/www/app") == ("/var/www/app/a",)
    run = Operation(AccessCommand.EXEC, "req-9", "deploy", "", (), "u.c.s", argv=("/bin/true",))
    assert access_context(run, cosigner=True, hostname=HOST)["size"] == 0
    assert judged_paths(run, "/var/www/app") == ("/var/www/app",)
    assert judged_paths(Operation(**{**run.__dict__, "cwd": "/var/www/app/bin"}), "/var/www/app") == (
        "/var/www/app/bin",
    )


# --- the starters -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(STARTER_MODELS))
def test_each_starter_has_its_id_and_its_truth_table(name: str) -> None:
    policy = load_starters(name)
    expected_id = "ssh:" + name.removeprefix("ssh-").removesuffix(".cedar")
    assert policy.compiled.ids["policy0"] == expected_id
    assert all(not value.startswith(name) for value in policy.compiled.ids.values()), "every policy has an @id"
    assert check_truth_table((name,)) == 12 * 2 * 6


def test_every_shipped_starter_is_modelled_and_shipped() -> None:
    assert sorted(path.name for path in STARTERS.glob("*.cedar")) == sorted(STARTER_MODELS)
    shipped = {entry.get("src") for entry in YAML(typ="safe").load(NFPM.read_text())["contents"]}
    assert {f"docs/policies/agent-access/{name}" for name in STARTER_MODELS} <= shipped


@pytest.mark.parametrize("case", sorted(USE_CASES))
def test_the_use_cases_combined(case: str) -> None:
    assert check_truth_table(USE_CASES[case]) > 0


def test_the_use_cases_in_words() -> None:
    recovery = load_starters(*USE_CASES["incident-recovery"])

    def as_recovery(command: AccessCommand, path: str, cosigner: bool) -> bool:
        return judge(recovery, command, host=HOST, username="recovery", path=path, cosigner=cosigner)[0]

    assert as_recovery(AccessCommand.FILE_WRITE, "/srv/app/x", cosigner=False)
    assert not as_recovery(AccessCommand.FILE_DELETE, "/srv/app/x", cosigner=False)
    assert as_recovery(AccessCommand.DIR_DELETE_RECURSIVE, "/srv/app/x", cosigner=True)
    assert not as_recovery(AccessCommand.EXEC, "/srv/app", cosigner=False)
    assert as_recovery(AccessCommand.EXEC, "/srv/app", cosigner=True)
    deploy = load_starters(*USE_CASES["deploy-bot-beside-exec-step-up"])

    def as_deploy(command: AccessCommand, path: str, cosigner: bool) -> bool:
        return judge(deploy, command, host=HOST, username="deploy", path=path, cosigner=cosigner)[0]

    assert not as_deploy(AccessCommand.EXEC, "/var/www/app", cosigner=True)  # the deploy bot never execs
    assert as_deploy(AccessCommand.FILE_WRITE, "/var/www/app/index.html", cosigner=False)
    assert not as_deploy(AccessCommand.FILE_WRITE, "/var/www/app2/index.html", cosigner=False)
    assert not as_deploy(AccessCommand.FILE_READ, "/var/www/app/index.html", cosigner=False)


# --- the main policy cannot open /ssh/* --------------------------------------------------------------------------


def test_a_broad_permit_in_the_main_policy_does_not_open_agent_access(tmp_path: Path) -> None:
    main = tmp_path / "policy.cedar"
    main.write_text("permit (principal, action, resource);\n")
    main.chmod(0o644)
    broad = load_policy(main)
    grant = Facts("org-1", "provisionSudo", "deploy", exists=True, uid=1001, managed=True, system=False, groups=())
    grant_context = {
        "requestId": "r", "command": "provisionSudo", "sudo": True, "runAsUser": "ALL", "keyType": "",
        "keyFingerprint": "", "hostname": HOST, "hour": 1, "minute": 0, "weekday": 1, "now": 0,
    }  # fmt: skip
    assert broad.evaluate(Facts(**{**grant.__dict__, "context": grant_context})).allowed  # it opens every grant
    # ... and nothing of agent access, which reads its own file (absent here: the built-in default).
    access = load_access_policy(tmp_path / "agent-access.cedar")
    for command in AccessCommand:
        assert not judge(access, command, host=HOST, username="deploy", path="/var/www/app", cosigner=True)[0]
    # The main schema cannot even name these actions: they are not P0's, with or without the namespace.
    for text in (
        'permit (principal, action == Action::"/ssh/exec", resource);',
        'permit (principal, action == P0::Action::"/ssh/exec", resource);',
        'permit (principal, action in [Action::"/ssh/file/read"], resource);',
    ):
        with pytest.raises(PolicyError, match="does not validate"):
            compile_policy(text, "policy.cedar")
