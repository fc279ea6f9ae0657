"""terminate_user_sessions' answer when processes outlive the deadline, or kill(-1) cannot be sent as the user.

A process that SIGKILL cannot end in time (uninterruptible sleep on a dead NFS server) is not something a test can
make on demand, so these run against hand-written process tables (sessions.ProcessTable). The real table is tested
with real processes in test_host_sessions.py, test_host_uidkill.py and the sandbox tests."""

from __future__ import annotations

import signal

from p0_ssh_agent.host import uidkill
from p0_ssh_agent.host.sessions import ProcessTable, SessionResult, terminate_user_sessions

UID = 70001


def end(table: ProcessTable) -> SessionResult:
    """terminate_user_sessions for alice with short deadlines and no logind."""
    return terminate_user_sessions(
        UID, name="alice", grace_seconds=0.1, kill_seconds=0.3, use_logind=False, processes=table
    )


class StuckTable:
    """Processes in uninterruptible sleep: every signal is delivered, none of them exits."""

    def __init__(self, pids: list[int]) -> None:
        self.alive = pids
        self.sent: list[tuple[int, signal.Signals]] = []
        self.kills_as_user = 0

    def pids(self, uid: int) -> list[int]:
        assert uid == UID
        return list(self.alive)

    def signal(self, pid: int, uid: int, sig: signal.Signals) -> bool:
        self.sent.append((pid, sig))
        return True

    def kill_all_as(self, uid: int) -> str | None:
        self.kills_as_user += 1
        return None


class ChainTable:
    """A fork chain: each scan finds it at a new PID, every pidfd signal arrives too late, and only kill(-1) sent as
    the user ends it."""

    def __init__(self) -> None:
        self.next_pid = 5000
        self.dead = False
        self.missed = 0

    def pids(self, uid: int) -> list[int]:
        if self.dead:
            return []
        self.next_pid += 1
        return [self.next_pid]

    def signal(self, pid: int, uid: int, sig: signal.Signals) -> bool:
        self.missed += 1
        return False

    def kill_all_as(self, uid: int) -> str | None:
        self.dead = True
        return None


class NoSetuidTable:
    """An agent without CAP_SETUID: the scans see nothing, and kill(-1) cannot be sent as the user."""

    def __init__(self) -> None:
        self.attempts = 0

    def pids(self, uid: int) -> list[int]:
        return []

    def signal(self, pid: int, uid: int, sig: signal.Signals) -> bool:
        raise AssertionError("nothing to signal")

    def kill_all_as(self, uid: int) -> str | None:
        self.attempts += 1
        return uidkill.CANNOT_SWITCH


def test_survivors_are_reported_with_their_pids() -> None:
    table = StuckTable([4242, 4243])
    result = end(table)
    assert not result.ended
    assert (result.found, result.survivors) == (2, (4242, 4243))
    assert result.message == "2 processes of user alice survived SIGKILL for 0.3 s (PIDs 4242, 4243)"
    assert (4242, signal.SIGTERM) in table.sent and (4242, signal.SIGKILL) in table.sent
    assert table.kills_as_user >= 1


def test_a_long_list_of_survivors_is_cut() -> None:
    table = StuckTable(list(range(100, 125)))
    result = end(table)
    shown = ", ".join(str(pid) for pid in range(100, 120))
    assert result.message == f"25 processes of user alice survived SIGKILL for 0.3 s (PIDs {shown}, ...)"


def test_a_chain_that_outruns_every_pidfd_is_ended_by_kill_as_the_user() -> None:
    table = ChainTable()
    result = end(table)
    assert result.ended and result.survivors == ()
    assert result.message == "Successfully terminated 1 processes for user alice"
    assert table.missed >= 1  # the pidfd signals did miss: kill(-1) is what ended it


def test_without_kill_as_the_user_an_empty_scan_is_not_trusted() -> None:
    table = NoSetuidTable()
    result = end(table)
    assert not result.ended and result.survivors == ()
    assert result.unkillable == "setresuid/setresgid refused (the agent needs CAP_SETUID and CAP_SETGID)"
    assert result.message == (
        "could not send kill(-1) as the user: setresuid/setresgid refused (the agent needs CAP_SETUID and "
        "CAP_SETGID), so a process hiding from /proc scans (a fork chain) may be left for user alice"
    )
    assert table.attempts == 1  # a missing capability does not come back: no retries until the deadline


def test_nothing_running_still_sends_one_kill_as_the_user() -> None:
    """An empty scan proves nothing against a chain between two generations: one kill(-1) round always runs."""
    table = StuckTable([])
    result = end(table)
    assert result.ended
    assert result.message == "No active processes found for user alice"
    assert table.kills_as_user == 1 and table.sent == []
