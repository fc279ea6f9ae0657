"""provisionAuthorizedKeys and provisionCAKeys: one managed pair per request in ~/.ssh/authorized_keys.

The text edits are core.authorized_keys (whole-line markers, exactly one line per pair, everything else kept byte
for byte); the file edit is host.safefile.edit_in_user_dir (directory fds, O_NOFOLLOW, owner and mode checks,
fsync + rename + directory fsync, restorecon), under the user's lock (the pipeline holds it for the whole request).
Compared with §6.3 / §12 items 1-4 and 6: the key is parsed and re-serialised (no options can be smuggled in), revoke
removes only this request's pair of this kind, and a symlinked ~/.ssh or a file owned by someone else is refused.

Ledger order: a grant is recorded before the file is written and a revoke forgotten after, so a crash in between
leaves the ledger claiming a little more than the host holds (harmless to revoke), never less. Both happen under the
user's lock (lock order: uid before ledger). The ledger records are the request's facts, read once.

With maxGrantSeconds set, a line carries `expiry-time=` at the ledger's granted_at + maxGrantSeconds (host/openssh.py
picks the form the local OpenSSH reads), so sshd refuses it on time even if the agent is not running.
"""

from __future__ import annotations

from collections.abc import Callable

from p0_ssh_agent.core import messages
from p0_ssh_agent.core.authorized_keys_format import add_block, ca_line, is_ca_line, key_line, remove_block
from p0_ssh_agent.core.requests import Action, CaKeyRequest, KeyRequest
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.ledger import KeyKind, Ledger, utc_now
from p0_ssh_agent.host.openssh import grant_stamp
from p0_ssh_agent.host.safefile import FileEdit, UnsafePath, edit_in_user_dir
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.engine import Engine, LedgerRecords, Plan
from p0_ssh_agent.provisioning.facts import HostFacts, NotManaged, claimed_account

SSH_DIR = ".ssh"
AUTHORIZED_KEYS = "authorized_keys"


def edit_authorized_keys(
    engine: Engine,
    record: UserRecord,
    transform: Callable[[bytes], bytes],
    *,
    create: bool = True,
    read_only: bool = False,
) -> FileEdit:
    """Apply `transform` to the user's authorized_keys through the symlink-safe walk every edit takes (create False:
    a revoke; read_only: only read it, as reconciliation does). The caller holds the user's lock."""
    return edit_in_user_dir(
        home=record.home,
        uid=record.uid,
        gid=record.gid,
        subdir=SSH_DIR,
        filename=AUTHORIZED_KEYS,
        transform=transform,
        create=create,
        dry_run=engine.dry_run or read_only,
    )


def _granted_at(ledger: Ledger, name: str, request_id: str, kind: KeyKind, fingerprint: str) -> str:
    """When the ledger says this line was first granted: a repeated grant keeps its first time, hence its expiry."""
    for entry in ledger.keys.get(name, {}).get(request_id, []):
        if (entry.kind, entry.fingerprint) == (kind, fingerprint):
            return entry.granted_at
    return utc_now()


def _is_recorded(ledger: Ledger, name: str, request_id: str, kind: KeyKind, fingerprint: str) -> bool:
    entries = ledger.keys.get(name, {}).get(request_id, [])
    return any((entry.kind, entry.fingerprint) == (kind, fingerprint) for entry in entries)


def _forget_key(ledger: Ledger, name: str, request_id: str, kind: KeyKind, fingerprint: str) -> None:
    """Undo one record_key, leaving the request's other lines recorded."""
    kept = [
        entry
        for entry in ledger.forget_keys(name, request_id)
        if (entry.kind, entry.fingerprint) != (kind, fingerprint)
    ]
    if kept:
        ledger.keys.setdefault(name, {})[request_id] = kept


def _target(engine: Engine, facts: HostFacts, records: LedgerRecords, action: Action) -> UserRecord | None:
    """The account to edit. A revoke may also clean an account we do not manage (not root): P0's Go agent added
    keys to any existing user, and a revoke only ever removes this request's own marked pair."""
    try:
        return claimed_account(facts, records, engine.config.adopt_users)
    except NotManaged:
        record = facts.account
        if action is Action.GRANT or record is None or record.uid == 0:
            raise
        return record


def provision_keys(
    engine: Engine, request: KeyRequest | CaKeyRequest, facts: HostFacts, records: LedgerRecords, plan: Plan
) -> CommandResult:
    is_ca = isinstance(request, CaKeyRequest)
    kind: KeyKind = "ca" if is_ca else "key"
    key = request.key
    name, request_id = request.user, request.request_id
    if request.action is Action.GRANT and key is None:
        if is_ca:
            # Upstream answers success:false here with the message lost (error ""); we keep the failure and say why.
            return CommandResult(success=False, error=messages.NO_CA_PUBLIC_KEY)
        return CommandResult(success=True, message=messages.NO_PUBLIC_KEY)

    record = _target(engine, facts, records, request.action)
    if record is None:
        if request.action is Action.REVOKE:
            # The account is gone, and its keys with it: a retried revoke must not turn into a failure.
            return CommandResult(success=True, message=f"user {name} does not exist; nothing to remove")
        if engine.dry_run and key is not None:
            # In a dry run the provisionUser grant before this one created nothing: plan on the account to be.
            expiry = grant_stamp(utc_now(), engine.config.max_grant_seconds)
            line = ca_line(name, key, expiry=expiry) if is_ca else key_line(key, expiry=expiry)
            plan.note(f"{name} does not exist yet (provisionUser creates it); its authorized_keys would get:")
            plan.note(f"+# RequestID: {request_id}\n+{line}")
            return CommandResult(success=True, message=messages.dry_run(request.command.value, name))
        return CommandResult(success=False, error=messages.user_not_found(name, f"user: unknown user {name}"))
    path = f"{record.home.rstrip('/')}/{SSH_DIR}/{AUTHORIZED_KEYS}"

    # The user's lock (held by the pipeline) covers the ledger change and the file edit together, so reconciliation
    # (which takes it too) never sees one without the other and calls an in-flight grant drift.
    if key is not None:  # a grant (a revoke carries no key)
        fingerprint = key.fingerprint()
        before = records.committed
        recorded = _is_recorded(before, name, request_id, kind, fingerprint)
        after = records.after(lambda ledger: ledger.record_key(name, request_id, kind, fingerprint))
        expiry = grant_stamp(_granted_at(after, name, request_id, kind, fingerprint), engine.config.max_grant_seconds)
        line = ca_line(name, key, expiry=expiry) if is_ca else key_line(key, expiry=expiry)
        records.commit(after)  # recorded before the file is written
        try:
            edit = edit_authorized_keys(engine, record, lambda content: add_block(content, request_id, line))
        except UnsafePath:
            # Refused before anything was written (symlinked ~/.ssh, foreign owner): the ledger must not go on
            # claiming a grant the host never held (status, reconciliation and revoke-all would chase it).
            if not recorded:
                records.change(lambda led: _forget_key(led, name, request_id, kind, fingerprint))
            raise
        plan.file(edit)
        message = messages.ca_key_added(path, line) if is_ca else messages.key_added(path)
        return CommandResult(success=True, message=message)

    def select(content_line: bytes) -> bool:
        return is_ca_line(content_line) == is_ca

    removal = edit_authorized_keys(
        engine, record, lambda content: remove_block(content, request_id, select=select), create=False
    )
    plan.file(removal)
    records.change(lambda ledger: ledger.forget_keys(name, request_id, kind))  # forgotten after the file edit
    return CommandResult(success=True, message=messages.ca_key_removed(path) if is_ca else messages.key_removed(path))
