"""Switch keyStore (core/sshd_key_store.py) on a live host without locking anyone out or leaving access behind.

`p0-ssh-agent key-store store|home|show` (cli/key_store.py), as root from a shell. The order is the point:
at every step sshd reads the grants from a place that holds them, and no step leaves a copy in the place the new
mode no longer reads.

    store   1. the drop-in, rendered with this engine's key directory, written to SSHD_DROPIN_PATH; `sshd -t`; on
               failure it is removed again and the command fails with sshd's words (sshd was never reloaded)
            2. the state directory and the store made 0711 (sshd opens the file as the user); SELinux: the file
               context ssh_home_t for the store, and restorecon
            3. the grants copied to the store, home copies kept, and the accounts put in the group (sshd still
               reads the home file: the drop-in is not loaded yet)
            4. keyStore: store in the configuration file (new grants go to the store from the agent's restart on)
            5. sshd reloaded: it reads the store for the group's members now, and finds their grants there
            6. the grants moved again, this time removing the home copies (and copying what the running agent,
               still in home mode, granted meanwhile)
            7. the agent restarted if it runs (at start it copies any grant still made in the old mode)
    home    1. the grants copied home, the store kept; 2. keyStore: home; 3. the drop-in removed, `sshd -t`;
            4. sshd reloaded (it reads the home files again); 5. the grants moved again, removing the store files,
            and the accounts out of the group; 6. the agent restarted if it runs

Both are idempotent: a rerun after a failure at any step starts over and converges. `show` changes nothing.
"""

from __future__ import annotations

import grp
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from p0_ssh_agent.config.writer import write_config
from p0_ssh_agent.core.sshd_key_store import KEY_STORE_GROUP, SSHD_DROPIN_PATH, sshd_dropin_text
from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host import key_store_files, selinux, sshd_control
from p0_ssh_agent.provisioning.engine import Engine
from p0_ssh_agent.provisioning.key_store_move import Destination, MoveReport, move_grants

Say = Callable[[str], None]


class SwitchFailed(AgentError):
    """A step of the switch failed; what was done before it is safe, and a rerun goes on from there."""


def _moved(say: Say, report: MoveReport, what: str) -> None:
    for line in report.done:
        say(f"  ok      {line}")
    for line in report.skipped:
        say(f"  skipped {line}")
    for line in report.failed:
        say(f"  FAILED  {line}")
    if report.failed:
        raise SwitchFailed(f"{what}: {len(report.failed)} account(s) failed (see above); fix them and run it again")


def _move(engine: Engine, say: Say, to: Destination, *, remove: bool, what: str) -> None:
    say(what)
    _moved(say, move_grants(engine, to, remove=remove), what)


def _check_sshd(say: Say, *, undo: Callable[[], object] | None = None) -> None:
    problem = sshd_control.check_config()
    if problem is None:
        say("sshd -t: the configuration is valid")
        return
    if undo is not None:
        undo()
        say(f"removed {SSHD_DROPIN_PATH} again: sshd refused it")
    raise SwitchFailed(f"sshd -t refused the configuration: {problem}")


def switch_to_store(engine: Engine, config_path: Path, say: Say) -> None:
    key_dir = engine.key_dir
    text = sshd_dropin_text(key_dir)
    previous = sshd_control.installed_dropin()
    edit = sshd_control.install_dropin(text)
    say(f"{'wrote' if edit.changed else 'unchanged:'} {SSHD_DROPIN_PATH}")

    def undo() -> None:
        if previous is None:
            sshd_control.remove_dropin()
        else:
            sshd_control.install_dropin(previous.decode("utf-8", "replace"))

    _check_sshd(say, undo=undo)
    key_store_files.prepare_store_dirs(str(engine.state_dir), key_dir)
    say(f"{engine.state_dir} and {key_dir}: root-owned, mode 0711")
    if selinux.selinux_enabled():
        for note in sshd_control.label_key_dir(key_dir):
            say(f"SELinux: {note}")
    _move(engine, say, "store", remove=False, what="copying the grants to the store (home copies kept)")
    write_config(config_path, {"keyStore": "store"})
    say(f"{config_path}: keyStore: store")
    say(f"sshd: {sshd_control.reload_sshd().how}")
    _move(engine, say, "store", remove=True, what="moving the grants to the store (home copies removed)")
    say(sshd_control.try_restart_agent())


def switch_to_home(engine: Engine, config_path: Path, say: Say) -> None:
    _move(engine, say, "home", remove=False, what="copying the grants home (the store kept)")
    write_config(config_path, {"keyStore": "home"})
    say(f"{config_path}: keyStore: home")
    edit = sshd_control.remove_dropin()
    say(f"{'removed' if edit.changed else 'not installed:'} {SSHD_DROPIN_PATH}")
    _check_sshd(say)
    say(f"sshd: {sshd_control.reload_sshd().how}")
    _move(engine, say, "home", remove=True, what="moving the grants home (store files removed, group left)")
    say(sshd_control.try_restart_agent())


# --- show (and doctor: diagnostics/key_store_checks.py) ------------------------------------------------------------


@dataclass(frozen=True)
class SshdView:
    """What sshd makes of the key store: the drop-in's state and whether sshd applies it to a member."""

    dropin: str  # "absent" | "installed" | "different"
    member: str | None  # a created account in the group, probed with sshd -T -C
    honoured: bool | None  # None: not probed (no member, or sshd -T failed)
    detail: str


def store_members(engine: Engine) -> list[str]:
    """The created accounts (by the ledger) that are members of the store's group."""
    try:
        members = set(grp.getgrnam(KEY_STORE_GROUP).gr_mem)
    except KeyError:
        return []
    ledger = engine.read_ledger()
    return sorted(name for name, entry in ledger.users.items() if not entry.adopted and name in members)


def sshd_view(engine: Engine) -> SshdView:
    key_dir = engine.key_dir
    installed = sshd_control.installed_dropin()
    if installed is None:
        dropin = "absent"
    else:
        dropin = "installed" if installed == sshd_dropin_text(key_dir).encode("utf-8") else "different"
    members = store_members(engine)
    if not members:
        return SshdView(dropin, None, None, "no account the agent created is in the group: nothing to probe")
    member = members[0]
    try:
        seen = sshd_control.effective_config(member).get("authorizedkeysfile", [""])[0]
    except AgentError as exc:
        return SshdView(dropin, member, None, str(exc))
    wanted = f"{key_dir.rstrip('/')}/%u"
    honoured = seen.split() == [wanted]
    return SshdView(dropin, member, honoured, f"sshd -T -C user={member}: authorizedkeysfile {seen or '(none)'}")


def show(engine: Engine, say: Say) -> None:
    say(f"keyStore: {engine.config.key_store}")
    view = sshd_view(engine)
    say(f"drop-in {SSHD_DROPIN_PATH}: {view.dropin}")
    verdict = {True: "yes", False: "NO", None: "not probed"}[view.honoured]
    say(f"sshd honours it: {verdict} ({view.detail})")
