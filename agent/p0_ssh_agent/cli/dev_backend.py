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
            "A stand-in for P0's tunnel server, to try the agent without P0. It listens on two ports. Agents "
            "connect to the WebSocket port (--rpc-listen) exactly as they connect to P0: with a token signed by "
            "their key, which is checked against a public key given here (--public-key, or --client per agent). "
            "Then an HTTP POST to /client/<orgId>:<hostId>:ssh on the HTTP port (--http-listen), with a JSON "
            'body such as {"command": "listUsers"}, is handed to that agent as a request, and the '
            "agent's answer comes back as the HTTP response: what P0 does when it grants or revokes access."
        ),
        epilog=(
            "Example: p0-ssh-agent dev-backend --public-key /etc/p0-ssh-agent/keys/jwk.public.json & "
            "p0-ssh-agent start --tunnel-host ws://127.0.0.1:8079 --dry-run; "
            "curl -d '{\"command\":\"listUsers\"}' -H 'content-type: application/json' "
            "http://127.0.0.1:8081/client/ORG:HOST:ssh. Loopback only, unless --allow-remote."
        ),
    )
    parser.add_argument(
        "--rpc-listen",
        type=_host_port,
        default=("127.0.0.1", 8079),
        metavar="HOST:PORT",
        help="where agents connect, their tunnelHost ws://HOST:PORT (default 127.0.0.1:8079)",
    )
    parser.add_argument(
        "--http-listen",
        type=_host_port,
        default=("127.0.0.1", 8081),
        metavar="HOST:PORT",
        help="where requests for agents are POSTed (default 127.0.0.1:8081)",
    )
    parser.add_argument("--public-key", metavar="PATH", help="an agent's jwk.public.json, accepted for any client id")
    parser.add_argument(
        "--client",
        action="append",
        default=[],
        metavar="ID=PATH",
        help="accept the key in PATH for client id ID only (repeatable)",
    )
    parser.add_argument(
        "--call-timeout-ms",
        type=int,
        default=5000,
        metavar="MS",
        help="how long an agent may take to answer (default 5000)",
    )
    parser.add_argument(
        "--forward-timeout-ms",
        type=int,
        metavar="MS",
        help="send this timeout hint (options.timeoutMillis) with every request",
    )
    parser.add_argument("--allow-remote", action="store_true", help="listen on non-loopback addresses")
    parser.add_argument(
        "--demo", action="store_true", help="also start an agent in dry-run against it and send it a grant"
    )
    parser.add_argument("--demo-once", action="store_true", help="like --demo, but exit after the grant")
    return parser


def run(args: argparse.Namespace) -> int:
    import trio

    from p0_ssh_agent.config.values import is_loopback_host
    from p0_ssh_agent.devbackend.demo import run_demo
    from p0_ssh_agent.devbackend.server import DevBackend
    from p0_ssh_agent.identity.signing_key import load_public_jwk_file

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
