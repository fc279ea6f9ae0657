"""host.proc: real subprocesses (coreutils and a small script in tmp_path), no mocks."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from p0_ssh_agent.errors import AgentError
from p0_ssh_agent.host.proc import CHILD_ENV, CommandFailed, CommandTimedOut, ProcResult, run, which

ENV = "/usr/bin/env"
CAT = "/bin/cat"


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "tool"
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return str(path)


def test_run_captures_output_and_uses_a_minimal_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("P0_SECRET_TOKEN", "do-not-leak")
    result = run([ENV])
    assert result == ProcResult((ENV,), 0, result.stdout, "")
    variables = dict(line.split("=", 1) for line in result.stdout.splitlines())
    assert variables == CHILD_ENV


def test_run_passes_input_and_closes_stdin_otherwise() -> None:
    assert run([CAT], input="hello\n").stdout == "hello\n"
    assert run([CAT]).stdout == ""  # stdin is /dev/null: cat ends at once instead of waiting


def test_nonzero_exit_raises_with_argv_code_and_stderr(tmp_path: Path) -> None:
    tool = script(tmp_path, "echo \"useradd: group 'alice' already exists\" >&2\nexit 9\n")
    with pytest.raises(CommandFailed) as info:
        run([tool, "alice"])
    assert info.value.result.returncode == 9
    assert info.value.result.argv == (tool, "alice")
    assert str(info.value) == f"{tool} failed with exit code 9: useradd: group 'alice' already exists"
    assert isinstance(info.value, AgentError)


def test_check_false_returns_the_failure(tmp_path: Path) -> None:
    tool = script(tmp_path, "echo out\necho err >&2\nexit 3\n")
    assert run([tool], check=False) == ProcResult((tool,), 3, "out\n", "err\n")


def test_stderr_in_the_message_is_bounded(tmp_path: Path) -> None:
    tool = script(tmp_path, "head -c 5000 /dev/zero | tr '\\0' x >&2\nexit 1\n")
    with pytest.raises(CommandFailed) as info:
        run([tool])
    assert len(info.value.result.stderr) == 5000
    assert len(str(info.value)) < 600


def test_timeout_kills_the_tool_and_its_helpers(tmp_path: Path) -> None:
    pid_file = tmp_path / "helper.pid"
    # The helper is a grandchild that keeps stdout open: killing only the tool would leave us waiting on the pipe.
    tool = script(tmp_path, f"echo started\nsleep 300 &\necho $! > {pid_file}\nwait\n")
    with pytest.raises(CommandTimedOut) as info:
        run([tool], timeout=0.5)
    assert "did not finish within 0.5 s" in str(info.value)
    assert isinstance(info.value, CommandFailed)
    assert info.value.result.stdout == "started\n"
    helper = int(pid_file.read_text())
    # SIGKILL is delivered asynchronously: on a busy machine the helper may still be on its way out (state R,
    # already re-parented) for a moment after run() returns. It must be dead or a zombie soon, not "never".
    deadline = time.monotonic() + 10
    while not _dead(helper) and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _dead(helper), Path(f"/proc/{helper}/status").read_text()


def _dead(pid: int) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except FileNotFoundError:
        return True
    return "State:\tZ" in status or "State:\tX" in status


def test_missing_executable_is_a_command_failure(tmp_path: Path) -> None:
    missing = str(tmp_path / "nope")
    with pytest.raises(CommandFailed) as info:
        run([missing])
    assert info.value.result.returncode == 127
    assert run([missing], check=False).returncode == 127


@pytest.mark.parametrize("argv", [["env"], ["./env"], []])
def test_relative_or_empty_argv_is_a_programming_error(argv: list[str]) -> None:
    with pytest.raises(ValueError, match="absolute"):
        run(argv)


def test_arguments_are_not_interpreted_by_a_shell(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    result = run(["/bin/echo", f"$(touch {marker}); `id`", "*"])
    assert result.stdout == f"$(touch {marker}); `id` *\n"
    assert not marker.exists()


def test_which_picks_the_first_executable_candidate(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    not_executable = tmp_path / "a" / "tool"
    not_executable.write_text("")
    executable = Path(script(tmp_path / "b", "exit 0\n"))
    assert which("tool", [str(tmp_path / "x" / "tool"), str(not_executable), str(executable)]) == str(executable)
    assert which("tool", [str(not_executable)]) is None
    assert which("env", ["/usr/bin/env", "/bin/env"]) in ("/usr/bin/env", "/bin/env")
    with pytest.raises(ValueError, match="different program"):
        which("useradd", ["/usr/sbin/userdel"])
