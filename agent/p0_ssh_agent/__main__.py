"""`python -m p0_ssh_agent` is the same program as the `p0-ssh-agent` console script."""

import sys

from p0_ssh_agent.cli import main

sys.exit(main())
