"""`p0-ssh-agent doctor`, host side: what on this machine lets a grant "succeed" and still not work.

Every check only reads: `sshd -T` and `visudo --version` / `visudo -c` print and exit, everything else is a file
read or a getxattr. Each returns Findings (ok / warn / fail / skip) whose `fix` says what to run or edit. Paths
and programs are parameters with the real ones as defaults, so the checks run against files in a test directory.

The parsers (sshd -T output, AuthorizedKeysFile patterns, nsswitch.conf, nscd.conf) are pure functions.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Sequence
from pathlib import Path

from p0_ssh_agent.core.sudoers import DROPIN_DIR, includes_sudoers_d
from p0_ssh_agent.diagnostics.findings import Finding
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import proc
from p0_ssh_agent.host.accounts import HOME_ROOT
from p0_ssh_agent.host.openssh import SSHD_CANDIDATES
from p0_ssh_agent.host.selinux import RESTORECON_CANDIDATES, SELINUXFS
from p0_ssh_agent.host.sshd_control import parse_sshd_t
from p0_ssh_agent.host.sudoers_install import SUDOERS, SudoUnavailable, check_sudoers_layout, find_visudo
from p0_ssh_agent.host.sudoers_install import visudo_check_all as visudo_check_tree
from p0_ssh_agent.provisioning.authorized_keys import AUTHORIZED_KEYS, SSH_DIR

TOOL_TIMEOUT = 10.0
# The label sshd is allowed to read under an enforcing targeted policy (sshd_t may not read user_home_t).
SSH_HOME_TYPE = "ssh_home_t"
# What host/accounts.py invalidate_caches() looks for before it runs `nscd -i passwd`: a doctor that said "the
# agent flushes nscd" where it would not would hide exactly the stale-cache problem this check is for.
NSCD_CANDIDATES = ("/usr/sbin/nscd", "/sbin/nscd")
NSCD_SOCKETS = ("/run/nscd/socket", "/var/run/nscd/socket")
NSCD_CONF = "/etc/nscd.conf"
NSSWITCH = "/etc/nsswitch.conf"
# The local-file sources of the passwd database: useradd writes /etc/passwd, and only these read it.
LOCAL_SOURCES = ("files", "compat")


# --- sshd -T ---------------------------------------------------------------------------------------------------


def expand_keys_file(pattern: str, *, user: str, home: str, uid: int) -> str:
    """One AuthorizedKeysFile entry as sshd resolves it for a user: %% %h %u %U expanded, relative means ~/..."""
    tokens = {"%": "%", "h": home, "u": user, "U": str(uid)}
    expanded = re.sub(r"%(.)", lambda m: tokens.get(m[1], m[0]), pattern)
    return os.path.normpath(expanded if expanded.startswith("/") else f"{home}/{expanded}")


def keys_file_covered(value: str, *, user: str, home: str, uid: int) -> bool:
    """Whether sshd's AuthorizedKeysFile value makes it read ~/.ssh/authorized_keys, the file the agent writes."""
    wanted = f"{home}/{SSH_DIR}/{AUTHORIZED_KEYS}"
    return any(expand_keys_file(p, user=user, home=home, uid=uid) == wanted for p in value.split() if p != "none")


def check_sshd(sshd: str | None = None, *, config_file: str | None = None) -> list[Finding]:
    """sshd's effective settings: does it read the keys the agent writes, and only those?"""
    program = sshd or proc.which("sshd", SSHD_CANDIDATES)
    if program is None:
        return [
            Finding(
                "sshd",
                "warn",
                f"sshd not found (looked for {', '.join(SSHD_CANDIDATES)})",
                "install the OpenSSH server (openssh-server): key grants are for sshd",
            )
        ]
    argv = [program, "-T", *(["-f", config_file] if config_file else [])]
    try:
        result = proc.run(argv, timeout=TOOL_TIMEOUT, check=False)
    except AgentError as exc:  # the deadline
        return [Finding("sshd", "warn", str(exc), "run `sshd -T` by hand and see where it hangs")]
    if result.returncode != 0:
        said = " / ".join(line.strip() for line in result.stderr.splitlines() if line.strip())[:500]
        return [
            Finding(
                "sshd",
                "warn",
                f"`{' '.join(argv)}` failed, so sshd's effective settings are unknown: {said or 'no message'}",
                ("run doctor as root; " if os.geteuid() != 0 else "")
                + "fix what sshd says: missing host keys (ssh-keygen -A), a missing privilege separation directory "
                "(install -d -m 755 /run/sshd), an error in sshd_config",
            )
        ]
    return sshd_findings(parse_sshd_t(result.stdout), source=program)


def sshd_findings(settings: dict[str, list[str]], *, source: str = "sshd") -> list[Finding]:
    """The three findings from parsed `sshd -T` output (Match blocks are not applied: sshd -T without -C)."""
    # A user the agent could create: the default home under /home, a UID in its range.
    user, home, uid = "p0-doctor-probe", f"{HOME_ROOT}/p0-doctor-probe", 65536
    pubkey = (settings.get("pubkeyauthentication") or ["yes"])[0].lower()
    keys_file = " ".join(settings.get("authorizedkeysfile") or [".ssh/authorized_keys .ssh/authorized_keys2"])
    command = (settings.get("authorizedkeyscommand") or ["none"])[0]
    found = []
    if pubkey == "no":
        found.append(
            Finding(
                "sshd PubkeyAuthentication",
                "fail",
                f"{source}: PubkeyAuthentication no: sshd refuses every key, granted or not",
                "set `PubkeyAuthentication yes` in /etc/ssh/sshd_config (and in any Match block), then reload sshd",
            )
        )
    else:
        found.append(Finding("sshd PubkeyAuthentication", "ok", f"{pubkey}"))
    if keys_file_covered(keys_file, user=user, home=home, uid=uid):
        found.append(Finding("sshd AuthorizedKeysFile", "ok", keys_file))
    else:
        found.append(
            Finding(
                "sshd AuthorizedKeysFile",
                "fail",
                f"AuthorizedKeysFile {keys_file}: sshd never reads ~/.ssh/authorized_keys, where grants go",
                "add .ssh/authorized_keys to AuthorizedKeysFile in /etc/ssh/sshd_config, then reload sshd",
            )
        )
    if command.lower() == "none":
        found.append(Finding("sshd AuthorizedKeysCommand", "ok", "none: authorized_keys is the only source of keys"))
    else:
        found.append(
            Finding(
                "sshd AuthorizedKeysCommand",
                "warn",
                f"AuthorizedKeysCommand {command}: sshd also accepts keys this command prints, which the agent "
                "neither grants nor revokes",
                "make sure that command cannot hand out the keys you revoke through P0 (or remove it from sshd_config)",
            )
        )
    return found


# --- sudo ------------------------------------------------------------------------------------------------------


def check_sudoers(sudoers: str = SUDOERS, dropin_dir: str = DROPIN_DIR) -> Finding:
    """Does sudo read the agent's drop-in at all? Without the include a sudo grant is written and grants nothing."""
    name = "sudoers includedir"
    try:
        text = Path(sudoers).read_text(encoding="utf-8", errors="replace")
    except FileNotFoundError:
        return Finding(name, "fail", f"{sudoers} does not exist: sudo is not installed", "install sudo")
    except OSError as exc:
        return Finding(name, "fail", f"cannot read {sudoers}: {exc.strerror}", "run doctor as root")
    if not includes_sudoers_d(text):
        return Finding(
            name,
            "fail",
            f"{sudoers} has no `@includedir {DROPIN_DIR}` line: the agent's drop-in would be ignored",
            f"run visudo and add the line `@includedir {DROPIN_DIR}` (or `#includedir {DROPIN_DIR}` for sudo < 1.9.1)",
        )
    try:
        check_sudoers_layout(sudoers, dropin_dir)
    except SudoUnavailable as exc:
        return Finding(name, "fail", str(exc), f"install -d -o root -g root -m 750 {dropin_dir} (a real directory)")
    return Finding(name, "ok", f"{sudoers} includes {DROPIN_DIR}")


def check_visudo() -> list[Finding]:
    """The agent writes no sudoers file visudo has not checked: no visudo (or a broken tree) means no sudo grants."""
    try:
        program = find_visudo()
    except SudoUnavailable as exc:
        return [Finding("visudo", "fail", str(exc), "install sudo (it ships visudo)")]
    result = proc.run([program, "--version"], timeout=TOOL_TIMEOUT, check=False)
    first = next((line.strip() for line in result.stdout.splitlines() if line.strip()), "")
    if result.returncode == 0 and re.match(r"visudo version \d", first):
        found = [Finding("visudo", "ok", f"{program}: {first}")]
    else:
        found = [
            Finding(
                "visudo",
                "warn",
                f"{program} is not sudo's visudo ({first or f'--version exited {result.returncode}'})",
                "install sudo's own visudo: the agent checks each drop-in with `visudo -c -f`, as sudo.ws's visudo "
                "does it",
            )
        ]
    try:
        visudo_check_tree()
    except AgentError as exc:  # SudoersInvalid, or visudo would not run
        found.append(
            Finding(
                "sudoers valid",
                "fail",
                str(exc),
                "run `visudo -c` and fix what it reports: the agent adds no rule to a tree that is already broken",
            )
        )
    else:
        found.append(Finding("sudoers valid", "ok", "visudo -c accepts /etc/sudoers and what it includes"))
    return found


# --- SELinux ---------------------------------------------------------------------------------------------------


def file_label(path: Path) -> str | None:
    """The SELinux context of `path` (as `ls -Z` shows it), None when it has none or it cannot be read."""
    try:
        return os.getxattr(path, "security.selinux", follow_symlinks=False).rstrip(b"\0").decode("ascii", "replace")
    except OSError:
        return None


def check_selinux(
    selinuxfs: str = SELINUXFS,
    home_root: str = HOME_ROOT,
    *,
    read_label: Callable[[Path], str | None] = file_label,
) -> list[Finding]:
    """Enforcing SELinux denies sshd an authorized_keys not labelled ssh_home_t: the login fails, the grant "worked"."""
    try:
        mode = Path(selinuxfs, "enforce").read_text().strip()
    except FileNotFoundError:
        return [Finding("selinux", "ok", "SELinux not enabled")]
    except OSError as exc:
        return [Finding("selinux", "warn", f"cannot read {selinuxfs}/enforce: {exc.strerror}", "run doctor as root")]
    found = []
    if proc.which("restorecon", RESTORECON_CANDIDATES) is None:
        found.append(
            Finding(
                "restorecon",
                "warn",
                "SELinux is on but restorecon is missing: files the agent writes keep their temporary label",
                "install policycoreutils",
            )
        )
    if mode != "1":
        return [Finding("selinux", "ok", "permissive: labels are not enforced"), *found]
    bad = []
    for ssh_dir in sorted(Path(home_root).glob(f"*/{SSH_DIR}")):
        for path in (ssh_dir, ssh_dir / AUTHORIZED_KEYS):
            if path.exists() or path.is_symlink():
                label = read_label(path)
                if label is None or SSH_HOME_TYPE not in label.split(":"):
                    bad.append((path, label or "no label"))
    if not bad:
        return [Finding("selinux", "ok", f"enforcing; every ~/{SSH_DIR} under {home_root} is {SSH_HOME_TYPE}"), *found]
    dirs = sorted({str(p if p.name == SSH_DIR else p.parent) for p, _ in bad})
    finding = Finding(
        "selinux",
        "warn",
        f"enforcing, and {len(bad)} path(s) under {home_root} are not {SSH_HOME_TYPE}: sshd cannot read those keys",
        "restore the labels: " + "; ".join(f"restorecon -Rv {d}" for d in dirs),
        tuple(f"{p} ({label})" for p, label in bad),
    )
    return [finding, *found]


# --- name service: nscd, sssd, nsswitch.conf -------------------------------------------------------------------


def nsswitch_sources(text: str, database: str = "passwd") -> list[str] | None:
    """The sources on `database:`'s line, in order, without [STATUS=action] items; None when there is no line."""
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        name, sep, rest = line.partition(":")
        if sep and name.strip() == database:
            return [word for word in re.sub(r"\[[^]]*\]", " ", rest).split()]
    return None


def nscd_caches_passwd(conf_text: str) -> bool:
    """nscd caches passwd unless nscd.conf says `enable-cache passwd no`."""
    for raw in conf_text.splitlines():
        words = raw.split("#", 1)[0].split()
        if words[:2] == ["enable-cache", "passwd"] and len(words) > 2:
            return words[2].lower() == "yes"
    return True


def running_programs(proc_root: str = "/proc") -> set[str]:
    """The command names (/proc/PID/comm) of every process we can see."""
    names = set()
    for comm in Path(proc_root).glob("[0-9]*/comm"):
        try:
            names.add(comm.read_text().strip())
        except OSError:  # the process ended while we looked
            continue
    return names


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None


def check_nss(
    proc_root: str = "/proc",
    nsswitch: str = NSSWITCH,
    nscd_conf: str = NSCD_CONF,
    nscd_sockets: Sequence[str] = NSCD_SOCKETS,
) -> list[Finding]:
    """Can sshd and sudo see the user the agent just created, and is it the local user they see?"""
    text = _read(nsswitch)
    sources = nsswitch_sources(text) if text is not None else None
    line = f"passwd: {' '.join(sources)}" if sources is not None else f"no passwd line in {nsswitch} (glibc: files)"
    sources = sources if sources is not None else ["files"]
    running = running_programs(proc_root)
    found = []
    local = [i for i, s in enumerate(sources) if s in LOCAL_SOURCES]
    if not local:
        found.append(
            Finding(
                "nsswitch",
                "fail",
                f"{line}: users the agent creates in /etc/passwd are invisible",
                f"put `files` first on the passwd line of {nsswitch}",
            )
        )
    elif "sss" in sources and sources.index("sss") < local[0]:
        found.append(
            Finding(
                "nsswitch",
                "warn",
                f"{line}: sss comes before files, so a directory user with the same name hides the local one",
                f"put `files` before `sss` on the passwd line of {nsswitch}",
            )
        )
    else:
        found.append(Finding("nsswitch", "ok", line))
    if any(name.startswith("sssd") for name in running):
        found.append(
            Finding("sssd", "ok", "sssd runs; the agent clears its cache (sss_cache -E) after account changes")
        )
    if "nscd" in running or "unscd" in running:
        conf = _read(nscd_conf) or ""
        flushes = proc.which("nscd", NSCD_CANDIDATES) is not None and any(Path(p).exists() for p in nscd_sockets)
        if not nscd_caches_passwd(conf):
            found.append(Finding("nscd", "ok", "nscd runs but does not cache passwd"))
        elif flushes:
            found.append(Finding("nscd", "ok", "nscd caches passwd; the agent flushes it (nscd -i passwd) per change"))
        else:
            found.append(
                Finding(
                    "nscd",
                    "warn",
                    "nscd caches passwd and the agent cannot flush it (no nscd in /usr/sbin or /sbin, or no socket in "
                    "/run/nscd): a new user may stay unknown to sshd for the cache's time to live",
                    f"set `enable-cache passwd no` in {nscd_conf} and restart nscd",
                )
            )
    return found
