"""provisionAuthorizedKeys and provisionCAKeys: one managed pair per request in ~/.ssh/authorized_keys.

plan_keys is pure: it turns the request and its facts into a Plan (host/actions.py). The text edits are
core.authorized_keys (whole-line markers, exactly one line per pair, everything else kept byte for byte); the file
edit is an EditUserFile that the applier runs through host.safefile (directory fds, O_NOFOLLOW, owner and mode
checks, fsync + rename + directory fsync, restorecon), under the user's lock (the pipeline holds it for the whole
request). Compared with §6.3 / §12 items 1-4 and 6: the key is parsed and re-serialised (no options can be smuggled
in), revoke removes only this request's pair of this kind, and a symlinked ~/.ssh or a file owned by someone else
is refused. A revoke in an account the agent does not manage (P0's Go agent added keys to any user) changes no
owner and no mode: it removes only this request's marked pair, and writes nothing if the file holds none.
A revoke that leaves an account the agent created with no live grant also locks it and ends its sessions, and a
grant unlocks it again (provisioning/access_ends.py, issue 14 item 5).

Ledger order: a grant is recorded before the file is written (ChangeLedger ahead) and a revoke forgotten after, so
a crash in between leaves the ledger claiming a little more than the host holds (harmless to revoke), never less.
A grant whose write fails, for any reason (an unsafe path, a socket in place of the file, a full disk), is
forgotten again by the applier, unless an earlier grant had recorded it: a failure leaves the ledger as it was.
Both happen under the user's lock (lock order: uid before ledger). The ledger records are the request's facts,
read once.

With maxGrantSeconds set, a line carries `expiry-time=` at the ledger's granted_at + maxGrantSeconds (host/openssh.py
picks the form the local OpenSSH reads), so sshd refuses it on time even if the agent is not running.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core import messages
from p0_ssh_agent.core.authorized_keys_format import add_block, ca_line, is_ca_line, key_line, remove_block
from p0_ssh_agent.core.requests import Action, CaKeyRequest, KeyRequest
from p0_ssh_agent.core.sshd_key_store import key_file_path
from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import EditKeyStore, EditUserFile, HostAction, JoinKeyStoreGroup, Plan, RequireAccount
from p0_ssh_agent.host.key_store_files import read_key_file
from p0_ssh_agent.host.ledger import KeyKind, Ledger
from p0_ssh_agent.host.openssh import grant_stamp
from p0_ssh_agent.host.safefile import preview_in_user_dir
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.access_ends import end_access_if_last, locked_answer, unlock_for_grant
from p0_ssh_agent.provisioning.facts import HostFacts, NotManaged, created_by_agent, ledger_created
from p0_ssh_agent.provisioning.planning import PlanBuilder

SSH_DIR = ".ssh"
AUTHORIZED_KEYS = "authorized_keys"


def authorized_keys_edit(
    record: UserRecord, transform: Callable[[bytes], bytes], *, create: bool = True
) -> EditUserFile:
    """The user's authorized_keys := transform(it), through the symlink-safe walk every edit takes (create False:
    a revoke). The applier runs it under the user's lock, which its caller holds."""
    return EditUserFile(record.home, record.uid, record.gid, SSH_DIR, AUTHORIZED_KEYS, transform, create=create)


@dataclass(frozen=True)
class KeyFile:
    """The file sshd reads one account's grants from: its ~/.ssh/authorized_keys, or (key_dir set: keyStore store
    and an account the agent created) its file in the key store. Reconciliation reads and repairs the one in use."""

    record: UserRecord
    key_dir: str | None = None

    @property
    def path(self) -> str:
        if self.key_dir is not None:
            return key_file_path(self.record.name, self.key_dir)
        return f"{self.record.home.rstrip('/')}/{SSH_DIR}/{AUTHORIZED_KEYS}"

    def edit(self, transform: Callable[[bytes], bytes], *, create: bool = True) -> HostAction:
        if self.key_dir is not None:
            return EditKeyStore(self.key_dir, self.record.name, self.record.gid, transform, create=create)
        return authorized_keys_edit(self.record, transform, create=create)

    def read(self) -> bytes:
        """Its content (b"" if missing), through the edits' checks (UnsafePath, FileEditFailed). Blocking."""
        if self.key_dir is not None:
            return read_key_file(self.record.name, key_dir=self.key_dir) or b""
        return read_authorized_keys(self.record)


def key_file_of(record: UserRecord, ledger: Ledger, config: AgentConfig, key_dir: str) -> KeyFile:
    """Where `record`'s grants are, by the ledger's records (issue 14 item 6): the key store with keyStore store
    for an account the ledger says the agent created; adopted and unmanaged accounts keep their own file."""
    if config.key_store == "store" and ledger_created(ledger, record):
        return KeyFile(record, key_dir)
    return KeyFile(record)


def _granted_at(ledger: Ledger, name: str, request_id: str, kind: KeyKind, fingerprint: str) -> str | None:
    """When the ledger says this line was first granted: a repeated grant keeps its first time, hence its expiry."""
    for entry in ledger.keys.get(name, {}).get(request_id, []):
        if (entry.kind, entry.fingerprint) == (kind, fingerprint):
            return entry.granted_at
    return None


def _target(
    builder: PlanBuilder, facts: HostFacts, adopted: tuple[str, ...], action: Action
) -> tuple[UserRecord | None, bool]:
    """The account to edit, and whether the agent manages it. A revoke may also clean an account we do not manage
    (not root): P0's Go agent added keys to any existing user, and a revoke only ever removes this request's own
    marked pair, leaving owners and modes as they are (it did not create them)."""
    try:
        return builder.claim(facts, adopted), True
    except NotManaged:
        record = facts.account
        if action is Action.GRANT or record is None or record.uid == 0:
            raise
        return record, False


def plan_keys(request: KeyRequest | CaKeyRequest, facts: HostFacts, config: AgentConfig) -> Plan | CommandResult:
    """Pure (the clock and grant_stamp's cached OpenSSH version aside): the Plan, or the answer without one."""
    is_ca = isinstance(request, CaKeyRequest)
    kind: KeyKind = "ca" if is_ca else "key"
    key = request.key
    name, request_id = request.user, request.request_id
    if request.action is Action.GRANT and key is None:
        if is_ca:
            # Upstream answers success:false here with the message lost (error ""); we keep the failure and say why.
            return CommandResult(success=False, error=messages.NO_CA_PUBLIC_KEY)
        return CommandResult(success=True, message=messages.NO_PUBLIC_KEY)

    builder = PlanBuilder(facts.ledger)
    record, managed = _target(builder, facts, config.adopt_users, request.action)
    if record is None:
        if request.action is Action.REVOKE:
            # The account is gone, and its keys with it: a retried revoke must not turn into a failure.
            return CommandResult(success=True, message=f"user {name} does not exist; nothing to remove")
        # Refused in a dry run too, with the real run's answer: a dry run's provisionUser grant before this one
        # created nothing, and a dry run answers what a real run would (issue 14 item 7).
        missing = CommandResult(success=False, error=messages.user_not_found(name, f"user: unknown user {name}"))
        builder.add(RequireAccount(missing))
        return builder.plan(missing)
    target = key_file_of(record, facts.ledger, config, facts.key_dir) if managed else KeyFile(record)
    path = target.path

    # The user's lock (held by the pipeline) covers the ledger change and the file edit together, so reconciliation
    # (which takes it too) never sees one without the other and calls an in-flight grant drift.
    if key is not None:  # a grant (a revoke carries no key)
        fingerprint, now = key.fingerprint(), builder.now
        # Recorded before the file is written; if the write fails the applier undoes it: the ledger must not go on
        # claiming a grant the host never held (status, reconciliation, revoke-all and a provisionUser revoke's
        # "other grants" would chase it).
        after = builder.change_ledger(
            lambda ledger: ledger.record_key(name, request_id, kind, fingerprint, now=now), ahead=True
        )
        granted = _granted_at(after, name, request_id, kind, fingerprint) or now
        expiry = grant_stamp(granted, config.max_grant_seconds)
        line = ca_line(name, key, expiry=expiry) if is_ca else key_line(key, expiry=expiry)
        builder.add(target.edit(lambda content: add_block(content, request_id, line)))
        if target.key_dir is not None:
            # The store file first, then the group that makes sshd read it: a failure between them leaves sshd
            # reading the home file, which never held this grant (the answer is the failure).
            builder.add(JoinKeyStoreGroup(name))
        # An earlier last revoke may have locked it (issue 14 item 5): unlocked once the key is in place, so a
        # failed write leaves it locked.
        unlock_for_grant(builder, facts, record, config)
        message = messages.ca_key_added(path, line) if is_ca else messages.key_added(path)
        return builder.plan(CommandResult(success=True, message=message))

    def select(content_line: bytes) -> bool:
        return is_ca_line(content_line) == is_ca

    def remove(content: bytes) -> bytes:
        return remove_block(content, request_id, select=select)

    builder.add(*_removals(facts, record, managed, remove))
    builder.change_ledger(lambda ledger: ledger.forget_keys(name, request_id, kind))  # forgotten after the file edit
    message = messages.ca_key_removed(path) if is_ca else messages.key_removed(path)
    removed = CommandResult(success=True, message=message)
    # The last grant gone: lock the created account and end its sessions, so a key line the user added goes too.
    if managed and end_access_if_last(builder, facts, record, config):
        return builder.plan(locked_answer(name, removed))
    return builder.plan(removed)


def _removals(
    facts: HostFacts, record: UserRecord, managed: bool, remove: Callable[[bytes], bytes]
) -> tuple[HostAction, ...]:
    """Where a revoke removes a pair: the home file always, and for a created account the store file too, in either
    mode: a grant made in the other mode (before `p0-ssh-agent key-store` moved it, or while it ran) must go as
    well, and a revoke that leaves a pair behind somewhere would be access that outlives its grant."""
    home = dataclasses.replace(authorized_keys_edit(record, remove, create=False), keep_owner=not managed)
    if managed and created_by_agent(facts, record):
        return (KeyFile(record, facts.key_dir).edit(remove, create=False), home)
    return (home,)


def read_authorized_keys(record: UserRecord) -> bytes:
    """The user's authorized_keys as it is (b"" if missing), read through the same symlink-safe walk as an edit
    (UnsafePath, FileEditFailed). The caller holds the user's lock if what it reads must not change meanwhile."""
    edit = preview_in_user_dir(
        home=record.home,
        uid=record.uid,
        gid=record.gid,
        subdir=SSH_DIR,
        filename=AUTHORIZED_KEYS,
        transform=lambda data: data,
        create=False,
    )
    return edit.before or b""
