"""Scoped file operations and gated exec for AI agents (issue 17), enforced on this host. Off by default.

The line of one `ssh_*` request (the same shape as provisioning/pipeline.py's):

    body --operations.parse_operation--> Operation                       (pure; hostile until here)
      -> facts: the target account (eligibility.py), the issuer/approver keys (trust_keys.py), the clock
      -> decision (gate.py, pure but for the replay cache's one write):
           the kill switch and agentAccessUsers; the account rules (never root, system, locked, root-equivalent)
           the UCAN (capability.py): signature, time, audience, no delegation, host/username/path_prefix
           the cosignature (cosign.py + replay_cache.py): context.cosigner
           the agent-access Cedar policy (access_policy.py), once per path
      -> plan: a WorkerJob (access_model.py)
      -> apply: confine.py runs worker_main.py as the target account in its own transient unit (or the namespace
         fallback); its reply is hostile input, bounded and parsed
      -> answer (answers.py) and one audit entry

Layering: this package sits beside provisioning/ (layer 3); runtime/ routes `ssh_*` commands here, on a lane of
their own (runtime/worker.py), so a P0 grant or revoke never waits behind an AI operation.
"""
