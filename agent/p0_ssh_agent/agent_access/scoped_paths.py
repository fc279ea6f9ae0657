"""Paths as the agent-access line compares them (pure): checked and compared on components, before any file is
touched, so a refusal reveals nothing about the filesystem.

- A request's path is absolute UTF-8 text, at most MAX_PATH_BYTES, each component at most MAX_NAME_BYTES, with no
  NUL, no control character, no empty, `.` or `..` component and no trailing slash (traversal is refused, never
  normalised: `/var/www/app/../../etc` is an error, not `/etc`).
- `within(path, prefix)` compares components: `/var/www/app2` is not under `/var/www/app`, `/var/www/app` is.
- A capability's `path_prefix` may not be `/` or lie at or above a refused root (/etc, /home, ...: REFUSED_PREFIXES),
  nor be one of the agent's own directories or beneath them. Nor may it hold a character a systemd unit property
  cannot carry literally (UNIT_UNSAFE_CHARACTERS: whitespace, quotes, backslash, '%', ';'): confine.py passes it
  as `ReadWritePaths=<prefix>`, where systemd would split, unquote, unescape or expand specifiers in it.
- `ancestors(path)` is what Cedar sees (access_policy.py): the path and every directory above it, so a policy says
  `resource.ancestors.contains("/var/www/app")` instead of `like "/var/www/app*"` (which has the string-prefix bug).

The worker resolves the path again beneath the prefix with descriptors (file_ops.py): this module only decides
what the request *names*.
"""

from __future__ import annotations

from p0_ssh_agent.agent_access.access_model import MAX_NAME_BYTES, MAX_PATH_BYTES

# A prefix equal to, above or beneath one of these is refused: the system's configuration, every home at once,
# root's home, the kernel's and devices' trees, the boot loader. (Beneath too: /etc/nginx is still /etc.)
REFUSED_PREFIXES = ("/etc", "/home", "/root", "/proc", "/sys", "/dev", "/boot")
# The agent's own directories (its configuration, state, runtime and code), refused likewise.
# systemd splits a property's value on whitespace, unquotes "..." and '...', unescapes backslashes and expands
# %-specifiers; ';' separates words in some list properties. None of them may reach ReadWritePaths=.
UNIT_UNSAFE_CHARACTERS = frozenset("\"'\\%;")
AGENT_DIRECTORIES = (
    "/etc/p0-ssh-agent",
    "/var/lib/p0-ssh-agent",
    "/run/p0-ssh-agent",
    "/usr/lib/p0-ssh-agent",
    "/opt/p0-ssh-agent",
)


class PathRefused(ValueError):
    """The text is not a path this line accepts; the message names the field, never the filesystem."""


def components(path: str, what: str = "path") -> tuple[str, ...]:
    """The components of an absolute, clean path (module docstring), or PathRefused."""
    if not isinstance(path, str) or not path:
        raise PathRefused(f"{what} must be a non-empty string")
    if "\x00" in path:
        raise PathRefused(f"{what} contains a NUL byte")
    if any(ord(char) < 0x20 or ord(char) == 0x7F for char in path):
        raise PathRefused(f"{what} contains a control character")
    try:
        encoded = path.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise PathRefused(f"{what} is not valid UTF-8") from exc
    if len(encoded) > MAX_PATH_BYTES:
        raise PathRefused(f"{what} is longer than {MAX_PATH_BYTES} bytes")
    if not path.startswith("/"):
        raise PathRefused(f"{what} must be absolute")
    if path == "/":
        return ()
    parts = tuple(path[1:].split("/"))
    for part in parts:
        if part in ("", ".", ".."):
            raise PathRefused(f"{what} must not contain empty, '.' or '..' components (or end in '/')")
        if len(part.encode("utf-8")) > MAX_NAME_BYTES:
            raise PathRefused(f"{what} has a component longer than {MAX_NAME_BYTES} bytes")
    return parts


def join(parts: tuple[str, ...]) -> str:
    return "/" + "/".join(parts)


def within(path: str, prefix: str) -> bool:
    """Whether `path` is `prefix` or beneath it, on components (both already accepted by `components`)."""
    path_parts, prefix_parts = components(path), components(prefix, "path_prefix")
    return path_parts[: len(prefix_parts)] == prefix_parts


def relative_parts(path: str, prefix: str) -> tuple[str, ...]:
    """The components of `path` below `prefix` (() for the prefix itself); PathRefused when it is not within."""
    if not within(path, prefix):
        raise PathRefused("path is outside the capability's path_prefix")
    return components(path)[len(components(prefix, "path_prefix")) :]


def clean_prefix(prefix: str) -> str:
    """A capability's path_prefix, accepted (returned unchanged) or PathRefused with the reason."""
    parts = components(prefix, "path_prefix")
    if not parts:
        raise PathRefused("path_prefix '/' is refused: it would cover the whole host")
    if any(char.isspace() or char in UNIT_UNSAFE_CHARACTERS for char in prefix):
        raise PathRefused("path_prefix must not contain whitespace, quotes, backslashes, '%' or ';'")
    for refused in REFUSED_PREFIXES + AGENT_DIRECTORIES:
        refused_parts = components(refused)
        shorter = min(len(parts), len(refused_parts))
        if parts[:shorter] == refused_parts[:shorter]:  # equal, above or beneath a refused root
            raise PathRefused(f"path_prefix {prefix!r} is refused: it is, covers or lies beneath {refused}")
    return prefix


def ancestors(path: str) -> tuple[str, ...]:
    """The path and each directory above it, "/" first: "/a/b" -> ("/", "/a", "/a/b")."""
    parts = components(path)
    return ("/", *(join(parts[: index + 1]) for index in range(len(parts))))
