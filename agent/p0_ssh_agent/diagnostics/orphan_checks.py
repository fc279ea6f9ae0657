"""`p0-ssh-agent doctor`: grants on the host that no ledger knows about (issue 12).

The ledger is how the agent (and `revoke-all`) find what it granted. Grants outlive it when it is lost: a purge by a
package before 0.2 deleted it with the users, keys and sudo rules still in place; a restored backup; a state
directory moved aside. Reconciliation (provisioning/reconcile.py) compares only what the ledger holds, so those
grants are invisible to it; this check walks the host instead:

    sudo   rules in the agent's drop-in (/etc/sudoers.d/p0-ssh-agent) when there is no ledger at all (with a
           ledger, a rule it lacks is already reconciliation's `sudo_unknown`)
    keys   pairs under a "# RequestID: <id>" marker (core/authorized_keys_format.py) in the authorized_keys of a local
           account (UID_MIN and up), or in its file in the key store, whose request the ledger does not hold for
           that account: also what the Go agent left, since it wrote the same marker

Read-only like the rest of doctor: the files are read through the same symlink-safe walk a grant takes, bounded,
and no lock is taken. A warning, never a failure: nothing is broken, but nothing will ever revoke these.
"""

from __future__ import annotations

import pwd
from collections.abc import Callable, Iterable
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.authorized_keys_format import blocks
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.ledger import Ledger, ledger_path, load_ledger
from p0_ssh_agent.provisioning.authorized_keys import KeyFile
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.sudo_rules import DROPIN_PATH, current_rules

# A directory service that enumerates could list every account of the company: doctor looks at this many at most.
MAX_ACCOUNTS = 5000
FIX = (
    "nothing will revoke these: if they are the agent's, put the ledger back (its backup) and run "
    "`p0-ssh-agent revoke-all`; otherwise remove each '# RequestID: <id>' line with the key line after it, and the "
    f"rule from {DROPIN_PATH} (visudo -c afterwards), by hand"
)


def local_accounts(min_uid: int, entries: Callable[[], Iterable[pwd.struct_passwd]] = pwd.getpwall) -> list[str]:
    """Names of the accounts a grant could have gone to: UID_MIN and up, as many as MAX_ACCOUNTS."""
    names: list[str] = []
    for entry in entries():
        if entry.pw_uid >= min_uid:
            names.append(entry.pw_name)
            if len(names) >= MAX_ACCOUNTS:
                break
    return sorted(names)


def _unknown_key_pairs(engine: Engine, ledger: Ledger, user: str) -> list[str]:
    record = accounts.lookup_user(user)
    if record is None:
        return []
    owned = ledger.keys.get(user, {})
    found: list[str] = []
    # Both files a grant can be in: ~/.ssh/authorized_keys, and the account's file in the key store (issue 14 item 6).
    for key_file in (KeyFile(record), KeyFile(record, engine.key_dir)):
        try:
            content = key_file.read()
        except AgentError:
            continue  # a file the agent refuses to read is not one it wrote to either
        found += [
            f"key {user} {request_id} {key_file.path}: {len(lines)} line(s) under the marker, in no ledger"
            for request_id, lines in sorted(blocks(content).items())
            if request_id not in owned and lines
        ]
    return found


def check_orphans(config: AgentConfig, state_dir: Path, *, users: list[str] | None = None) -> Finding:
    """Agent sudo rules and agent-marked key lines that no ledger knows about (module docstring)."""
    has_ledger = ledger_path(state_dir).exists()
    try:
        ledger = load_ledger(state_dir) if has_ledger else Ledger()
    except AgentError as exc:
        return Finding("orphans", "skip", f"the ledger cannot be read ({exc}): see the ledger finding")
    engine = Engine.describing(config, state_dir, audit_trail=AuditTrail.off())  # only looks
    found: list[str] = []
    if not has_ledger:
        try:
            rules = current_rules()
        except AgentError as exc:
            found.append(f"sudo {DROPIN_PATH}: {exc}")
        else:
            found += [
                f"sudo {g.user} {rid} {DROPIN_PATH}: rule '{g.rule}', in no ledger" for rid, g in sorted(rules.items())
            ]
    for user in accounts_to_check(users):
        found += _unknown_key_pairs(engine, ledger, user)
    path = ledger_path(state_dir)
    if not found:
        detail = f"every marked key line is in the ledger {path}" if has_ledger else f"none, and no ledger at {path}"
        return Finding("orphans", "ok", detail)
    where = f"not in the ledger {path}" if has_ledger else f"there is no ledger at {path}"
    return Finding(
        "orphans", "warn", f"{len(found)} agent grant(s) on this host that no ledger knows ({where})", FIX, tuple(found)
    )


def accounts_to_check(users: list[str] | None) -> list[str]:
    return users if users is not None else local_accounts(accounts.uid_min())
