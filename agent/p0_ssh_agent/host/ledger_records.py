"""The ledger's file formats: the user record and the host record (schema 2), and the whole document (schema 1).

    ledger/host.json          {"schema": 2, "uid_high_water": N, "migrated_from": "sha256:..." | null}
    ledger/users/<name>.json  {"schema": 2, "user": name, "account": {uid, created_at, adopted} | null,
                               "keys": {request_id: [{kind, fingerprint, granted_at}]},
                               "sudo": {request_id: {run_as, granted_at}}}
    ledger.json               {"schema": 1, "uid_high_water", "users", "keys", "sudo"}: the whole ledger in one
                              document, as agents before the per-user layout wrote it (read to migrate it)

Every format is JSON with one field per line (indent 2, sorted keys): the package's maintainer scripts count
"fingerprint", "run_as" and "adopted" lines with grep, without a JSON parser. Reading is strict: an unknown or
missing field, a wrong type, an invalid user name or request id raises LedgerCorrupt naming the file and the
field's path (keys.req-1[0].kind); a higher schema than this agent's is refused, never rewritten. Pure: no I/O.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any, cast

from p0_ssh_agent.core.requests import REQUEST_ID_RE, is_user_name
from p0_ssh_agent.host.ledger_model import Ledger, LedgerCorrupt, SudoEntry, UserEntry

SCHEMA = 2  # the per-user layout
LEGACY_SCHEMA = 1  # ledger.json, one document
_REQUEST_ID = re.compile(REQUEST_ID_RE, re.ASCII)


@dataclass(frozen=True)
class HostRecord:
    uid_high_water: int = 0
    migrated_from: str | None = None  # "sha256:<hex>" of the ledger.json this layout was made from


def _dump(document: dict[str, object]) -> str:
    return json.dumps(document, indent=2, sort_keys=True) + "\n"


def _account(entry: UserEntry) -> dict[str, object]:
    return {"uid": entry.uid, "created_at": entry.created_at, "adopted": entry.adopted}


def _key_requests(ledger: Ledger, user: str) -> dict[str, object]:
    return {
        request_id: [{"kind": e.kind, "fingerprint": e.fingerprint, "granted_at": e.granted_at} for e in entries]
        for request_id, entries in ledger.keys.get(user, {}).items()
    }


# --- writing ------------------------------------------------------------------------------------------------


def user_record_json(ledger: Ledger, name: str) -> str | None:
    """The record of `name` in `ledger`, or None if the ledger holds nothing for it (no file then)."""
    account = ledger.users.get(name)
    keys = _key_requests(ledger, name)
    sudo = {
        request_id: {"run_as": e.run_as, "granted_at": e.granted_at}
        for request_id, e in ledger.sudo.items()
        if e.user == name
    }
    if account is None and not keys and not sudo:
        return None
    record = {"schema": SCHEMA, "user": name, "account": None if account is None else _account(account)}
    return _dump({**record, "keys": keys, "sudo": sudo})


def host_record_json(host: HostRecord) -> str:
    return _dump({"schema": SCHEMA, "uid_high_water": host.uid_high_water, "migrated_from": host.migrated_from})


def to_json(ledger: Ledger) -> str:
    """The whole ledger as one schema-1 document (the format of ledger.json before the per-user layout)."""
    return _dump(
        {
            "schema": LEGACY_SCHEMA,
            "uid_high_water": ledger.uid_high_water,
            "users": {name: _account(entry) for name, entry in ledger.users.items()},
            "keys": {user: _key_requests(ledger, user) for user in ledger.keys},
            "sudo": {
                request_id: {"user": e.user, "run_as": e.run_as, "granted_at": e.granted_at}
                for request_id, e in ledger.sudo.items()
            },
        }
    )


# --- reading ------------------------------------------------------------------------------------------------


class _Reader:
    """Typed access to the parsed document; every failure names the field's path (users.alice.uid)."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, where: str, problem: str) -> LedgerCorrupt:
        return LedgerCorrupt(
            f"{self.source}: {where} {problem}. The ledger was left untouched; restore it from a backup, or move it "
            "aside (the agent then starts with an empty ledger and no longer recognises the users it created)"
        )

    def obj(self, value: object, where: str) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(where, "must be a JSON object")
        return cast("dict[str, Any]", value)

    def string(self, value: object, where: str) -> str:
        if not isinstance(value, str) or not value:
            raise self.fail(where, "must be a non-empty string")
        return value

    def integer(self, value: object, where: str) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise self.fail(where, "must be a non-negative integer")
        return value

    def user_name(self, value: str, where: str) -> str:
        if not is_user_name(value):
            raise self.fail(where, f"is not a valid user name: {value!r}")
        return value

    def request_id(self, value: str, where: str) -> str:
        if not _REQUEST_ID.fullmatch(value):
            raise self.fail(where, f"has an invalid request id: {value!r}")
        return value

    def fields(self, value: object, where: str, names: set[str]) -> dict[str, Any]:
        document = self.obj(value, where)
        missing, unknown = names - document.keys(), document.keys() - names
        if missing or unknown:
            raise self.fail(where, f"must have exactly the fields {sorted(names)} (missing {sorted(missing)}, "
                            f"unknown {sorted(unknown)})")  # fmt: skip
        return document

    def document(self, text: str, schema: int, names: set[str]) -> dict[str, Any]:
        """The top-level object, of exactly `schema` (a higher one is refused as written by a newer agent)."""
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise self.fail(f"line {exc.lineno} column {exc.colno}:", f"is not valid JSON ({exc.msg})") from None
        top = self.obj(raw, "the document")
        found = top.get("schema")
        if isinstance(found, int) and not isinstance(found, bool) and found > schema:
            raise LedgerCorrupt(
                f"{self.source} has schema {found}, newer than this agent understands ({schema}); it was written by "
                "a newer p0-ssh-agent: upgrade the agent rather than let this one rewrite it"
            )
        top = self.fields(top, "the document", names)
        if found != schema or isinstance(found, bool):
            raise self.fail("schema", f"must be {schema}")
        return top

    def account(self, value: object, where: str) -> UserEntry:
        entry = self.fields(value, where, {"uid", "created_at", "adopted"})
        if not isinstance(entry["adopted"], bool):
            raise self.fail(f"{where}.adopted", "must be true or false")
        uid = self.integer(entry["uid"], f"{where}.uid")
        return UserEntry(uid, self.string(entry["created_at"], f"{where}.created_at"), entry["adopted"])

    def key_requests(self, value: object, user: str, where: str, ledger: Ledger) -> None:
        for request_id, entries in self.obj(value, where).items():
            at = f"{where}.{self.request_id(request_id, where)}"
            if not isinstance(entries, list):
                raise self.fail(at, "must be a list")
            for index, item in enumerate(entries):
                line = self.fields(item, f"{at}[{index}]", {"kind", "fingerprint", "granted_at"})
                if line["kind"] not in ("key", "ca"):
                    raise self.fail(f"{at}[{index}].kind", 'must be "key" or "ca"')
                fingerprint = self.string(line["fingerprint"], f"{at}[{index}].fingerprint")
                granted_at = self.string(line["granted_at"], f"{at}[{index}].granted_at")
                ledger.record_key(user, request_id, line["kind"], fingerprint, now=granted_at)

    def sudo_rule(self, request_id: str, user: object, run_as: object, granted_at: object, where: str) -> SudoEntry:
        if not isinstance(user, str) or (run_as is not None and not isinstance(run_as, str)):
            raise self.fail(where, "must name user (a string) and run_as (a string or null)")
        scratch = Ledger()
        try:
            scratch.record_sudo(request_id, user, run_as, now=self.string(granted_at, f"{where}.granted_at"))
        except ValueError as exc:
            raise self.fail(where, f"is not a rule this agent writes ({exc})") from None
        return scratch.sudo[request_id]


def _with_created_uids(ledger: Ledger) -> Ledger:
    # A UID in the table counts even if the mark was lost: never hand it out again.
    created = [entry.uid for entry in ledger.users.values() if not entry.adopted]
    ledger.uid_high_water = max([ledger.uid_high_water, *created])
    return ledger


def from_json(text: str, source: str) -> Ledger:
    """Parse and check a whole schema-1 document (ledger.json); LedgerCorrupt names the first bad field."""
    reader = _Reader(source)
    top = reader.document(text, LEGACY_SCHEMA, {"schema", "uid_high_water", "users", "keys", "sudo"})
    ledger = Ledger(uid_high_water=reader.integer(top["uid_high_water"], "uid_high_water"))
    for name, value in reader.obj(top["users"], "users").items():
        entry = reader.account(value, f"users.{name}")
        ledger.users[reader.user_name(name, f"users.{name}")] = entry
    for user, per_user in reader.obj(top["keys"], "keys").items():
        reader.key_requests(per_user, reader.user_name(user, f"keys.{user}"), f"keys.{user}", ledger)
    for request_id, value in reader.obj(top["sudo"], "sudo").items():
        where = f"sudo.{request_id}"
        rule = reader.fields(value, where, {"user", "run_as", "granted_at"})
        ledger.sudo[request_id] = reader.sudo_rule(request_id, rule["user"], rule["run_as"], rule["granted_at"], where)
    return _with_created_uids(ledger)


def read_user_record(text: str, source: str, name: str, into: Ledger) -> None:
    """Add the records of user `name` (whose file this is: `user` must say so) to `into`.

    Sudo rules are keyed by request id across users; should two records both hold one (a re-grant of a request id
    to another user whose commit did not name the first), the later grant wins, as it did in the drop-in."""
    reader = _Reader(source)
    top = reader.document(text, SCHEMA, {"schema", "user", "account", "keys", "sudo"})
    if top["user"] != name:
        raise reader.fail("user", f"must be {name!r}, the name of its file (found {top['user']!r})")
    if top["account"] is not None:
        account = into.users[name] = reader.account(top["account"], "account")
        if not account.adopted:  # its UID counts even if the host's mark was lost: never hand it out again
            into.uid_high_water = max(into.uid_high_water, account.uid)
    reader.key_requests(top["keys"], name, "keys", into)
    for request_id, value in reader.obj(top["sudo"], "sudo").items():
        where = f"sudo.{request_id}"
        rule = reader.fields(value, where, {"run_as", "granted_at"})
        entry = reader.sudo_rule(request_id, name, rule["run_as"], rule["granted_at"], where)
        held = into.sudo.get(request_id)
        if held is None or (held.granted_at, held.user) < (entry.granted_at, entry.user):
            into.sudo[request_id] = entry


def read_host_record(text: str, source: str) -> HostRecord:
    reader = _Reader(source)
    top = reader.document(text, SCHEMA, {"schema", "uid_high_water", "migrated_from"})
    migrated_from = top["migrated_from"]
    if migrated_from is not None:
        reader.string(migrated_from, "migrated_from")
    return HostRecord(reader.integer(top["uid_high_water"], "uid_high_water"), migrated_from)
