"""Where the grant and scale scenarios may run: only inside tests/sandbox/enter (test-harness.md §3).

They create accounts, write sudoers and fill /etc/passwd; behind the sandbox's bind mounts that touches only
throwaway copies. The proof is the same as the test fixture's: /etc and /home must be the very inodes of the
scratch directory P0_TEST_SANDBOX names (the variable alone could have been exported by hand).
"""

from __future__ import annotations

import os
from pathlib import Path

SANDBOX_ENV = "P0_TEST_SANDBOX"


def sandbox_root() -> Path | None:
    """The sandbox's scratch directory, or None when this process is not inside the sandbox."""
    value = os.environ.get(SANDBOX_ENV)
    if not value:
        return None
    root = Path(value)
    for name in ("etc", "home"):
        try:
            inside, copy = Path(f"/{name}").stat(), (root / name).stat()
        except OSError:
            return None
        if (inside.st_dev, inside.st_ino) != (copy.st_dev, copy.st_ino):
            return None
    return root
