"""The metrics textfile's format, checked with prometheus_client's own parser (a dev dependency; the agent writes
the format itself, runtime/metrics.py says why), and the textfile as the publisher writes it: atomic, 0640, in the
configured group."""

from __future__ import annotations

import grp
import os
import stat
from pathlib import Path

import trio
from prometheus_client.parser import text_string_to_metric_families

from p0_ssh_agent.runtime.livestate import LiveRead, read_live_state
from p0_ssh_agent.runtime.metrics import DURATION_BUCKETS, Metrics, command_label
from p0_ssh_agent.runtime.publisher import Publisher, replace_file

FAMILIES = {
    "p0_ssh_agent_requests": "counter",
    "p0_ssh_agent_access_requests": "counter",
    "p0_ssh_agent_policy_denials": "counter",
    "p0_ssh_agent_expiries": "counter",
    "p0_ssh_agent_drift_found": "counter",
    "p0_ssh_agent_drift_repaired": "counter",
    "p0_ssh_agent_reconnects": "counter",
    "p0_ssh_agent_connected": "gauge",
    "p0_ssh_agent_grants_in_force": "gauge",
    "p0_ssh_agent_managed_users": "gauge",
    "p0_ssh_agent_reload_failed": "gauge",
    "p0_ssh_agent_agent_access": "gauge",
    "p0_ssh_agent_request_duration_seconds": "histogram",
}


def parsed(metrics: Metrics) -> dict[str, tuple[str, list[tuple[str, dict[str, str], float]]]]:
    return {
        family.name: (family.type, [(s.name, s.labels, s.value) for s in family.samples])
        for family in text_string_to_metric_families(metrics.render())
    }


def test_every_family_parses_with_its_type_and_help() -> None:
    families = list(text_string_to_metric_families(Metrics().render()))
    assert {f.name: f.type for f in families} == FAMILIES
    assert all(f.documentation for f in families)


def test_counters_gauges_and_the_histogram_carry_what_happened() -> None:
    metrics = Metrics()
    metrics.request_done("provisionUser", "ok", "allow", 0.02)
    metrics.request_done("provisionUser", "ok", "allow", 3.0)
    metrics.request_done("provisionSudo", "failed", "deny", 200.0)
    metrics.reconnect("heartbeat")
    metrics.reconnect("unauthorized")
    metrics.reconnect("unauthorized")
    for event in ("denied", "expired", "expired", "drift", "repaired", "grant"):
        metrics.audit_event(event)
    metrics.set_gauge("connected", 1)
    metrics.set_gauge("grants_in_force", 7)
    families = parsed(metrics)
    requests = {tuple(sorted(labels.items())): value for _, labels, value in families["p0_ssh_agent_requests"][1]}
    assert requests == {
        (("command", "provisionUser"), ("decision", "allow"), ("outcome", "ok")): 2.0,
        (("command", "provisionSudo"), ("decision", "deny"), ("outcome", "failed")): 1.0,
    }
    reconnects = {labels["reason"]: value for _, labels, value in families["p0_ssh_agent_reconnects"][1]}
    assert reconnects == {"heartbeat": 1.0, "unauthorized": 2.0}
    single = {name: families[name][1][0][2] for name in FAMILIES if FAMILIES[name] != "histogram" and families[name][1]}
    assert single["p0_ssh_agent_policy_denials"] == 1.0 and single["p0_ssh_agent_expiries"] == 2.0
    assert single["p0_ssh_agent_drift_found"] == 1.0 and single["p0_ssh_agent_drift_repaired"] == 1.0
    assert single["p0_ssh_agent_connected"] == 1.0 and single["p0_ssh_agent_grants_in_force"] == 7.0
    histogram = families["p0_ssh_agent_request_duration_seconds"][1]
    buckets = {labels["le"]: value for name, labels, value in histogram if name.endswith("_bucket")}
    assert len(buckets) == len(DURATION_BUCKETS) + 1
    assert buckets["0.025"] == 1.0 and buckets["5"] == 2.0 and buckets["120"] == 2.0 and buckets["+Inf"] == 3.0
    totals = {name: value for name, _, value in histogram if not name.endswith("_bucket")}
    assert totals == {
        "p0_ssh_agent_request_duration_seconds_count": 3.0,
        "p0_ssh_agent_request_duration_seconds_sum": 203.02,
    }


def test_label_values_are_bounded_and_escaped() -> None:
    metrics = Metrics()
    for n in range(50):  # a backend inventing command names does not grow the file
        metrics.request_done(f"made-up-{n}", "failed", "allow", 0.0)
    metrics.request_done("", "ok", "allow", 0.0)
    metrics.reconnect('odd"reason\\with\nnewline')
    families = parsed(metrics)
    commands = sorted(labels["command"] for _, labels, _ in families["p0_ssh_agent_requests"][1])
    assert commands == ["none", "other"]
    assert [labels["reason"] for _, labels, _ in families["p0_ssh_agent_reconnects"][1]] == [
        'odd"reason\\with\nnewline'
    ]
    assert command_label("listUsers") == "listUsers"


def test_the_textfile_is_replaced_whole_with_mode_0640_in_the_metrics_group(tmp_path: Path) -> None:
    group = grp.getgrall()[-1]
    metrics_file = tmp_path / "textfile" / "p0-ssh-agent.prom"
    metrics_file.parent.mkdir()
    metrics_file.write_text("old\n")
    publisher = Publisher(
        tmp_path / "run",
        metrics_file,
        metrics_gid=group.gr_gid,
        state=lambda: b"{}\n",
        metrics=lambda: Metrics().render().encode(),
    )
    publisher._dir_fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)  # as _open() leaves it, without the lock
    publisher._locked = True
    try:
        publisher.write_now()
    finally:
        os.close(publisher._dir_fd)
    info = metrics_file.stat()
    assert stat.S_IMODE(info.st_mode) == 0o640 and info.st_gid == group.gr_gid
    assert [f.name for f in text_string_to_metric_families(metrics_file.read_text())] == list(FAMILIES)
    assert sorted(p.name for p in metrics_file.parent.iterdir()) == ["p0-ssh-agent.prom"]  # no temp file left


def test_replace_file_leaves_no_temporary_file_when_it_fails(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        (tmp_path / "target").mkdir()  # renaming a file over a directory fails
        try:
            replace_file(fd, "target", b"x", mode=0o600)
        except OSError:
            pass
        else:
            raise AssertionError("replacing a directory with a file should fail")
    finally:
        os.close(fd)
    assert [p.name for p in tmp_path.iterdir()] == ["target"]


def test_docs_list_every_metric() -> None:
    docs = (Path(__file__).resolve().parents[1] / "docs" / "metrics.md").read_text()
    for family in text_string_to_metric_families(Metrics().render()):
        name = family.name + ("_total" if family.type == "counter" else "")
        assert f"`{name}`" in docs, name


async def test_a_second_agent_on_the_same_runtime_dir_neither_writes_nor_removes_the_firsts_files(
    tmp_path: Path, nursery: trio.Nursery
) -> None:
    runtime = tmp_path / "run"

    def publisher(tag: bytes) -> Publisher:
        return Publisher(
            runtime, runtime / "p0-ssh-agent.prom", metrics_gid=None, state=lambda: tag, metrics=lambda: tag
        )

    first = publisher(b"first\n")
    await nursery.start(first.run)
    assert (runtime / "status.json").read_bytes() == b"first\n"
    assert read_live_state(runtime).running is True
    second = publisher(b"second\n")
    with trio.CancelScope() as scope:
        await nursery.start(second.run)  # gives up on the lock after a while, and says so in the log
        second.write_now()
        scope.cancel()
    assert (runtime / "status.json").read_bytes() == b"first\n"
    assert (runtime / "p0-ssh-agent.prom").read_bytes() == b"first\n"
    nursery.cancel_scope.cancel()


async def test_a_clean_stop_removes_the_files_and_releases_the_lock(tmp_path: Path) -> None:
    runtime = tmp_path / "run"
    publisher = Publisher(runtime, runtime / "p0-ssh-agent.prom", metrics_gid=None, state=lambda: b"{}",
                          metrics=lambda: b"")  # fmt: skip
    async with trio.open_nursery() as nursery:
        await nursery.start(publisher.run)
        assert read_live_state(runtime).running is True
        nursery.cancel_scope.cancel()
    assert sorted(p.name for p in runtime.iterdir()) == ["agent.lock"]
    assert read_live_state(runtime) == LiveRead(False, None, "")
