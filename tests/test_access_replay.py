"""The replay cache of cosignature jtis (agent_access/replay_cache.py): real files in tmp_path, real fsyncs."""

from __future__ import annotations

import hashlib
import resource
import secrets
import signal
import stat
import threading
from pathlib import Path

from p0_ssh_agent.agent_access.replay_cache import MAX_CACHE_BYTES, MAX_LIVE_ENTRIES, ReplayCache

NOW = 1_700_000_000
JTI = "jti-0123456789abcdef"


def cache_path(tmp_path: Path) -> Path:
    return tmp_path / "state" / "agent-access" / "cosign-jtis"


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines()


def write_entries(path: Path, count: int, expires: int) -> None:
    """A cache file of `count` entries, as the cache writes them (random keys), without `count` fsyncs."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(f"{secrets.token_hex(16)} {expires}\n" for _ in range(count)))
    path.chmod(0o600)


def test_a_jti_is_claimed_once(tmp_path: Path) -> None:
    cache = ReplayCache(cache_path(tmp_path))
    assert cache.claim(JTI, NOW + 180, NOW)
    assert not cache.claim(JTI, NOW + 180, NOW)
    assert not cache.claim(JTI, NOW + 900, NOW + 179)  # a longer expiry asked for does not reopen it
    assert cache.claim("jti-fedcba9876543210", NOW + 180, NOW)
    assert cache.error == ""


def test_a_claim_survives_a_new_instance(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    assert ReplayCache(path).claim(JTI, NOW + 180, NOW)
    restarted = ReplayCache(path)
    assert not restarted.claim(JTI, NOW + 180, NOW + 1)
    assert restarted.live_entries(NOW) == 1
    assert ReplayCache(path).claim("jti-after-restart-0001", NOW + 180, NOW)
    assert not ReplayCache(path).claim("jti-after-restart-0001", NOW + 180, NOW)


def test_the_file_is_private_and_holds_no_jti(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    assert ReplayCache(path).claim(JTI, NOW + 180, NOW)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert lines(path) == [f"{hashlib.sha256(JTI.encode()).hexdigest()[:32]} {NOW + 180}"]


def test_an_expired_claim_may_be_claimed_again(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    cache = ReplayCache(path)
    assert cache.claim(JTI, NOW + 180, NOW)
    assert not cache.claim(JTI, NOW + 360, NOW + 179)
    assert cache.claim(JTI, NOW + 360, NOW + 180)
    # The newer expiry wins on reload too, whatever the order of the lines.
    assert not ReplayCache(path).claim(JTI, NOW + 360, NOW + 300)


def test_expired_entries_are_pruned_when_the_file_is_rewritten(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    write_entries(path, 512, NOW + 10)
    cache = ReplayCache(path)  # 512 lines loaded: the rewrite is due at 1024, its least
    assert cache.claim(JTI, NOW + 500, NOW)
    assert len(lines(path)) == 513
    for index in range(510):
        assert cache.claim(f"jti-late-{index:012d}", NOW + 500, NOW + 20)
    assert len(lines(path)) == 1023  # appended, not yet rewritten
    assert cache.claim("jti-the-1024th-line", NOW + 500, NOW + 20)
    # Rewritten without the 512 that expired at NOW + 10; the live ones are all there.
    remaining = lines(path)
    assert len(remaining) == 512 and f"{hashlib.sha256(JTI.encode()).hexdigest()[:32]} {NOW + 500}" in remaining
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert not [name for name in path.parent.iterdir() if name.name.startswith(".")]  # no temporary left behind
    restarted = ReplayCache(path)
    assert not restarted.claim(JTI, NOW + 500, NOW + 30)
    assert not restarted.claim("jti-late-000000000509", NOW + 500, NOW + 30)
    assert restarted.live_entries(NOW + 30) == 512


def test_a_full_cache_refuses_until_entries_expire(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    write_entries(path, MAX_LIVE_ENTRIES, NOW + 100)
    cache = ReplayCache(path)
    assert cache.error == ""
    assert not cache.claim(JTI, NOW + 180, NOW)  # full: fail closed
    assert not cache.claim(JTI, NOW + 180, NOW + 99)
    assert cache.claim(JTI, NOW + 300, NOW + 100)  # they expired: room again
    assert not cache.claim(JTI, NOW + 300, NOW + 101)


def test_a_corrupt_file_fails_closed(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    write_entries(path, 3, NOW + 100)
    with path.open("a") as handle:
        handle.write("not an entry\n")
    cache = ReplayCache(path)
    assert "line 4 is not a replay-cache entry" in cache.error
    assert not cache.claim(JTI, NOW + 180, NOW)
    assert not cache.claim("jti-another-one-0001", NOW + 180, NOW)
    assert len(lines(path)) == 4  # nothing was written


def test_an_oversize_file_fails_closed(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\n" * (MAX_CACHE_BYTES + 1))
    path.chmod(0o600)
    cache = ReplayCache(path)
    assert f"more than {MAX_CACHE_BYTES} bytes" in cache.error
    assert not cache.claim(JTI, NOW + 180, NOW)


def test_an_unusable_file_fails_closed(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    path.parent.mkdir(parents=True)
    path.mkdir()  # a directory where the file should be
    assert "not a regular file" in ReplayCache(path).error
    path.rmdir()
    target = tmp_path / "elsewhere"
    target.write_text("")
    target.chmod(0o600)
    path.symlink_to(target)
    symlinked = ReplayCache(path)
    assert "a symlink is refused" in symlinked.error and not symlinked.claim(JTI, NOW + 180, NOW)
    path.unlink()
    write_entries(path, 1, NOW + 100)
    path.chmod(0o666)  # anyone could erase the claims
    loose = ReplayCache(path)
    assert "it must be 0600" in loose.error and not loose.claim(JTI, NOW + 180, NOW)


def test_a_torn_last_line_is_dropped_and_the_file_repaired(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    assert ReplayCache(path).claim(JTI, NOW + 180, NOW)
    with path.open("a") as handle:
        handle.write("0123abcd")  # a crash in the middle of an append: that claim was never granted
    cache = ReplayCache(path)
    assert cache.error == ""
    assert len(lines(path)) == 1 and path.read_text().endswith("\n")
    assert not cache.claim(JTI, NOW + 180, NOW)
    assert cache.claim("jti-after-the-crash-01", NOW + 180, NOW)
    assert ReplayCache(path).error == ""


def test_a_failed_append_is_not_granted_and_its_torn_line_is_repaired(tmp_path: Path) -> None:
    path = cache_path(tmp_path)
    cache = ReplayCache(path)
    assert cache.claim(JTI, NOW + 180, NOW)
    size = path.stat().st_size
    # A real short write: the file size limit lets 20 bytes of the next line through, then write() fails (EFBIG).
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + 20, hard))
    try:
        granted = cache.claim("jti-second-claim-0001", NOW + 180, NOW)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)
    assert not granted
    assert path.stat().st_size == size + 20  # the torn piece is on disk
    assert cache.claim("jti-second-claim-0001", NOW + 180, NOW)  # rewritten first, then appended
    restarted = ReplayCache(path)
    assert restarted.error == "" and restarted.live_entries(NOW) == 2
    assert not restarted.claim(JTI, NOW + 180, NOW) and not restarted.claim("jti-second-claim-0001", NOW + 180, NOW)


def test_nonsense_claims_are_refused(tmp_path: Path) -> None:
    cache = ReplayCache(cache_path(tmp_path))
    for jti in ["", "a b", "a\nb", "x" * 129, "é"]:
        assert not cache.claim(jti, NOW + 180, NOW)
    assert not cache.claim(JTI, -1, NOW)
    assert not cache.claim(JTI, 10**15, NOW)
    assert not cache_path(tmp_path).exists()


def test_concurrent_claims_of_one_jti_grant_exactly_one(tmp_path: Path) -> None:
    cache = ReplayCache(cache_path(tmp_path))
    results: list[bool] = []
    barrier = threading.Barrier(8)

    def claim() -> None:
        barrier.wait()
        results.append(cache.claim(JTI, NOW + 180, NOW))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sorted(results) == [False] * 7 + [True]
    assert len(lines(cache_path(tmp_path))) == 1


def test_a_read_only_cache_reads_the_claims_and_writes_nothing(tmp_path: Path) -> None:
    """What doctor and `command --dry-run` open beside the daemon: its claims are seen, none is made, and a torn
    last line is left for the daemon to repair (a rewrite here could drop an append the daemon is making)."""
    path = cache_path(tmp_path)
    assert ReplayCache(path).claim(JTI, NOW + 180, NOW)
    with path.open("a") as handle:
        handle.write("0123abcd")
    before = path.read_bytes()
    reader = ReplayCache(path, read_only=True)
    assert reader.error == "" and reader.live_entries(NOW) == 1
    assert not reader.claim("jti-never-used-here-01", NOW + 180, NOW)
    assert path.read_bytes() == before
    assert not ReplayCache(tmp_path / "absent" / "cache", read_only=True).claim(JTI, NOW + 180, NOW)
    assert not (tmp_path / "absent").exists()
