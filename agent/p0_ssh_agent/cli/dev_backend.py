"""`p0-ssh-agent dev-backend`: run the P0-compatible test backend (and, with --demo, an agent against it)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from p0_ssh_agent.errors import UsageError


def _host_port(text: str) -> tuple[str, int]:
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    return host.strip("[]"), int(port)


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "dev-backend",
        parents=parents,
        help="run a P0-compatible test backend (for tests and troubleshooting)",
        description=(
            "A tunnel server that behaves like P0's: WebSocket side for agents (JWT checked like braekhus), "
            "HTTP side where POST /client/<orgId>:<hostId>:ssh becomes a call to that agent."
        ),
    )
    parser.add_argument("--rpc-listen", type=_host_port, default=("127.0.0.1", 8079), metavar="HOST:PORT")
    parser.add_argument("--http-listen", type=_host_port, default=("127.0.0.1", 8081), metavar="HOST:PORT")
    parser.add_argument("--public-key", metavar="PATH", help="jwk.public.json trusted for any client id")
    parser.add_argument(
        "--client", action="append", default=[], metavar="ID=PATH", help="trust PATH for client ID (repeatable)"
    )
    parser.add_argument("--call-timeout-ms", type=int, default=5000, help="how long a call may take (default 5000)")
    parser.add_argument("--forward-timeout-ms", type=int, help="send options.timeoutMillis with every call")
    parser.add_argument("--allow-remote", action="store_true", help="listen on non-loopback addresses")
    parser.add_argument("--demo", action="store_true", help="also start an agent in dry-run and send a grant")
    parser.add_argument("--demo-once", action="store_true", help="like --demo, but exit after the grant")
    return parser


def run(args: argparse.Namespace) -> int:
    import trio

    from p0_ssh_agent.config.values import is_loopback_host
    from p0_ssh_agent.devbackend.demo import run_demo
    from p0_ssh_agent.devbackend.server import DevBackend
    from p0_ssh_agent.identity.keys import load_public_jwk_file

    for host, _ in (args.rpc_listen, args.http_listen):
        if not args.allow_remote and not is_loopback_host(host):
            raise UsageError(f"{host} is not a loopback address; this is a test tool (pass --allow-remote)")
    backend = DevBackend(
        rpc_host=args.rpc_listen[0],
        rpc_port=args.rpc_listen[1],
        http_host=args.http_listen[0],
        http_port=args.http_listen[1],
        call_timeout_ms=args.call_timeout_ms,
        forward_timeout_ms=args.forward_timeout_ms,
        trusted_jwk=load_public_jwk_file(Path(args.public_key)) if args.public_key else None,
    )
    for item in args.client:
        client_id, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"--client {item!r}: expected ID=PATH")
        backend.register_client(client_id, load_public_jwk_file(Path(path)))
    if args.demo or args.demo_once:
        return trio.run(run_demo, backend, args.demo_once)
    trio.run(backend.serve)
    return 0
