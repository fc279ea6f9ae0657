"""Run random grants and revokes through the provisioning engine until killed (tests/test_crash_consistency.py).

    python -m reliability.crash_driver STATE_DIR SEED USERS...

Prints "op <n>" before each operation and flushes, so the parent knows how many were attempted.
"""

from __future__ import annotations

import random
import sys
from pathlib import Path

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import run_change

KEYS = [
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE crash-a",
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGr6Mb2xFzCJ5QvHjXBKjJ2lpL7yIrCGt3YsmKPTqyrc crash-b",
]
REQUEST_IDS = [f"crash-{i}" for i in range(6)]


def main(state_dir: str, seed: str, users: list[str]) -> None:
    rng = random.Random(int(seed))  # noqa: S311 - a reproducible schedule, not a secret
    # The users were made by the test, not by the agent: adopted, as an operator would list them in adoptUsers.
    config = AgentConfig(state_dir=Path(state_dir), adopt_users=tuple(users))
    engine = Engine.on_host(config, Path(state_dir), audit_trail=AuditTrail.off())
    for n in range(1_000_000):
        user, request_id = rng.choice(users), rng.choice(REQUEST_IDS)
        command = rng.choice(["provisionAuthorizedKeys", "provisionAuthorizedKeys", "provisionCAKeys", "provisionSudo"])
        data: dict[str, object] = {
            "userName": user,
            "requestId": request_id,
            "action": rng.choice(["grant", "revoke"]),
            "publicKey": rng.choice(KEYS),
            "caPublicKey": KEYS[0],
            "sudo": True,
        }
        print(f"op {n}", flush=True)
        result = run_change(engine, parse_change(command, data)).result
        if not result.success:
            print(f"failed {command} {data['action']} {user} {request_id}: {result.error}", file=sys.stderr, flush=True)
            sys.exit(3)


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], sys.argv[3:])
