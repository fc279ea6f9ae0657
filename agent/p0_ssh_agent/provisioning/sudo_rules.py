"""provisionSudo: one `<user> ALL=(<runAs|ALL>) NOPASSWD: ALL` rule per request id, in /etc/sudoers.d/p0-ssh-agent.

The drop-in is the truth for sudo: under the sudoers lock it is read and parsed strictly (core.sudoers.parse_dropin,
so a hand-edited file is refused, not silently rewritten), changed as a set of grants, rendered whole, checked by
visudo before the rename and again after it (host.sudoers_install.install_dropin, which puts the old file back on
failure: sudo is never left broken). The ledger's sudo map then mirrors the file, for `status` and `revoke-all`.

plan_sudo is pure: the read under the lock is the applier's (an UnderSudoersLock action), and what follows it
(InstallSudoers, then the ledger's mirror) is a pure function of the drop-in's content (rules_change).

Revoke also takes the request's rule out of the Go agent's /etc/sudoers-p0 (§6.4), through the same checks.
Compared with §12 items 7-9: names are validated before they get near a rule, the drop-in sits where sudo's
#includedir reads it (no include line is ever appended to /etc/sudoers), and a failure changes nothing.
"""

from __future__ import annotations

from collections.abc import Callable

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.authorized_keys_format import remove_block
from p0_ssh_agent.core.requests import Action, SudoRequest
from p0_ssh_agent.core.sudoers import DROPIN_DIR, DROPIN_NAME, SudoGrant, parse_dropin, render_dropin, rule
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import (
    ChangeLedger,
    EditLegacySudoers,
    HostAction,
    InstallSudoers,
    Plan,
    RequireAccount,
    RequireSudo,
    UnderSudoersLock,
)
from p0_ssh_agent.host.ledger import Ledger, SudoEntry, copy_ledger, utc_now
from p0_ssh_agent.host.rootfile import read_root_file
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.access_ends import end_access_if_last, locked_answer, unlock_for_grant
from p0_ssh_agent.provisioning.facts import HostFacts, NotManaged, claim
from p0_ssh_agent.provisioning.planning import PlanBuilder

DROPIN_PATH = f"{DROPIN_DIR}/{DROPIN_NAME}"

Grants = dict[str, SudoGrant]  # request id -> its rule: one rule per request, a re-grant replaces it


def plan_sudo(request: SudoRequest, facts: HostFacts, config: AgentConfig) -> Plan | CommandResult:
    name, request_id = request.user, request.request_id
    builder = PlanBuilder(facts.ledger)
    if request.action is Action.GRANT:
        if not request.sudo:
            return CommandResult(success=True, message=messages.SUDO_NOT_REQUESTED)
        record = builder.claim(facts, config.adopt_users)
        if record is None:
            # Refused in a dry run too: a dry run answers what a real run would (issue 14 item 7).
            missing = CommandResult(success=False, error=messages.user_not_found(name, f"user: unknown user {name}"))
            builder.add(RequireAccount(missing))
        builder.add(RequireSudo())  # sudo not installed: the same 412 refusal in both modes, before any read
        grant = SudoGrant(request_id, name, request.run_as)

        def add(grants: Grants) -> None:
            grants[request_id] = grant

        builder.add(rules_change(add, (name,)))
        if record is not None:  # sudo refuses an expired account: an earlier last revoke's lock goes (item 5)
            unlock_for_grant(builder, facts, record, config)
        return builder.plan(CommandResult(success=True, message=messages.sudo_granted(rule(name, request.run_as))))

    # A revoke is keyed by the request id alone, like upstream's; the user named in it does not limit it.
    builder.add(rules_change(lambda grants: grants.pop(request_id, None), (name,)))
    # Most hosts never ran the Go agent: the applier skips this when there is no /etc/sudoers-p0.
    builder.add(EditLegacySudoers(lambda content: remove_block(content, request_id)))
    revoked = CommandResult(success=True, message=messages.sudo_revoked(request_id))
    # Judged on the ledger's mirror of the drop-in (the records this request read): its last grant gone, a created
    # account is locked and its sessions ended (provisioning/access_ends.py, issue 14 item 5).
    record = _own_account(facts, config)
    after = copy_ledger(builder.ledger)
    after.sudo.pop(request_id, None)
    if record is not None and end_access_if_last(builder, facts, record, config, after=after):
        return builder.plan(locked_answer(name, revoked))
    return builder.plan(revoked)


def _own_account(facts: HostFacts, config: AgentConfig) -> UserRecord | None:
    try:
        return claim(facts, config.adopt_users)
    except NotManaged:
        return None


def remove_user_rules(name: str) -> UnderSudoersLock:
    """Take every rule of `name` out of the drop-in (before its account is deleted), mirrored for `name`."""

    def drop(grants: Grants) -> None:
        for request_id in [rid for rid, grant in grants.items() if grant.user == name]:
            del grants[request_id]

    return rules_change(drop, (name,))


def parse_rules(data: bytes | None) -> Grants:
    """The grants in the drop-in's content; AgentError if it is not a file this agent wrote."""
    if data is None:
        return {}
    try:
        return {grant.request_id: grant for grant in parse_dropin(data.decode("utf-8"))}
    except (UnicodeDecodeError, ValueError) as exc:
        raise AgentError(
            f"{DROPIN_PATH} is not as p0-ssh-agent wrote it ({exc}); refusing to rewrite it. "
            "Fix or remove it by hand (visudo -f), then retry"
        ) from None


def current_rules() -> Grants:
    """The grants in the drop-in now; AgentError if it is not a file this agent wrote."""
    return parse_rules(read_root_file(DROPIN_PATH))


def rules_change(change: Callable[[Grants], object], users: tuple[str, ...] | None = ()) -> UnderSudoersLock:
    """Change the drop-in's grants, then mirror them into the ledger. `users`: a request's change, mirrored (into
    the request's own records, read once under the user's lock) for the users whose rules it touched and those
    named; None (the agent's own sweeps): mirrored whole into the whole ledger, read under the sudoers lock."""

    def then(data: bytes | None) -> tuple[HostAction, ...]:
        grants = parse_rules(data)
        before = dict(grants)
        change(grants)
        actions: list[HostAction] = []
        # An unchanged set is still re-rendered for real (it repairs a drop-in that lost its mode), unless empty.
        if grants != before or grants:
            text = render_dropin(grants.values()) if grants else None
            actions.append(InstallSudoers(text, repair_only=grants == before))
        if users is None:
            actions.append(ChangeLedger(lambda ledger: _mirror(ledger, grants)))
        else:
            # The users whose rules changed, and the request's own: another user's records are left as they are
            # (a rule of theirs the ledger lost is reconciliation's to report).
            both = (*before.values(), *grants.values())
            touched = {g.user for g in both if before.get(g.request_id) != grants.get(g.request_id)} | set(users)
            actions.append(ChangeLedger(lambda ledger: _mirror(ledger, grants, touched)))
        return tuple(actions)

    return UnderSudoersLock(DROPIN_PATH, then)


def _mirror(ledger: Ledger, grants: Grants, users: set[str] | None = None) -> None:
    """Make the ledger's sudo map say what the drop-in holds, keeping each surviving grant's time (for `users`
    only, when given: the rest of a request's snapshot is left as it was read)."""
    now = utc_now()
    mirrored: dict[str, SudoEntry] = {}
    if users is not None:
        mirrored = {rid: entry for rid, entry in ledger.sudo.items() if entry.user not in users}
        grants = {rid: grant for rid, grant in grants.items() if grant.user in users}
    for request_id, grant in grants.items():
        old = ledger.sudo.get(request_id)
        same = old is not None and (old.user, old.run_as) == (grant.user, grant.run_as)
        mirrored[request_id] = old if same and old is not None else SudoEntry(grant.user, grant.run_as, now)
    ledger.sudo = mirrored
