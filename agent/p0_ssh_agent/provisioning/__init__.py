"""Provisioning: the request line (pipeline.py) and the handlers it runs for each change.

pipeline.py        frame -> parse -> facts -> decide -> plan -> apply -> Outcome -> audit entry and result
facts.py           what the host holds for one request (read once) and the pure ownership and policy rules
engine.py          the applier (the host's, or a dry run's describing one), the configuration, the audit trail
planning.py        PlanBuilder: how a handler builds its Plan (host/actions.py), following the ledger it changes
authorized_keys.py, sudo_rules.py, users.py, end_sessions.py   one pure handler (plan_<command>) per change command
readonly.py        listUsers, runAudit, collectSudoshRecordings
expiry.py, reconcile.py, revoke_everything.py                  the agent's own sweeps
drift.py           reconciliation's pure part: the drift between ledger and host, and the repair's Plan
"""
