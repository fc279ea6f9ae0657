"""The one place the version lives: pyproject.toml, the packages and `p0-ssh-agent version` read it from here."""

__version__ = "0.1.0"
