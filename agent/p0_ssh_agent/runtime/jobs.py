"""What the runtime needs to know about a `call` before executing it (pure).

The reader must never block, and requests for one user must run one at a time, so the runtime reads a few
fields of the forwarded request *before* the full validation that the pipeline does. These fields are used for
locking, de-duplication and the canonical log line only; nothing here decides what happens on the host, so a
hostile value can at worst pick a lock name. Values that are not short printable strings become "-".
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass

from p0_ssh_agent.protocol.forwarded import ForwardedRequest

_SAFE_TOKEN = re.compile(r"[A-Za-z0-9_.@:-]{1,128}")
ABSENT = "-"


def _field(data: Mapping[str, object], name: str) -> str:
    # Go's encoding/json matches keys case-insensitively (upstream-protocol.md §5.3); do the same here so the lock
    # key agrees with what the pipeline will act on.
    lowered = name.lower()
    for key, value in data.items():
        if isinstance(key, str) and key.lower() == lowered:
            if isinstance(value, str) and _SAFE_TOKEN.fullmatch(value):
                return value
            return ABSENT
    return ABSENT


@dataclass(frozen=True, slots=True)
class JobKey:
    """The identity of a request for serialisation, de-duplication and logging."""

    command: str
    user: str
    action: str
    request_id: str

    @property
    def dedupe_key(self) -> tuple[str, str, str, str] | None:
        """Deliveries with the same key while the first is in flight get the first's result, if they carry the
        same payload (payload_digests); another payload under the same key is refused (runtime/worker.py).

        Only requests that carry a request id are de-duplicated: read-only commands without one are cheap and a
        second delivery may legitimately want fresh data.
        """
        if self.request_id == ABSENT or not self.command:
            return None
        return (self.command, self.request_id, self.action, self.user)

    @property
    def lock_name(self) -> str | None:
        """Requests for the same target user are serialised; requests without a (usable) user take no lock, so
        listUsers and runAudit do not queue behind one another. The engine's own file locks still order every
        host edit, whoever makes it."""
        return None if self.user == ABSENT else self.user


def job_key(request: ForwardedRequest) -> JobKey:
    """The key of a parsed `call`; its command is the one parse_forwarded_request worked out, bounded here."""
    command = request.command
    data = request.data if isinstance(request.data, Mapping) else {}
    safe_command = command if _SAFE_TOKEN.fullmatch(command or "") else (ABSENT if command else "")
    return JobKey(
        command=safe_command,
        user=_field(data, "userName"),
        action=_field(data, "action"),
        request_id=_field(data, "requestId"),
    )


Payload = Mapping[str, str]
"""A request body as de-duplication compares it: field name (lower-cased) -> a digest of its value."""


def payload_digests(request: ForwardedRequest) -> Payload:
    """What a second delivery must repeat to be merged with the first: every member of the request body (`data`).

    A retry of the same request (the tunnel server's retryWithBackoff, a backend resending after a timeout)
    repeats the body exactly; what travels around it (headers, `options.timeoutMillis`, the JSON-RPC id) is
    transport and is not compared. Names are lower-cased because the pipeline reads them case-insensitively, as
    Go's encoding/json does, and values are kept as digests only: no key material is held or echoed.
    """
    data = request.data if isinstance(request.data, Mapping) else {}
    values: dict[str, list[object]] = {}
    for name, value in data.items():
        values.setdefault(str(name).lower(), []).append(value)
    return {
        name: hashlib.sha256(
            json.dumps(found, sort_keys=True, separators=(",", ":"), default=repr).encode()
        ).hexdigest()
        for name, found in values.items()
    }


def differing_fields(first: Payload, second: Payload) -> list[str]:
    """The names of the members one payload has and the other lacks or holds with another value (bounded names)."""
    names = sorted(name for name in first.keys() | second.keys() if first.get(name) != second.get(name))
    return [name if _SAFE_TOKEN.fullmatch(name) else ABSENT for name in names]
