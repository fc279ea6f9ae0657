"""How a handler builds its Plan (host/actions.py) from a request's facts, without touching the host.

A PlanBuilder follows the ledger as the plan's own changes leave it (pure: copies of the facts' records), so a
handler can ask what it has recorded so far, and collects the actions in the order the applier is to run them.
"""

from __future__ import annotations

from collections.abc import Collection

from p0_ssh_agent.host.accounts import UserRecord
from p0_ssh_agent.host.actions import Answer, ChangeLedger, HostAction, LedgerChange, Plan
from p0_ssh_agent.host.ledger import Ledger, copy_ledger, utc_now
from p0_ssh_agent.provisioning.facts import HostFacts, claim


class PlanBuilder:
    def __init__(self, ledger: Ledger) -> None:
        self.ledger = copy_ledger(ledger)  # the records as the plan so far leaves them
        self.actions: list[HostAction] = []
        self.now = utc_now()  # one time for every record the plan makes: the applier's commits are the plan's

    def change_ledger(self, change: LedgerChange, *, ahead: bool = False) -> Ledger:
        """Add one ledger commit; the ledger after it. ahead: recorded ahead of the effect that follows it (a
        grant's record), so undone if that effect fails (host/actions.py ChangeLedger)."""
        after = copy_ledger(self.ledger)
        change(after)
        self.ledger = after
        self.actions.append(ChangeLedger(change, ahead=ahead))
        return after

    def add(self, *actions: HostAction) -> None:
        self.actions.extend(actions)

    def claim(self, facts: HostFacts, adopted: Collection[str]) -> UserRecord | None:
        """facts.claim, and an adoptable account recorded as adopted (one commit) before anything else changes."""
        record = claim(facts, adopted)
        if record is not None and record.name not in self.ledger.users:
            name, uid, now = record.name, record.uid, self.now
            # Ahead of the first effect: a request that fails adopts nothing.
            self.change_ledger(lambda ledger: ledger.record_user(name, uid, adopted=True, now=now), ahead=True)
        return record

    def plan(self, answer: Answer) -> Plan:
        return Plan(tuple(self.actions), answer)
