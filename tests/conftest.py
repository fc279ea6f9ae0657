"""Suite-wide pytest setup: the sandbox fixtures (tests/sandbox/fixtures.py) for every test module."""

from __future__ import annotations

pytest_plugins = ("sandbox.fixtures",)
