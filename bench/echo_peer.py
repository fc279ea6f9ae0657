"""The floor for the call scenario: a bare trio-websocket peer that answers every frame at once.

    python -m bench.echo_peer ws://127.0.0.1:PORT

It stands where the agent stands (a client of the bench's WebSocket server, in its own process) and does nothing
but answer: each request frame starts with a 10-character sequence number and an 8-digit response size, and the
answer is that sequence number padded to that size, so the floor moves the same bytes as the agent's real frames.
"""

from __future__ import annotations

import sys

import trio
from trio_websocket import ConnectionClosed, open_websocket_url

SEQUENCE_CHARS = 10
SIZE_CHARS = 8
HEADER_CHARS = SEQUENCE_CHARS + SIZE_CHARS


def answer(frame: str) -> str:
    size = int(frame[SEQUENCE_CHARS:HEADER_CHARS])
    return frame[:SEQUENCE_CHARS].ljust(size, "x")


async def serve(url: str) -> None:
    async with open_websocket_url(url, max_message_size=16 * 1024 * 1024) as ws:
        while True:
            try:
                frame = await ws.get_message()
            except ConnectionClosed:
                return
            await ws.send_message(answer(frame if isinstance(frame, str) else frame.decode()))


if __name__ == "__main__":
    trio.run(serve, sys.argv[1])
