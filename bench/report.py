"""docs/benchmarks.md from the scenarios' measurements: machine, targets with PASS/MISS, one table per scenario."""

from __future__ import annotations

from collections.abc import Iterable

from bench import fleet, reconnect
from bench.stats import Measurement, Series, Target

MIB = 1024 * 1024


def ms(seconds: float) -> str:
    value = seconds * 1000
    return f"{value:.3f}" if value < 1 else f"{value:.2f}" if value < 100 else f"{value:,.0f}"


def _p(series: Series, which: str) -> str:
    """Median over runs, with the lowest-highest run when there was more than one."""
    spread = series.p50 if which == "p50" else series.p99
    if len(series.runs) == 1:
        return ms(spread.median)
    return f"{ms(spread.median)} ({ms(spread.low)}-{ms(spread.high)})"


def _rate(series: Series) -> str:
    spread = series.per_second
    if len(series.runs) == 1:
        return f"{spread.median:,.0f}"
    return f"{spread.median:,.0f} ({spread.low:,.0f}-{spread.high:,.0f})"


def table(header: list[str], rows: Iterable[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def series_rows(
    measurement: Measurement, keys: Iterable[str], baseline: dict[str, str] | None = None
) -> list[list[str]]:
    rows = []
    for key in keys:
        series = measurement.series.get(key)
        if series is None:
            continue
        ratio = ""
        if baseline and key in baseline and baseline[key] in measurement.series:
            base = measurement.series[baseline[key]]
            ratio = f"{series.p50.median / base.p50.median:.2f}x {base.name}"
        rows.append(
            [
                series.name,
                _p(series, "p50"),
                _p(series, "p99"),
                ms(series.fastest),
                ms(series.slowest),
                _rate(series),
                f"{len(series.runs)} x {series.samples // max(len(series.runs), 1):,}",
                ratio,
            ]
        )
    return rows


SERIES_HEADER = ["what", "p50 ms", "p99 ms", "min ms", "max ms", "per second", "runs x samples", "p50 vs baseline"]


def targets_table(targets: list[Target]) -> list[str]:
    rows = []
    for target in targets:
        bound = ">=" if target.higher_is_better else "<="
        measured = f"{target.measured:,.2f} {target.unit}".strip()
        rows.append(
            [
                f"**{target.verdict}**",
                target.text,
                measured,
                f"{bound} {target.limit:g} {target.unit}".strip(),
                target.note,
            ]
        )
    return table(["", "target", "measured", "limit", "note"], rows)


def calls_section(m: Measurement) -> list[str]:
    out = ["## 1. Call round trip (real WebSocket, dev backend, daemon in dry-run)", ""]
    rows = []
    for kind, label in (("nocmd", "no-command call"), ("dryrun", "dry-run grant")):
        for level in (1, 10, 100):
            agent, floor = m.series.get(f"{kind}/agent/{level}"), m.series.get(f"{kind}/floor/{level}")
            if agent is None or floor is None:
                continue
            rows.append(
                [
                    label,
                    str(level),
                    _p(agent, "p50"),
                    _p(agent, "p99"),
                    _rate(agent),
                    _p(floor, "p50"),
                    _p(floor, "p99"),
                    _rate(floor),
                    f"{agent.p50.median / floor.p50.median:.2f}x",
                    f"{agent.p99.median / floor.p99.median:.2f}x",
                ]
            )
    out += table(
        [
            "call",
            "concurrency",
            "agent p50 ms",
            "agent p99 ms",
            "agent calls/s",
            "floor p50 ms",
            "floor p99 ms",
            "floor calls/s",
            "p50 ratio",
            "p99 ratio",
        ],
        rows,
    )
    sizes = ", ".join(
        f"{kind}: request {m.figures[f'{kind}/request_bytes']:.0f} B, "
        f"answer {m.figures[f'{kind}/response_bytes']:.0f} B"
        for kind in ("nocmd", "dryrun")
        if f"{kind}/request_bytes" in m.figures
    )
    out += [f"Frame sizes (the floor moves the same): {sizes}. Ranges are the lowest and highest run.", ""]
    if "cpu/runs" in m.figures:
        f = m.figures
        cpu = "; ".join(
            f"{label}: agent {f[f'{kind}/cpu/agent_us']:,.0f} µs ({f[f'{kind}/cpu/agent_us_low']:,.0f}-"
            f"{f[f'{kind}/cpu/agent_us_high']:,.0f}), echo floor {f[f'{kind}/cpu/floor_us']:,.0f} µs"
            for kind, label in (("nocmd", "no-command call"), ("dryrun", "dry-run grant"))
            if f"{kind}/cpu/agent_us" in f
        )
        out += [
            f"CPU per call (user + system from /proc, the daemon with its children, the echo peer alone; "
            f"{f['cpu/calls_per_run']:,.0f} calls at concurrency 10, median of {f['cpu/runs']:.0f} runs): {cpu}.",
            "",
        ]
    return out


def grants_section(m: Measurement) -> list[str]:
    out = ["## 2. Real grants in the namespace sandbox", ""]
    for users in sorted({int(key.rsplit("/", 1)[1]) for key in m.series}):
        keys = [
            f"{what}/{users}"
            for what in (
                "user/grant",
                "keys/grant",
                "keys/revoke",
                "sudo/grant",
                "sudo/revoke",
                "user/revoke",
                "go-user/grant",
                "go-keys/grant",
                "go-keys/revoke",
                "go-sudo/grant",
                "go-sudo/revoke",
                "bare/useradd",
                "bare/groupadd+useradd",
                "bare/visudo",
                "bare/write",
            )
        ]
        # The bare tools run one at a time: a ratio to them only means something for one user.
        bare = {"user/grant/1": "bare/useradd/1", "keys/grant/1": "bare/write/1", "sudo/grant/1": "bare/visudo/1"}
        baseline = {
            **(bare if users == 1 else {}),
            f"go-keys/grant/{users}": f"keys/grant/{users}",
            f"go-keys/revoke/{users}": f"keys/revoke/{users}",
            f"go-sudo/grant/{users}": f"sudo/grant/{users}",
            f"go-sudo/revoke/{users}": f"sudo/revoke/{users}",
            f"go-user/grant/{users}": f"user/grant/{users}",
        }
        out += [f"### {users} user{'s' if users > 1 else ''} in parallel", ""]
        out += table(SERIES_HEADER, series_rows(m, keys, baseline))
    return out


def scale_section(m: Measurement) -> list[str]:
    out = ["## 3. Scale (sandbox)", ""]
    out += table(SERIES_HEADER, series_rows(m, list(m.series)))
    return out


def footprint_section(m: Measurement) -> list[str]:
    f = m.figures
    out = ["## 4. Footprint of the daemon", ""]
    rows = []
    if "ready" in m.series:
        ready = m.series["ready"]
        rows.append(
            [
                "start to READY=1 (cold process), p50 / max",
                f"{ms(ready.p50.median)} ms / {ms(ready.slowest)} ms",
                f"{ready.samples} starts",
            ]
        )
    rows += [
        ["idle RSS", f"{f['idle_rss'] / MIB:.1f} MiB", f"{f['idle_fds']:.0f} open fds"],
        ["idle anonymous memory (smaps_rollup)", f"{f['idle_anonymous'] / MIB:.1f} MiB", "heap, stacks, objects"],
        ["RSS after the first 1,000 requests", f"{f['warm_rss'] / MIB:.1f} MiB", "lazy imports of the request path"],
        [
            f"RSS after {f['requests']:,.0f} requests",
            f"{f['after_rss'] / MIB:.1f} MiB",
            f"{f['rss_growth_percent']:+.1f}% vs idle, {f['rss_growth_after_warmup_percent']:+.2f}% vs warm; "
            f"{f['after_fds']:.0f} open fds",
        ],
        ["baseline: bare python3", f"{f['bare_python_rss'] / MIB:.1f} MiB", anonymous(f, "bare_python")],
        [
            "baseline: every runtime dependency imported",
            f"{f['all_dependencies_rss'] / MIB:.1f} MiB",
            "trio, trio-websocket, jose, cryptography, ruamel.yaml, structlog, cedarpy; "
            + anonymous(f, "all_dependencies"),
        ],
        [
            "baseline: every runtime dependency, then the built-in Cedar policy compiled",
            f"{f['with_policy_rss'] / MIB:.1f} MiB" if "with_policy_rss" in f else "-",
            "what the daemon loads and validates before READY=1; " + anonymous(f, "with_policy"),
        ],
    ]
    out += table(["figure", "value", "note"], rows)
    out += [f"{note}." for note in m.notes] + [""]
    return out


def anonymous(f: dict[str, float], key: str) -> str:
    return f"{f[key + '_anonymous'] / MIB:.1f} MiB anonymous" if f"{key}_anonymous" in f else ""


def fleet_section(m: Measurement) -> list[str]:
    out = ["## 5. Fleet reconnect (simulation from runtime/backoff.py)", ""]
    rows = []
    outages = sorted({float(k.split("/")[1]) for k in m.figures})
    for policy in fleet.POLICIES:
        for outage in outages:
            key = f"{policy}/{outage:g}"
            if f"{key}/peak_percent_per_second" not in m.figures:
                continue
            rows.append(
                [
                    fleet.POLICY_NAMES[policy],
                    f"{outage:g} s",
                    f"{m.figures[f'{key}/peak_percent_per_second']:.1f}%",
                    f"{m.figures[f'{key}/seconds_to_50']:.1f} s",
                    f"{m.figures[f'{key}/seconds_to_99']:.1f} s",
                    f"{m.figures[f'{key}/attempts_per_agent']:.2f}",
                ]
            )
    out += table(
        [
            "reconnect schedule",
            "backend down for",
            "peak attempts per second (share of fleet)",
            "50% back after its return",
            "99% back after its return",
            "attempts per agent",
        ],
        rows,
    )
    out += [f"{note}." for note in m.notes] + [""]
    return out


def reconnect_section(m: Measurement) -> list[str]:
    out = ["## 7. One host reconnecting (real daemon, dev backend in its own process)", ""]
    rows = []
    for case in reconnect.CASES:
        series = m.series.get(case.key)
        if series is None:
            continue
        times = [run.slowest for run in series.runs]
        rows.append([case.text, ", ".join(f"{t:.2f}" for t in times), f"{max(times):.2f}", f"{len(times)}"])
    out += table(["outage", "seconds to reconnected, each run", "worst s", "runs"], rows)
    out += [f"{note}." for note in m.notes] + [""]
    return out


def ledger_section(m: Measurement) -> list[str]:
    f = m.figures
    out = [
        f"## 6. The ledger at {f['grants']:,.0f} past grants ({f['users']:,.0f} users)",
        "",
        f"Before: one ledger.json of {f['ledger_bytes'] / MIB:.1f} MiB, loaded and saved whole for every grant "
        f"(host/ledger.py at 0476012). After: one record per user. One grant's ledger work is "
        f"{f['speedup']:,.0f}x faster.",
        "",
    ]
    out += table(SERIES_HEADER, series_rows(m, list(m.series)))
    return out


def access_section(m: Measurement) -> list[str]:
    f = m.figures
    out = [
        "## 8. Agent access next to a bare ssh (issue 17; sandbox, loopback)",
        "",
        f"A 1 MiB read through the agent takes {f['agent/read ratio']:.2f}x a bare `ssh cat`; `ssh_exec true` takes "
        f"{f['agent/exec ratio']:.2f}x `ssh true` (p50s).",
        "",
    ]
    out += table(SERIES_HEADER, series_rows(m, list(m.series)))
    out += [f"{note}." for note in m.notes] + [""]
    return out


SECTIONS = {
    "calls": calls_section,
    "grants": grants_section,
    "scale": scale_section,
    "footprint": footprint_section,
    "fleet": fleet_section,
    "ledger": ledger_section,
    "reconnect": reconnect_section,
    "access": access_section,
}


def render(
    facts: dict[str, str],
    measurements: list[Measurement],
    *,
    profile: str,
    command: str,
    skipped: list[str],
    findings: list[str],
) -> str:
    out = ["# Benchmarks", "", f"Generated by `{command}` (profile `{profile}`); do not edit by hand.", ""]
    out += table(["machine", ""], [[key, value] for key, value in facts.items()])
    targets = [target for measurement in measurements for target in measurement.targets]
    passed = sum(target.passed for target in targets)
    out += [f"## Targets (issues 7, 16): {passed} PASS, {len(targets) - passed} MISS", ""]
    out += targets_table(targets)
    if skipped:
        out += ["Not run: " + "; ".join(skipped) + ".", ""]
    out += [
        "![call and grant latency against concurrency](benchmarks.png)",
        "",
        "Solid lines p50, dashed p99; both axes logarithmic.",
        "",
    ]
    for measurement in measurements:
        out += SECTIONS[measurement.scenario](measurement)
    if findings:
        out += ["## What the profile showed", ""] + [f"- {finding}" for finding in findings] + [""]
    return "\n".join(out)
