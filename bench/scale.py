"""Scenario 3: scale, in the namespace sandbox. Grant and revoke in an authorized_keys of 10, 1,000 and 10,000
lines, in a sudoers drop-in already holding 1,000 rules, and listUsers with 5,000 accounts.

The big files are written directly (marker + key pairs of other requests, owned by the user, 0600; the drop-in
through the agent's own install_dropin, so it is exactly what the agent would have written). The 5,000 accounts are
lines appended to the sandbox's throwaway /etc/passwd (5,000 useradd runs would take minutes and measure useradd),
put back afterwards. Every timed change goes through provisioning.pipeline.Pipeline.handle, as in scenario 2.
"""

from __future__ import annotations

import os
import pwd
import time
from dataclasses import dataclass
from pathlib import Path

import trio

from bench.grants import agent_call, agent_context, unique_names
from bench.sshkeys import public_key_line
from bench.stats import Measurement, Target
from p0_ssh_agent.core.sudoers import SudoGrant, render_dropin
from p0_ssh_agent.host import accounts
from p0_ssh_agent.host.actions import Plan
from p0_ssh_agent.host.sudoers_install import install_dropin
from p0_ssh_agent.protocol.forwarded import CommandResult
from p0_ssh_agent.provisioning.context import ExecutionContext
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.pipeline import Pipeline
from p0_ssh_agent.provisioning.sudo_rules import remove_user_rules

KEY_FILE_LINES = (10, 1_000, 10_000)
SUDO_RULES = 1_000
LIST_USERS = 5_000
PASSWD = trio.Path("/etc/passwd")


@dataclass(frozen=True)
class ScaleSizes:
    repeats: int
    key_lines: tuple[int, ...] = KEY_FILE_LINES
    sudo_rules: int = SUDO_RULES
    accounts: int = LIST_USERS


QUICK = ScaleSizes(repeats=5)
FULL = ScaleSizes(repeats=20)
TINY = ScaleSizes(repeats=1, key_lines=(10, 40), sudo_rules=10, accounts=20)


def fill_authorized_keys(user: str, lines: int, keys: list[str]) -> None:
    """authorized_keys holding `lines` lines: marker + key pairs of other requests, as a long-lived host has."""
    entry = pwd.getpwnam(user)
    ssh_dir = Path(entry.pw_dir) / ".ssh"
    ssh_dir.mkdir(mode=0o700, exist_ok=True)
    body = "".join(f"# RequestID: old{index}\n{keys[index % len(keys)]}\n" for index in range(lines // 2))
    path = ssh_dir / "authorized_keys"
    path.write_text(body)
    path.chmod(0o600)
    for item in (ssh_dir, path):
        os.chown(item, entry.pw_uid, entry.pw_gid)


async def _repeat(
    context: ExecutionContext, result: Measurement, *, key: str, label: str, data: dict[str, object], repeats: int
) -> None:
    """Grant then revoke `repeats` times (the file is back to its size after each pair); one series each."""
    grant = result.new_series(f"{key}/grant", f"{label}: grant")
    revoke = result.new_series(f"{key}/revoke", f"{label}: revoke")
    command = str(data["command"])
    times: dict[str, list[float]] = {"grant": [], "revoke": []}
    for _ in range(repeats):
        for action in ("grant", "revoke"):
            started = time.perf_counter()
            await agent_call(context, command, {**data, "action": action})
            times[action].append(time.perf_counter() - started)
    grant.add_sequential(times["grant"])
    revoke.add_sequential(times["revoke"])


async def measure_scale(state_dir: Path, sizes: ScaleSizes = QUICK) -> Measurement:
    result = Measurement("scale")
    context = agent_context(state_dir)
    (user,) = unique_names(1)
    await agent_call(
        context,
        "provisionUser",
        {"command": "provisionUser", "userName": user, "action": "grant", "requestId": "scale"},
    )
    keys = [public_key_line(f"old{index}@p0") for index in range(32)]
    try:
        for lines in sizes.key_lines:
            await trio.to_thread.run_sync(fill_authorized_keys, user, lines, keys)
            # Another request's key keeps a live grant on the account, so the measured revoke is the file edit at
            # this size: the revoke of a created account's last grant also locks it and ends its sessions, and the
            # next grant unlocks it (issue 14 item 5), a constant cost of usermod and a fork, not of the file.
            hold = {"command": "provisionAuthorizedKeys", "userName": user, "requestId": "scalehold"}
            await agent_call(context, "provisionAuthorizedKeys", {**hold, "action": "grant", "publicKey": keys[1]})
            data: dict[str, object] = {
                "command": "provisionAuthorizedKeys",
                "userName": user,
                "requestId": "scalekey",
                "publicKey": keys[0],
            }
            label = f"authorized_keys of {lines:,} lines"
            await _repeat(context, result, key=f"keys{lines}", label=label, data=data, repeats=sizes.repeats)

        rules = [SudoGrant(f"old{index}", user, None) for index in range(sizes.sudo_rules)]
        await trio.to_thread.run_sync(install_dropin, render_dropin(rules))
        data = {"command": "provisionSudo", "userName": user, "requestId": "scalesudo", "sudo": True}
        label = f"sudoers drop-in of {sizes.sudo_rules:,} rules"
        await _repeat(context, result, key=f"sudo{sizes.sudo_rules}", label=label, data=data, repeats=sizes.repeats)

        await _list_users(context, result, sizes)
    finally:
        # The pre-filled rules are grants of other requests: while they exist a revoke keeps the account (someone
        # still holds access through it), so take them out first, as the account's deletion would.
        engine = Engine.on_host(context.config, context.state_dir, audit_trail=context.audit_trail)
        plan = Plan((remove_user_rules(user),), CommandResult(success=True))
        await trio.to_thread.run_sync(engine.apply, plan)
        hold_revoke = {"command": "provisionAuthorizedKeys", "userName": user, "requestId": "scalehold"}
        await agent_call(context, "provisionAuthorizedKeys", {**hold_revoke, "action": "revoke"})
        await agent_call(
            context,
            "provisionUser",
            {"command": "provisionUser", "userName": user, "action": "revoke", "requestId": "scale"},
        )
        if accounts.lookup_user(user) is not None:
            raise RuntimeError(f"the scale scenario's account {user} was not deleted")
    _targets(result, sizes)
    return result


async def _list_users(context: ExecutionContext, result: Measurement, sizes: ScaleSizes) -> None:
    original = await PASSWD.read_bytes()
    extra = "".join(
        f"pbl{index}:x:{70000 + index}:{70000 + index}::/home/pbl{index}:/bin/bash\n" for index in range(sizes.accounts)
    )
    await PASSWD.write_bytes(original + extra.encode())
    series = result.new_series(f"listusers{sizes.accounts}", f"listUsers with {sizes.accounts:,} extra accounts")
    times: list[float] = []
    try:
        for _ in range(sizes.repeats):
            started = time.perf_counter()
            answer = await Pipeline(context).handle("listUsers", {"command": "listUsers"})
            times.append(time.perf_counter() - started)
            if not answer.success or (answer.output or "").count("pbl") < sizes.accounts:
                raise RuntimeError(f"listUsers did not list the {sizes.accounts} accounts: {answer.message}")
        series.add_sequential(times)
    finally:
        await PASSWD.write_bytes(original)


def _targets(result: Measurement, sizes: ScaleSizes) -> None:
    most = max(sizes.key_lines)
    grant, revoke = result.series[f"keys{most}/grant"], result.series[f"keys{most}/revoke"]
    slower = max(grant.p50.median, revoke.p50.median)
    result.targets.append(
        Target(f"{most:,}-line authorized_keys grant or revoke <= 20 ms (p50 of the slower)", slower * 1000, 20.0, "ms")
    )
