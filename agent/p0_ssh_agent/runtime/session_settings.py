"""What a WebSocket session is configured with and how it tells the server is alive: the part of
runtime/connection.py that the supervisor builds before READY=1, kept apart so that building it does not import the
connection itself (trio-websocket, wsproto, h11), which loads with the first connection attempt, after READY.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import trio

CALL_TIMEOUT_SECONDS = 10.0
LIVENESS_TIMEOUT_SECONDS = 30.0  # braekhus pings every 5 s; its own client gives up after 30 s (§3.4)


@dataclass
class SessionSettings:
    client_id: str
    heartbeat_interval: float
    call_timeout: float = CALL_TIMEOUT_SECONDS
    liveness_timeout: float = LIVENESS_TIMEOUT_SECONDS


@dataclass
class Activity:
    """When bytes last arrived from the server (pings included); updated by the stream wrapper."""

    last: float = field(default_factory=trio.current_time)

    def touch(self) -> None:
        self.last = trio.current_time()
