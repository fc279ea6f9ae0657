"""The agent's exception tree and its exit codes (sysexits.h).

    AgentError                  exit 1   something failed; the message says what and how to fix it
    ├── UsageError              exit 64  the command line is wrong
    ├── DataError               exit 65  input data (a request file, a JSON document) is malformed
    ├── PermissionProblem       exit 77  not allowed: not root, a file mode or owner is unsafe
    └── ConfigError             exit 78  configuration is wrong; restarting will not fix it
        └── KeyFileError        exit 78  the JWK key files are missing, unreadable or unsafe

Every edge (files, subprocesses, WebSocket) translates foreign exceptions into one of these once, so the CLI
can turn any failure into one clear line and the right exit code. Messages are written for the operator: they
name the file (with line and column where known) and the fix.
"""

from __future__ import annotations

import enum


class ExitCode(enum.IntEnum):
    """Process exit codes, from sysexits.h where one fits."""

    OK = 0
    FAILURE = 1
    USAGE = 64
    DATAERR = 65
    NOPERM = 77
    CONFIG = 78


class AgentError(Exception):
    """Base of every error the agent reports to an operator."""

    exit_code: ExitCode = ExitCode.FAILURE
    # What a request failing with it answers (provisioning/pipeline.py run_change); None: 500, as upstream's.
    http_status: int | None = None


class UsageError(AgentError):
    exit_code = ExitCode.USAGE


class DataError(AgentError):
    exit_code = ExitCode.DATAERR


class PermissionProblem(AgentError):
    exit_code = ExitCode.NOPERM


class ConfigError(AgentError):
    exit_code = ExitCode.CONFIG


class KeyFileError(ConfigError):
    """The agent's JWK key files are missing, malformed, or have unsafe permissions."""
