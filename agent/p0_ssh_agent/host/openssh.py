"""The local OpenSSH version, probed once: which `expiry-time=` form this host's sshd reads.

The version is read once (`sshd -V`, else `ssh -V`) and cached for the life of the process; what a version reads
and the stamps themselves are pure arithmetic in core/openssh_expiry.py.

Used by provisioning/authorized_keys.py (grant_stamp, when it writes a line) and diagnostics/host_checks.py.
"""

from __future__ import annotations

import functools

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.core import openssh_expiry
from p0_ssh_agent.core.openssh_expiry import ExpirySupport, parse_openssh_version, support_for
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc

log = get_logger(__name__)

SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/local/sbin/sshd", "/sbin/sshd")
SSH_CANDIDATES = ("/usr/bin/ssh", "/usr/local/bin/ssh", "/bin/ssh")


@functools.cache
def openssh_version() -> tuple[int, int] | None:
    """The local OpenSSH version, read once. sshd before 9.x has no -V, but prints its version in the usage text
    it writes for an unknown option, so stderr is read either way; ssh -V is the fallback."""
    for name, candidates in (("sshd", SSHD_CANDIDATES), ("ssh", SSH_CANDIDATES)):
        program = proc.which(name, candidates)
        if program is None:
            continue
        try:
            result = proc.run([program, "-V"], timeout=10, check=False)
        except AgentError:
            continue
        version = parse_openssh_version(result.stderr + result.stdout)
        if version is not None:
            return version
    return None


def expiry_support() -> ExpirySupport:
    """The expiry-time= form the local sshd reads (warned about once when it reads none)."""
    support = support_for(openssh_version())
    if support == "none":
        _warn_no_expiry_option()
    return support


@functools.cache
def _warn_no_expiry_option() -> None:
    log.warning(
        "expiry_option_unsupported",
        openssh=openssh_version(),
        note="OpenSSH older than 7.7 or not found: keys are written without expiry-time=; the sweep alone expires them",
    )


def grant_stamp(granted_at: str, max_grant_seconds: int | None) -> str | None:
    """What provisioning/authorized_keys.py writes into a line granted at `granted_at` (None: no option). The
    version is probed only when a lifetime is configured."""
    if max_grant_seconds is None:
        return None
    return openssh_expiry.grant_stamp(granted_at, max_grant_seconds, expiry_support())
