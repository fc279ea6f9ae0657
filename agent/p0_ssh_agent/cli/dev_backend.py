"""`p0-ssh-agent dev-backend`: run the P0-compatible test backend (and, with --demo, an agent against it);
`p0-ssh-agent dev-backend call`: send one agent-access request through a running one, with a test UCAN minted for it.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING, Any

from p0_ssh_agent.errors import UsageError

if TYPE_CHECKING:
    from p0_ssh_agent.devbackend.mint_routes import MintRoutes

MAX_REQUEST_BYTES = 200_000  # twice what the tunnel server takes (100 kB): a larger body is a mistake


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
    parser.add_argument(
        "--agent-access-keys",
        metavar="DIR",
        help=(
            "mint test capabilities for agent access from keys in DIR (made on the first run, kept): POST /mint/ucan "
            "and /mint/cosign on the HTTP port, loopback only; DIR/agent-access-keys.json is the agent's trust file"
        ),
    )
    actions = parser.add_subparsers(dest="dev_backend_action", metavar="ACTION")
    call = actions.add_parser(
        "call",
        parents=parents,
        help="send one agent-access request through a running dev backend, with a UCAN minted for it",
        description=(
            "Mint a UCAN for REQUEST.json (an ssh_* request body: its username, --host and --path-prefix) with a "
            "dev backend started with --agent-access-keys, add a cosignature with --cosign, send the request to "
            "the agent and print its answer. Exit 0 when the agent answered 2xx."
        ),
        epilog=(
            'Example: echo \'{"command": "ssh_dir_list", "requestId": "r1", "username": "deploy", '
            '"path": "/var/www/app"}\' | p0-ssh-agent dev-backend call --client ORG:HOST:ssh --host HOST '
            "--path-prefix /var/www/app -"
        ),
    )
    call.add_argument(
        "--backend", default="http://127.0.0.1:8081", metavar="URL", help="its HTTP side (default %(default)s)"
    )
    call.add_argument("--client", required=True, metavar="ID", help="the agent's client id, ORG:HOST:ssh")
    call.add_argument("--host", required=True, help="the agent's hostname: the UCAN's audience and constraint")
    call.add_argument("--path-prefix", required=True, metavar="PATH", help="the UCAN's path_prefix")
    call.add_argument(
        "--ability",
        action="append",
        metavar="ABILITY",
        help="an ability to grant, e.g. ssh/file/read (repeatable; default: the request's own command's)",
    )
    call.add_argument("--lifetime", type=int, metavar="SECONDS", help="the UCAN's lifetime (default 600)")
    call.add_argument("--cosign", action="store_true", help="add the approver's cosignature (step-up)")
    call.add_argument("request", metavar="REQUEST.json", help="the ssh_* request body as JSON ('-' for stdin)")
    return parser


def run(args: argparse.Namespace) -> int:
    import trio

    if args.dev_backend_action == "call":
        return trio.run(_call, args, _read_request(args.request))

    from p0_ssh_agent.config.values import is_loopback_host
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
    if args.agent_access_keys:
        backend.mint = _minting(Path(args.agent_access_keys), args.http_listen[0])
    for item in args.client:
        client_id, sep, path = item.partition("=")
        if not sep:
            raise UsageError(f"--client {item!r}: expected ID=PATH")
        backend.register_client(client_id, load_public_jwk_file(Path(path)))
    if args.demo or args.demo_once:
        from p0_ssh_agent.devbackend.demo import run_demo  # with its agent-access part (devbackend/access_demo.py)

        return trio.run(run_demo, backend, args.demo_once)
    trio.run(backend.serve)
    return 0


def _minting(directory: Path, http_host: str) -> MintRoutes:
    """The mint endpoints on the keys in `directory`; agent_access is imported only here (module docstring)."""
    from p0_ssh_agent.config.values import is_loopback_host
    from p0_ssh_agent.devbackend.access_keys import APPROVER_ID, open_access_keys
    from p0_ssh_agent.devbackend.mint_routes import MintRoutes

    if not is_loopback_host(http_host):
        raise UsageError(
            "--agent-access-keys mints capabilities for anyone who can reach it: keep --http-listen on loopback"
        )
    keys = open_access_keys(directory)
    print(
        f"agent access: issuer {keys.issuer} (EdDSA), approver {APPROVER_ID} (ES256); point the agent's "
        f"agentAccessKeysFile at {keys.trust_file}",
        flush=True,
    )
    return MintRoutes(keys)


def _read_request(name: str) -> dict[str, object]:
    import json
    import sys

    try:
        with sys.stdin if name == "-" else Path(name).open() as handle:
            request = json.loads(handle.read(MAX_REQUEST_BYTES + 1))
    except (OSError, ValueError) as exc:
        raise UsageError(f"{name}: not a readable JSON request body ({exc})") from None
    if not isinstance(request, dict):
        raise UsageError(f"{name}: the request body must be a JSON object")
    return request


async def _call(args: argparse.Namespace, request: dict[str, object]) -> int:
    import json

    from p0_ssh_agent.agent_access.access_model import AccessCommand
    from p0_ssh_agent.devbackend.access_client import send_access_request

    abilities = args.ability
    if not abilities:
        try:
            abilities = [AccessCommand(str(request.get("command"))).ability]
        except ValueError:
            raise UsageError(f'{args.request}: "command" is not an ssh_* command; give --ability') from None
    answer = await send_access_request(
        args.backend,
        args.client,
        request,
        host=args.host,
        path_prefix=args.path_prefix,
        abilities=abilities,
        lifetime=args.lifetime,
        cosign=args.cosign,
    )
    print(f"HTTP {answer.status}\n{json.dumps(answer.body, indent=2)}")
    return 0 if 200 <= answer.status < 300 else 1
