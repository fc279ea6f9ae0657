"""Guardrails the peers lack (issue 6): a local Cedar policy, expiry enforced on the host, reconciliation and drift,
an audit trail, and `doctor`. The host owner's limits on what the backend may ask, enforced before any change."""
