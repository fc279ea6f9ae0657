"""The hops of one provisionAuthorizedKeys grant, from the frame to the authorized_keys write (issue 13).

A hop is a call from a function of one agent module into a function of another. Run in the sandbox (real useradd,
real files): `tests/sandbox/enter .venv/bin/python -m bench.hops`. A profiler records every call into an agent
module from the grant's frame until the rename that writes ~/.ssh/authorized_keys; each call is attributed to the
nearest agent frame that made it (through trio, contextlib and dataclass machinery), and each distinct (caller,
callee) pair is counted once. It prints that list, the part of it made by the request line's own modules
(LINE: the step-level count), the stack at the write (the spine below the worker thread
boundary), and the stack where the pipeline hands the change to its thread (the spine above it). trio's
start_soon and to_thread.run_sync are boundaries a stack cannot show: the printed spine crosses them by name.
"""

from __future__ import annotations

import itertools
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any, cast

import trio
from trio_websocket import WebSocketConnection

from p0_ssh_agent.config import AgentConfig
from p0_ssh_agent.core.requests import parse_change
from p0_ssh_agent.host.audit_trail import AuditTrail
from p0_ssh_agent.host.policy_file import builtin_policy
from p0_ssh_agent.protocol import jsonrpc
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import Pipeline, run_change
from p0_ssh_agent.runtime.connection import Activity, Session, SessionSettings
from p0_ssh_agent.runtime.worker import Worker

AGENT = "p0_ssh_agent"
# The modules a reader follows along the line (docs/development.md, "The request line"): their calls out are the
# step-level hops; what a callee does inside its own layer (host/ledger's files, safefile's checks) is not.
LINE = (
    "runtime.connection",
    "runtime.worker",
    "provisioning.pipeline",
    "provisioning.facts",
    "provisioning.authorized_keys",
)
KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIHNLmYVg4wR7L+9IQJslJexzhJmdx/XrwOb60irE5wOE hops@bench"
USER = "p0hops"


def _where(frame: FrameType) -> str:
    module = str(frame.f_globals.get("__name__", "?")).removeprefix(AGENT + ".")
    return f"{module}:{frame.f_code.co_qualname}"


def _agent_caller(frame: FrameType) -> FrameType | None:
    caller = frame.f_back
    while caller is not None and not str(caller.f_globals.get("__name__", "")).startswith(AGENT):
        caller = caller.f_back
    return caller


def _agent_stack(frame: FrameType | None) -> list[str]:
    stack = []
    while frame is not None:
        if str(frame.f_globals.get("__name__", "")).startswith(AGENT):
            stack.append(_where(frame))
        frame = frame.f_back
    return stack[::-1]


class Recorder:
    def __init__(self) -> None:
        self.edges: dict[tuple[str, str], None] = {}  # insertion-ordered set
        self.recording = False
        self.write_stack: list[str] = []
        self.handoff_stack: list[str] = []

    def profile(self, frame: FrameType, event: str, arg: object) -> None:
        if not self.recording or event != "call":
            return
        if not str(frame.f_globals.get("__name__", "")).startswith(AGENT):
            return
        caller = _agent_caller(frame)
        if caller is None:
            return
        if caller.f_globals.get("__name__") != frame.f_globals.get("__name__"):
            self.edges[(_where(caller), _where(frame))] = None
        if frame.f_code.co_qualname == "Pipeline.change" and not self.handoff_stack:
            self.handoff_stack = _agent_stack(frame)

    def spine(self) -> list[tuple[str, str]]:
        """The hops that lead to the write: the reader's hand-over to the worker (a call), then the hops on the
        stacks above and below the worker thread (trio's start_soon and to_thread join them)."""
        handover = [(a, b) for a, b in self.edges if b == "runtime.worker:Worker.submit"]
        return handover + _hops(self.handoff_stack) + _hops(self.write_stack)


class FakeSocket:
    def __init__(self) -> None:
        self.sent: list[str] = []

    async def send_message(self, message: str) -> None:
        self.sent.append(message)


def _hops(stack: list[str]) -> list[tuple[str, str]]:
    """The calls from one module into another along a stack, outermost first."""
    return [(a, b) for a, b in itertools.pairwise(stack) if a.split(":")[0] != b.split(":")[0]]


def measure(state: Path, user: str) -> Recorder:
    """Create `user`, then trace its provisionAuthorizedKeys grant from the frame to the write (run as root, in
    the sandbox). RuntimeError if the grant is not made or not answered."""
    config = AgentConfig(state_dir=state)
    engine = Engine.on_host(config, state, audit_trail=AuditTrail.off())
    data: dict[str, object] = {"userName": user, "action": "grant", "requestId": "hops-1", "publicKey": KEY}
    created = run_change(engine, parse_change("provisionUser", data), builtin_policy())
    if not created.result.success:
        raise RuntimeError(created.result.error)

    recorder = Recorder()
    real_replace = os.replace

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        if dst == "authorized_keys" and recorder.recording:
            recorder.write_stack = _agent_stack(sys._getframe(1))
            recorder.recording = False
        real_replace(src, dst, **kwargs)

    os.replace = cast(Callable[..., None], replace)
    pipeline = Pipeline(ExecutionContext(config, state, False, builtin_policy(), audit_trail=AuditTrail.off()))
    params = {"method": "POST", "path": "", "headers": {}, "data": {**data, "command": "provisionAuthorizedKeys"}}
    frame = jsonrpc.encode_request(1, "call", params)
    socket = FakeSocket()

    async def one_call() -> None:
        worker = Worker(pipeline)
        async with trio.open_nursery() as nursery:
            await nursery.start(worker.run)
            settings = SessionSettings(client_id="hops", heartbeat_interval=60.0)
            session = Session(cast(WebSocketConnection, socket), settings, worker, Activity())
            recorder.recording = True
            await session._dispatch(jsonrpc.parse_frame(frame))
            await worker.drain()
            nursery.cancel_scope.cancel()

    real_run_sync = trio.to_thread.run_sync

    async def run_sync(function: Callable[..., object], *args: object, **kwargs: Any) -> object:
        """trio's, with the profiler in the thread (its thread cache reuses threads threading.setprofile missed)."""

        def profiled(*inner: object) -> object:
            sys.setprofile(recorder.profile)
            try:
                return function(*inner)
            finally:
                sys.setprofile(None)

        return await real_run_sync(profiled, *args, **kwargs)

    setattr(trio.to_thread, "run_sync", run_sync)  # noqa: B010 - a module attribute, swapped for the measurement
    sys.setprofile(recorder.profile)
    try:
        trio.run(one_call)
    finally:
        sys.setprofile(None)
        setattr(trio.to_thread, "run_sync", real_run_sync)  # noqa: B010
        os.replace = real_replace
    if not socket.sent or not recorder.write_stack:
        raise RuntimeError("the grant was not answered, or did not write authorized_keys")
    return recorder


def main() -> int:
    state = Path(tempfile.mkdtemp(prefix="p0-hops-"))
    state.chmod(0o700)
    report(measure(state, USER))
    return 0


def report(recorder: Recorder) -> None:
    spine = recorder.spine()
    print(f"spine ({len(spine)} hops):")
    for caller, callee in spine:
        print(f"  {caller} -> {callee}")
    print("spine above the worker thread (stack at Pipeline.change):")
    print("  " + "\n  ".join(recorder.handoff_stack))
    print("spine in the worker thread (stack at the authorized_keys rename):")
    print("  " + "\n  ".join(recorder.write_stack))
    modules = {name.split(":")[0] for edge in recorder.edges for name in edge}
    print(
        f"cross-module calls until the write ({len(recorder.edges)} distinct caller -> callee, {len(modules)} modules):"
    )
    for caller, callee in recorder.edges:
        print(f"  {caller} -> {callee}")
    line = [(a, b) for a, b in recorder.edges if a.split(":")[0] in LINE and "<lambda>" not in b]
    files = {name.split(":")[0] for edge in line for name in edge}
    print(f"of which made by the request line's modules ({len(line)} calls, {len(files)} modules):")
    for caller, callee in line:
        print(f"  {caller} -> {callee}")


if __name__ == "__main__":
    sys.exit(main())
