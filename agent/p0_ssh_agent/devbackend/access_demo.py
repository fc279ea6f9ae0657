"""`make run`'s agent-access part (docs/ai-agents.md): one `ssh_dir_list`, with a UCAN minted by the dev backend.

The demo's agent runs as the developer, in a dry run, with everything in the demo's scratch directory: it must never
touch the machine's /etc or its accounts. So agent access is switched on with scratch files only (agentAccessKeysFile
from devbackend/access_keys.py, agentAccessPolicyFile holding a host-pinned-read permit for a scratch directory),
the target account is the developer's own, and the operation is a dry run: the agent verifies the UCAN, judges the
account and the policy, and answers with what it would do, running nothing. Run as root, or as a member of a
root-equivalent group (sudo, wheel, docker, ...), the agent refuses the account instead, as it always would, and the
demo says so.

The UCAN is shown by its length only: a capability is a bearer credential, even a demo's.
"""

from __future__ import annotations

import json
import os
import pwd
from pathlib import Path

from p0_ssh_agent.config.model import KEY_BY_NAME
from p0_ssh_agent.config.values import USER_NAME_RE
from p0_ssh_agent.devbackend.access_client import http_post, mint
from p0_ssh_agent.devbackend.access_keys import open_access_keys
from p0_ssh_agent.devbackend.mint_routes import MintRoutes
from p0_ssh_agent.devbackend.server import DevBackend

DEMO_HOSTNAME = "demo-host.example"  # the demo agent's `hostname`: the UCAN's audience did:web:<it> and its host
POLICY = """\
// The demo's agent-access policy (p0-ssh-agent dev-backend --demo): ssh:host-pinned-read for one scratch directory.
@id("demo:host-pinned-read")
permit (
  principal,
  action in [Action::"/ssh/file/read", Action::"/ssh/dir/list", Action::"/ssh/dir/tree"],
  resource
)
when {{
  resource.host == "{host}" &&
  resource.username == "{user}" &&
  resource.ancestors.contains("{prefix}")
}};
"""


def demo_account() -> str | None:
    """The developer's own account name, when the configuration can list it."""
    name = pwd.getpwuid(os.geteuid()).pw_name
    return name if USER_NAME_RE.fullmatch(name) else None


def access_settings(base: Path, backend: DevBackend) -> dict[str, object]:
    """The demo agent's agent-access keys (scratch files only, see the module docstring), with the dev backend's
    minting switched on; {} when this build has no agent access or the account name cannot be listed."""
    user = demo_account()
    if "agentAccess" not in KEY_BY_NAME or user is None:
        return {}
    if backend.mint is None:
        backend.mint = MintRoutes(open_access_keys(base / "access-keys"))
    prefix = base / "www"
    prefix.mkdir(mode=0o755)
    (prefix / "index.html").write_text("<h1>demo</h1>\n")
    policy = base / "access-policy" / "agent-access.cedar"
    policy.parent.mkdir(mode=0o755)
    policy.write_text(POLICY.format(host=DEMO_HOSTNAME, user=user, prefix=prefix))
    policy.chmod(0o644)
    return {
        "hostname": DEMO_HOSTNAME,
        "agentAccess": True,
        "agentAccessUsers": [user],
        "agentAccessKeysFile": str(backend.mint.keys.trust_file),
        "agentAccessPolicyFile": str(policy),
    }


async def show_operation(backend: DevBackend, client_id: str, base: Path, settings: dict[str, object]) -> bool:
    """Mint a UCAN for listing the scratch directory, send `ssh_dir_list`, print each step and the answer. False
    when the agent answered neither the dry run (200) nor the refusal of an ineligible account (403)."""
    if not settings:
        why = "this build has no agent access" if "agentAccess" not in KEY_BY_NAME else "the account name is unusual"
        print(f"(agent access not shown: {why})\n", flush=True)
        return True
    user, prefix = demo_account(), str(base / "www")
    grant = {"username": user, "host": DEMO_HOSTNAME, "path_prefix": prefix, "abilities": ["ssh/dir/list"]}
    print(f"Agent access (a dry run as {user}):\n$ curl -sS -d '{json.dumps(grant)}' {backend.http_url}/mint/ucan")
    ucan = await mint(backend.http_url, "ucan", grant)
    request = {"command": "ssh_dir_list", "requestId": "demo-access-1", "username": user, "path": prefix}
    shown = {**request, "ucan": f"<the minted UCAN, {len(ucan)} characters>"}
    print(f"$ curl -sS -d '{json.dumps(shown)}' {backend.http_url}/client/{client_id}", flush=True)
    answer = await http_post(backend.http_url, f"/client/{client_id}", {**request, "ucan": ucan})
    print(f"HTTP {answer.status}\n{json.dumps(answer.body, indent=2)}", flush=True)
    if answer.status == 403:
        print(
            "(expected when the demo runs as root or as a member of a root-equivalent group: agent access never "
            "runs as such an account, whatever the policy says)",
            flush=True,
        )
    print(
        f"(`p0-ssh-agent dev-backend call --backend {backend.http_url} --client {client_id} --host {DEMO_HOSTNAME} "
        f"--path-prefix {prefix} REQUEST.json` mints and sends in one step)\n",
        flush=True,
    )
    return answer.status in (200, 403)
