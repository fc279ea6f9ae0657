"""Restore SELinux labels on files the agent writes (peers.md §5 item 15).

A file created by rename from a temp file gets the label of the temp file's creation context, which for files in
~/.ssh or /etc/sudoers.d may be wrong for sshd or sudo (e.g. user_home_t instead of ssh_home_t); under an enforcing
policy sshd then cannot read authorized_keys. `restorecon` resets the label from the policy.

Only runs when SELinux is enabled (selinuxfs is mounted and has `enforce`, i.e. enforcing or permissive). A missing
restorecon or a failing one is logged as a warning and never fails the edit: the content is already in place, and
reporting the grant as failed would leave the backend believing a key is absent that is present.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from p0_ssh_agent.adapters.logging import get_logger
from p0_ssh_agent.host import proc

log = get_logger(__name__)

SELINUXFS = "/sys/fs/selinux"
RESTORECON_CANDIDATES = ("/sbin/restorecon", "/usr/sbin/restorecon")
RESTORECON_TIMEOUT = 30.0


def selinux_enabled(selinuxfs: str | None = None) -> bool:
    """True when SELinux is enforcing or permissive: selinuxfs exposes `enforce` only then."""
    return Path(selinuxfs or SELINUXFS, "enforce").exists()


def restorecon(
    paths: Sequence[str],
    *,
    selinuxfs: str | None = None,
    candidates: Sequence[str] | None = None,
) -> bool:
    """Run `restorecon -F -- <paths>` if SELinux is on; True if it ran and succeeded, False otherwise (logged).

    selinuxfs and candidates default to the module constants, read at call time (tests point them elsewhere).
    """
    if not paths or not selinux_enabled(selinuxfs):
        return False
    tool = proc.which("restorecon", candidates or RESTORECON_CANDIDATES)
    if tool is None:
        log.warning(
            "restorecon_missing",
            paths=list(paths),
            note="SELinux is enabled but restorecon is not installed (policycoreutils); labels were not restored",
        )
        return False
    # -F resets the user/role/type even if the file's context was customised: a temp file's label is never wanted.
    result = proc.run([tool, "-F", "--", *paths], timeout=RESTORECON_TIMEOUT, check=False)
    if result.returncode != 0:
        log.warning("restorecon_failed", paths=list(paths), returncode=result.returncode, stderr=result.stderr[:500])
        return False
    return True
