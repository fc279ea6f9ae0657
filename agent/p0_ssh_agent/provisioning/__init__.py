"""Provisioning: the request line (pipeline.py) and the handlers it runs for each change.

pipeline.py        frame -> parse -> facts -> decide -> handler -> Outcome -> audit entry and result
facts.py           what the host holds for one request (read once) and the pure ownership and policy rules
engine.py          locks, the ledger's store and LedgerRecords, the Plan a dry run prints
authorized_keys.py, sudo_rules.py, users.py, end_sessions.py   one handler per change command
readonly.py        listUsers, runAudit, collectSudoshRecordings
expiry.py, reconcile.py, revoke_everything.py                  the agent's own sweeps
"""
