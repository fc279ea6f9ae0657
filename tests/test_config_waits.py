"""The connection's waits as configuration (docs/connection.md "Tuning the waits"): heartbeatTimeoutSeconds,
reconnectMaxSeconds and unauthorizedRetrySeconds. Their defaults are the documented waits (reconnectMaxSeconds: the
11 s reconnect period of issue 16, 30 s before it), each is bounded, and what the supervisor hands the session and
the tunnel is what the file says."""

from __future__ import annotations

from pathlib import Path

import pytest

from p0_ssh_agent.config import AgentConfig, load_config
from p0_ssh_agent.config.model import KEY_BY_NAME
from p0_ssh_agent.errors import ConfigError
from p0_ssh_agent.runtime.backoff import (
    AUTH_BACKOFF_BASE,
    AUTH_BACKOFF_CAP,
    RECONNECT_PERIOD,
    Backoff,
    PhasedRetry,
    RetrySettings,
)
from p0_ssh_agent.runtime.connection import CALL_TIMEOUT_SECONDS
from p0_ssh_agent.runtime.supervisor import retry_settings

BASE = 'orgId: "acme"\nhostId: "host-1"\n'
BOUNDS = {"heartbeatTimeoutSeconds": 300, "reconnectMaxSeconds": 3600, "unauthorizedRetrySeconds": 300}


def load(tmp_path: Path, text: str, env: dict[str, str] | None = None) -> AgentConfig:
    path = tmp_path / "config.yaml"
    path.write_text(BASE + text)
    return load_config(path, env=env or {})


def test_the_defaults_are_the_documented_waits(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.heartbeat_timeout_seconds == CALL_TIMEOUT_SECONDS == 10
    assert config.reconnect_max_seconds == RECONNECT_PERIOD == 11
    assert config.unauthorized_retry_seconds == AUTH_BACKOFF_BASE == 30
    assert retry_settings(config) == RetrySettings()
    reconnect, unauthorized = RetrySettings().reconnect(), RetrySettings().unauthorized()
    assert reconnect.period == 11.0
    assert (unauthorized.base, unauthorized.cap) == (30.0, AUTH_BACKOFF_CAP)


def test_file_and_environment_set_them(tmp_path: Path) -> None:
    config = load(
        tmp_path,
        "heartbeatTimeoutSeconds: 3\nreconnectMaxSeconds: 600\n",
        env={"P0_SSH_AGENT_UNAUTHORIZEDRETRYSECONDS": "2"},
    )
    assert (config.heartbeat_timeout_seconds, config.reconnect_max_seconds) == (3, 600)
    assert config.unauthorized_retry_seconds == 2
    assert retry_settings(config) == RetrySettings(reconnect_max=600.0, unauthorized_first=2.0)


@pytest.mark.parametrize(("name", "limit"), sorted(BOUNDS.items()))
def test_each_is_bounded_and_the_error_names_the_position_and_the_limit(tmp_path: Path, name: str, limit: int) -> None:
    assert getattr(load(tmp_path, f"{name}: {limit}\n"), KEY_BY_NAME[name].field) == limit
    for bad, problem in ((limit + 1, f"{limit + 1} is too large (at most {limit})"), (0, "must be greater than 0")):
        with pytest.raises(ConfigError) as info:
            load(tmp_path, f"{name}: {bad}\n")
        assert str(info.value).startswith(f"{tmp_path / 'config.yaml'}:3:{len(name) + 3}: {name}: {problem}")
    variable = f"P0_SSH_AGENT_{name.upper()}"
    with pytest.raises(ConfigError) as info:
        load(tmp_path, "", env={variable: "1.5"})
    assert str(info.value).startswith(f"environment variable {variable}: expected a whole number of seconds")


def test_the_bounds_always_make_a_valid_backoff() -> None:
    """The smallest and largest accepted values each make both schedules (Backoff refuses base > cap, PhasedRetry
    a period that is not positive)."""
    for reconnect_max in (1, BOUNDS["reconnectMaxSeconds"]):
        for first in (1, BOUNDS["unauthorizedRetrySeconds"]):
            settings = RetrySettings(float(reconnect_max), float(first))
            assert settings.reconnect().ceiling() == reconnect_max
            assert settings.unauthorized().ceiling() == first


def test_the_period_and_the_401_ceiling_are_the_configured_values() -> None:
    reconnect, unauthorized = RetrySettings(4.0, 2.0).reconnect(), RetrySettings(4.0, 2.0).unauthorized()
    ceilings, delays = [], []
    for _ in range(10):
        ceilings.append((reconnect.ceiling(), unauthorized.ceiling()))
        delays.append(reconnect.next_delay())
        unauthorized.next_delay()
    assert [r for r, _ in ceilings] == [4.0] * 10
    assert 0.0 <= delays[0] <= 4.0 and delays[1:] == [4.0] * 9  # a phase within the period, then the period
    assert [u for _, u in ceilings] == [2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 300.0, 300.0]


def test_a_reload_keeps_how_far_each_schedule_has_come() -> None:
    """The phase already drawn stays drawn: a reload waits the new period, not a second random phase."""
    under_way = PhasedRetry(period=11.0, attempts=4)
    reloaded = RetrySettings(reconnect_max=8.0).reconnect(under_way)
    assert (reloaded.period, reloaded.attempts, reloaded.rng) == (8.0, 4, under_way.rng)
    assert reloaded.next_delay() == 8.0
    assert RetrySettings(reconnect_max=60.0).reconnect(under_way).next_delay() == 60.0
    assert RetrySettings(unauthorized_first=2.0).unauthorized(Backoff(30.0, 300.0, attempts=3)).ceiling() == 16.0
