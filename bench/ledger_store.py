"""Scenario 6: the ledger at 100,000 past grants. One grant's ledger work (read the user's records, commit the
change), the whole-document storage of agents before the per-user layout against the per-user layout, and a
commit naming 50 users (revoke-all, reconciliation, an expiry sweep).

    sudo .venv/bin/python -m bench.ledger_store [--quick]

"before" is what host/ledger.py did at 0476012 for every grant: read ledger.json whole, parse it, change it,
serialise it whole and write it atomically (temp file, fsync, rename, directory fsync): from_json and to_json
are that code, unchanged. "after" is LedgerStore.read_user + LedgerStore.commit. Needs root (the files are
root-owned, as the agent's are); runs in a temporary directory on the disk of the current directory's parent.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from bench.stats import Measurement, Target
from p0_ssh_agent.host.ledger import (
    Ledger,
    LedgerStore,
    copy_ledger,
    from_json,
    save_ledger,
    to_json,
)
from p0_ssh_agent.host.rootfile import read_root_file, write_root_file

T0 = "2026-11-23T10:00:00Z"
FINGERPRINT = "SHA256:uQ0fFoYbAH3vSTxCoG7N6XlCJQ/A0Qd5JmdeWXz8Cug"


@dataclass(frozen=True)
class LedgerSizes:
    grants: int
    users: int
    repeats: int
    old_repeats: int


FULL = LedgerSizes(grants=100_000, users=10_000, repeats=200, old_repeats=5)
QUICK = LedgerSizes(grants=100_000, users=10_000, repeats=50, old_repeats=3)
TINY = LedgerSizes(grants=500, users=50, repeats=3, old_repeats=1)


def past_grants(sizes: LedgerSizes) -> Ledger:
    """`grants` active key grants spread evenly over `users` accounts the agent created."""
    ledger = Ledger()
    for number in range(sizes.users):
        ledger.record_user(f"u{number}", 70000 + number, now=T0)
    for number in range(sizes.grants):
        ledger.record_key(f"u{number % sizes.users}", f"old-{number}", "key", FINGERPRINT, now=T0)
    return ledger


def old_grant(state_dir: Path, name: str, request_id: str) -> None:
    """One grant's ledger work before the per-user layout: load whole, change, save whole."""
    path = f"{state_dir}/ledger.json"
    data = read_root_file(path, max_bytes=64 * 1024 * 1024)
    assert data is not None
    ledger = from_json(data.decode(), path)
    ledger.record_key(name, request_id, "key", FINGERPRINT)
    write_root_file(path, to_json(ledger).encode(), mode=0o600, max_bytes=64 * 1024 * 1024)


def new_grant(store: LedgerStore, name: str, request_id: str) -> None:
    before = store.read_user(name)
    after = copy_ledger(before)
    after.record_key(name, request_id, "key", FINGERPRINT)
    store.commit(before, after)


def group_commit(store: LedgerStore, names: list[str], request_id: str) -> None:
    before = Ledger()
    for name in names:
        view = store.read_user(name)
        before.users.update(view.users)
        before.keys.update(view.keys)
    after = copy_ledger(before)
    for name in names:
        after.record_key(name, request_id, "key", FINGERPRINT)
    store.commit(before, after)


def timed(action: object, repeats: int) -> list[float]:
    samples = []
    for number in range(repeats):
        started = time.perf_counter()
        action(number)  # type: ignore[operator]
        samples.append(time.perf_counter() - started)
    return samples


def measure_ledger(workdir: Path, sizes: LedgerSizes) -> Measurement:
    measurement = Measurement("ledger")
    ledger = past_grants(sizes)
    old_dir, new_dir = workdir / "old", workdir / "new"
    for directory in (old_dir, new_dir):
        directory.mkdir(mode=0o700)
    write_root_file(f"{old_dir}/ledger.json", to_json(ledger).encode(), mode=0o600, max_bytes=64 * 1024 * 1024)
    save_ledger(ledger, new_dir)
    store = LedgerStore(new_dir, lock_dir=str(workdir / "locks"))
    users = sizes.users

    floor = timed(lambda n: write_root_file(f"{workdir}/floor", str(n).encode(), mode=0o600), sizes.repeats)
    old = timed(lambda n: old_grant(old_dir, f"u{n % users}", f"bench-old-{n}"), sizes.old_repeats)
    new = timed(lambda n: new_grant(store, f"u{(n * 7919) % users}", f"bench-new-{n}"), sizes.repeats)
    groups = max(3, sizes.repeats // 10)
    group = timed(lambda n: group_commit(store, [f"u{(n * 50 + i) % users}" for i in range(50)], f"g-{n}"), groups)
    read_all = timed(lambda n: store.read_all(), 1 if sizes.grants > 10_000 else sizes.old_repeats)
    for key, name, samples in (
        ("floor", "floor: one small write_root_file (temp, fsync, rename, directory fsync)", floor),
        ("old", f"before: load + save the whole ledger.json ({sizes.grants:,} grants)", old),
        ("new", "after: read_user + commit (one user's record)", new),
        ("group", "after: one commit naming 50 users (read 50 records, write 50, one directory fsync)", group),
        ("read_all", f"after: read_all ({users:,} records, what status and doctor read)", read_all),
    ):
        measurement.new_series(key, name).add_sequential(samples)
    measurement.figures.update(
        grants=sizes.grants, users=users, ledger_bytes=len(to_json(ledger).encode()),
        speedup=measurement.series["old"].p50.median / measurement.series["new"].p50.median,
    )  # fmt: skip
    measurement.targets += [
        Target(
            f"one grant's ledger read + commit with {sizes.grants:,} past grants <= 5 ms (p50)",
            measurement.series["new"].p50.median * 1000,
            5.0,
            "ms",
        ),
        Target(
            "a ledger commit naming 50 users <= 50 ms (p50)", measurement.series["group"].p50.median * 1000, 50.0, "ms"
        ),
    ]
    return measurement


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger_store", description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    sizes = QUICK if parser.parse_args().quick else FULL
    with tempfile.TemporaryDirectory(dir=Path.cwd().parent) as workdir:
        measurement = measure_ledger(Path(workdir), sizes)
    for series in measurement.series.values():
        print(f"{series.name}: p50 {series.p50.median * 1000:.2f} ms, max {series.slowest * 1000:.2f} ms, "
              f"{series.samples} runs")  # fmt: skip
    print(f"ledger.json of {measurement.figures['grants']:,.0f} grants: {measurement.figures['ledger_bytes']:,.0f} "
          f"bytes; one grant {measurement.figures['speedup']:,.0f}x faster")  # fmt: skip
    for target in measurement.targets:
        print(f"{target.verdict}  {target.text}: {target.measured:,.2f} {target.unit}")


if __name__ == "__main__":
    main()
