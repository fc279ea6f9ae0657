"""The namespace sandbox: `tests/sandbox/enter` (the shell side) and the pytest fixtures in fixtures.py."""
