"""The P0-compatible test backend: `p0-ssh-agent dev-backend`, used by tests, `make run` and troubleshooting."""
