"""Soak: many mixed requests with reconnects in between; the agent's memory and file descriptors stay flat.

The agent runs as a real process (dry-run, so no host changes) against the in-process dev backend. Requests mix
no-command calls, dry-run grants for many users, read-only listUsers, hostile requests and unknown commands, 20 at a
time; every 1,000 requests the backend drops the connection, and garbage frames arrive in between. The agent's RSS
and open descriptors are sampled from /proc after a warm-up and at the end.

P0_SOAK_REQUESTS sets the size (default 3,000 for `make test`; `make reliability` runs 100,000).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
import trio

from daemon_helpers import start_agent
from p0_ssh_agent.devbackend.server import CallFailed, DevBackend
from p0_ssh_agent.identity.signing_key import generate_keys, load_public_jwk_file
from reliability.figures import record

pytestmark = pytest.mark.slow  # a real agent process, thousands of requests in wall-clock time

AGENT = Path(sys.executable).parent / "p0-ssh-agent"
ORG, HOST = "soak-org", "host-1"
CLIENT_ID = f"{ORG}:{HOST}:ssh"
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE soak"
CONCURRENCY = 20
DROP_EVERY = 1000


def _rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def _fds(pid: int) -> int:
    return sum(1 for _ in Path(f"/proc/{pid}/fd").iterdir())


def _request(n: int) -> tuple[dict[str, object], bool]:
    """The n-th request and whether it must succeed."""
    kind = n % 5
    if kind == 0:
        return {}, True  # no command: "Request logged"
    if kind == 1:
        user = f"soak{n % 997}"
        # A grant for the missing user is refused in a dry run as in a real one (issue 14 item 7): it must fail.
        grant = {"command": "provisionAuthorizedKeys", "userName": user, "action": "grant", "requestId": f"r{n}"}
        return {**grant, "publicKey": KEY}, False
    if kind == 2:
        return {"command": "listUsers"}, True
    if kind == 3:
        return {
            "command": "provisionSudo",
            "userName": "x\nALL",
            "action": "grant",
            "requestId": "r",
            "sudo": True,
        }, False
    return {"command": f"noSuchCommand{n}"}, False


def _forwarded(data: dict[str, object]) -> dict[str, object]:
    return {"path": "", "headers": {"authorization": "Bearer soak"}, "method": "POST", "params": {}, "data": data}


async def test_soak_memory_and_descriptors_stay_flat(tmp_path: Path) -> None:
    total = int(os.environ.get("P0_SOAK_REQUESTS", "3000"))
    keys = tmp_path / "keys"
    generate_keys(keys)
    backend = DevBackend(call_timeout_ms=30_000)
    backend.register_client(CLIENT_ID, load_public_jwk_file(keys / "jwk.public.json"))
    log_path = tmp_path / "agent.log"
    async with trio.open_nursery() as nursery:
        await nursery.start(backend.serve)
        config = tmp_path / "config.yaml"
        config.write_text(
            f"orgId: {ORG}\nhostId: {HOST}\ntunnelHost: {backend.rpc_url}\nkeyPath: {keys}\n"
            f"stateDir: {tmp_path / 'state'}\nruntimeDir: {tmp_path / 'run'}\ndryRun: true\n"
            # A 1 s reconnect period: this test is about memory and descriptors across reconnects, and each call's
            # retries (about 5 s) must outlast the wait after a drop (the default 11 s period is a fleet's pacing).
            "reconnectMaxSeconds: 1\n"
        )
        agent = start_agent(config, log_path)
        try:
            with trio.fail_after(60):
                await backend.wait_registered(CLIENT_ID)
            samples: dict[str, tuple[int, int]] = {}
            failures: list[str] = []
            done = 0
            reconnects = 0

            async def one(n: int) -> None:
                nonlocal done
                data, must_succeed = _request(n)
                for _attempt in range(50):  # a call racing a drop gets 502 (no client) or 504: retry, as P0 does
                    try:
                        result = await backend.call(CLIENT_ID, _forwarded(data))
                        break
                    except CallFailed:
                        await trio.sleep(0.1)
                else:
                    failures.append(f"request {n} never answered")
                    return
                body = result["data"] if isinstance(result, dict) else {}
                if body.get("success") is not must_succeed:
                    failures.append(f"request {n}: {json.dumps(body)[:200]}")
                done += 1

            warm = max(total // 10, CONCURRENCY)
            for start in range(0, total, CONCURRENCY):
                async with trio.open_nursery() as batch:
                    for n in range(start, min(start + CONCURRENCY, total)):
                        batch.start_soon(one, n)
                if start and start % DROP_EVERY == 0:
                    await backend.drop(CLIENT_ID)
                    reconnects += 1
                    await backend.send_raw(CLIENT_ID, "{not json") if CLIENT_ID in backend.by_client else None
                if start + CONCURRENCY >= warm and "warm" not in samples:
                    samples["warm"] = (_rss_kib(agent.pid), _fds(agent.pid))
            samples["end"] = (_rss_kib(agent.pid), _fds(agent.pid))
        finally:
            agent.terminate()
            agent.wait(timeout=15)
        nursery.cancel_scope.cancel()

    (warm_rss, warm_fds), (end_rss, end_fds) = samples["warm"], samples["end"]
    print(
        f"\nSOAK requests={done} reconnects={reconnects} rss_warm_kib={warm_rss} rss_end_kib={end_rss} "
        f"fds_warm={warm_fds} fds_end={end_fds}"
    )
    record(
        soak_requests=done,
        soak_failures=len(failures),
        soak_reconnects=reconnects,
        soak_rss_warm_kib=warm_rss,
        soak_rss_end_kib=end_rss,
        soak_fds_warm=warm_fds,
        soak_fds_end=end_fds,
    )
    assert failures == [], failures[:10]
    assert done == total
    assert end_fds <= warm_fds + 2, f"descriptors grew from {warm_fds} to {end_fds}"
    # Flat, with room for allocator noise: growth must not scale with the number of requests.
    assert end_rss <= warm_rss * 1.25 + 8 * 1024, f"RSS grew from {warm_rss} KiB to {end_rss} KiB"
    text = log_path.read_text()
    assert "Traceback" not in text and "request_crashed" not in text, text[-3000:]
