"""The interpreter the footprint scenario runs the daemon on: the runtime the packages ship when one is staged.

`make package` stages the package tree in build/stage: the bundled CPython in /usr/lib/p0-ssh-agent/python, with
every runtime dependency installed from the same wheels the .deb and .rpm carry. The scenario runs that interpreter
in isolated mode (-I, as the launcher does) with this checkout's agent/ first on sys.path, so it measures the
sources under test on the shipped interpreter and the shipped dependency wheels, not the wheel of the last package
build. Bytecode of agent/ is written on the first start (agent/**/__pycache__, a cpython-313 tag next to the venv's
own) and read by the later ones, as the package reads its pre-compiled files.

Without a staged tree (no `make package` yet) the scenario falls back to the development venv and says so.
P0_BENCH_RUNTIME names another staged root (a directory holding usr/lib/p0-ssh-agent/python).
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PREFIX = Path("usr/lib/p0-ssh-agent/python")
VENV_AGENT = Path(sys.executable).parent / "p0-ssh-agent"
BUILD_FACTS = (
    "import sys, sysconfig; print(sys.version.split()[0]); print(sysconfig.get_config_var('CONFIG_ARGS') or '')"
)


@dataclass(frozen=True)
class AgentRuntime:
    """How to start the agent and a probe interpreter: the same Python for both, so baselines compare."""

    name: str  # for the report: "bundled CPython 3.13.5 (build/stage)" or "development venv ..."
    python: list[str]  # an interpreter with the runtime dependencies importable
    agent: list[str]  # `p0-ssh-agent` on that interpreter (the subcommand follows)
    build_options: str  # the interpreter's ./configure arguments


def _launcher(agent_dir: Path) -> str:
    return f"import sys; sys.path.insert(0, {str(agent_dir)!r}); from p0_ssh_agent.cli import main; sys.exit(main())"


def _build_facts(python: list[str]) -> tuple[str, str]:
    done = subprocess.run([*python, "-c", BUILD_FACTS], capture_output=True, text=True, check=True, timeout=60)
    version, _, options = done.stdout.partition("\n")
    return version.strip(), options.strip()


def agent_runtime() -> AgentRuntime:
    stage = Path(os.environ.get("P0_BENCH_RUNTIME") or ROOT / "build" / "stage")
    candidates = sorted((stage / PREFIX / "bin").glob("python3.*")) if (stage / PREFIX).is_dir() else []
    if candidates:
        python = [str(candidates[0]), "-I"]
        version, options = _build_facts(python)
        where = os.path.relpath(stage, ROOT) if stage.is_relative_to(ROOT) else str(stage)
        return AgentRuntime(
            f"bundled CPython {version} ({where}, the checkout's agent/ first on sys.path)",
            python,
            [*python, "-c", _launcher(ROOT / "agent")],
            options,
        )
    version, options = _build_facts([sys.executable])
    return AgentRuntime(
        f"development venv, CPython {version} (no build/stage: run `make package` to measure the bundled runtime)",
        [sys.executable],
        [str(VENV_AGENT)],
        options,
    )
