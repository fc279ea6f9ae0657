"""`p0-ssh-agent start`: run the daemon (what the systemd unit runs)."""

from __future__ import annotations

import argparse
import os
from typing import Any

from p0_ssh_agent.errors import ExitCode


def add_parser(subparsers: Any, parents: list[argparse.ArgumentParser]) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "start",
        parents=parents,
        help="run the agent (the systemd unit runs this)",
        description=(
            "Connect to the P0 tunnel server and serve provisioning requests until SIGTERM. "
            "Flags override the configuration file and P0_SSH_AGENT_* environment variables."
        ),
    )
    parser.add_argument("--org-id", help="P0 organisation id (config orgId)")
    parser.add_argument("--host-id", help="host id assigned at registration (config hostId)")
    parser.add_argument("--tunnel-host", metavar="URL", help="wss:// URL of the tunnel server (config tunnelHost)")
    parser.add_argument("--key-path", metavar="DIR", help="directory with jwk.private.json (config keyPath)")
    parser.add_argument(
        "--labels", action="append", metavar="KEY=VALUE[,...]", help="labels (repeatable or comma-separated)"
    )
    parser.add_argument("--environment", help="P0 environment id (config environmentId)")
    parser.add_argument(
        "--tunnel-timeout", type=int, metavar="MS", help="tunnel timeout in ms (config tunnelTimeoutMs)"
    )
    parser.add_argument(
        "--dry-run",
        action="store_true",
        default=None,
        help="validate and plan every request, change nothing on the host",
    )
    return parser


def overrides_from(args: argparse.Namespace) -> dict[str, object]:
    labels: list[str] | None = None
    if args.labels:
        labels = [label.strip() for chunk in args.labels for label in chunk.split(",") if label.strip()]
    return {
        "orgId": args.org_id,
        "hostId": args.host_id,
        "tunnelHost": args.tunnel_host,
        "keyPath": args.key_path,
        "labels": labels,
        "environmentId": args.environment,
        "tunnelTimeoutMs": args.tunnel_timeout,
        "dryRun": True if args.dry_run else None,
    }


def run(args: argparse.Namespace) -> int:
    import trio

    from p0_ssh_agent.adapters.sdnotify import Notifier
    from p0_ssh_agent.config import AgentConfig, load_config
    from p0_ssh_agent.provisioning.lazy_pipeline import build_lazy_pipeline
    from p0_ssh_agent.runtime.supervisor import Supervisor, prepare

    env = dict(os.environ)
    overrides = overrides_from(args)

    def load() -> AgentConfig:
        return load_config(args.config, env=env, overrides=overrides)

    # Everything that can be wrong locally is found here, before READY=1; AgentError -> exit 78/77 via the CLI.
    prepared = prepare(load(), env)
    supervisor = Supervisor.create(
        prepared, reload_config=load, pipeline_factory=build_lazy_pipeline, notifier=Notifier(env), env=env
    )
    code = trio.run(supervisor.run)
    return int(ExitCode.OK) if code == 0 else code
