"""Read-only host inventory for `listUsers` and `runAudit`, collected natively (no shell, no `cat`, no `getent`).

The output formats are upstream's exactly (upstream-protocol.md §6.6, §6.7), because the backend parses them. What
differs is how the facts are read: files are opened directly, users and groups come from NSS through `pwd`/`grp`,
host-key fingerprints are computed from the `.pub` files, and a user-controlled path is never followed: the Go agent
ran `cat /home/*/.ssh/authorized_keys` as root, so a user who pointed that file at /etc/shadow had it dumped into the
audit. Here `~/.ssh` and `authorized_keys` are opened with O_NOFOLLOW relative to directory fds, and the file must
pass the rule every edit applies (host/plainfile.py: a regular file with one link, so a hard link to /etc/shadow is
refused too). A file refused, or holding more than plainfile.MAX_FILE_BYTES (counted in bytes read, not taken from
fstat), is one `# p0-ssh-agent: skipped: <why>` line instead of its content, never a cut-off part of it.

runAudit's content is escaped (core/audit_text.py) so that a user's file cannot fake a section header or a USER
line; only marker-like lines change. Every collector takes its sources as arguments (a filesystem root, passwd and
group entries, a last-login reader) so it can be tested on a fake tree; the defaults read the host. Every output is
capped at 1 MiB (`cap_output`).
"""

from __future__ import annotations

import base64
import fnmatch
import grp
import hashlib
import os
import pwd
import re
import stat
import struct
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from p0_ssh_agent.core import audit_text
from p0_ssh_agent.host import proc
from p0_ssh_agent.host.plainfile import MAX_FILE_BYTES, UnsafePath, check_plain_file, read_at_most

MAX_OUTPUT_BYTES = 1024 * 1024
TRUNCATION_MARKER = "...[truncated: output exceeded 1 MiB]"
SKIPPED = "# p0-ssh-agent: skipped: "
NOLOGIN_SHELLS = frozenset({"/sbin/nologin", "/usr/sbin/nologin", "/bin/false", "/usr/bin/false"})
LASTLOG_CANDIDATES = ("/usr/bin/lastlog", "/usr/sbin/lastlog")
# glibc's struct lastlog on Linux: int32_t ll_time; char ll_line[32]; char ll_host[256].
_LASTLOG_RECORD = struct.Struct("=i32s256s")
# lastlog's host column: a link-local IPv6 address with "%" and an interface name (25 + 1 + IFNAMSIZ).
_HOST_WIDTH = 42

# ssh-keygen's names for key types (sshkey.c keyimpls[].shortname) and fixed sizes where the type fixes it.
_KEY_NAMES = {
    "ssh-ed25519": "ED25519",
    "sk-ssh-ed25519@openssh.com": "ED25519-SK",
    "ssh-rsa": "RSA",
    "ssh-dss": "DSA",
    "ecdsa-sha2-nistp256": "ECDSA",
    "ecdsa-sha2-nistp384": "ECDSA",
    "ecdsa-sha2-nistp521": "ECDSA",
    "sk-ecdsa-sha2-nistp256@openssh.com": "ECDSA-SK",
}
_KEY_LINE = re.compile(r"(?P<type>[^ \t]+)[ \t]+(?P<blob>[^ \t]*)(?P<comment>.*)", re.DOTALL)
_CURVE_BITS = {b"nistp256": 256, b"nistp384": 384, b"nistp521": 521}


def cap_output(text: str, limit: int = MAX_OUTPUT_BYTES) -> str:
    """`text` if it fits in `limit` UTF-8 bytes; otherwise its whole lines that fit, then the truncation marker."""
    data = text.encode("utf-8")
    if len(data) <= limit:
        return text
    room = limit - len(TRUNCATION_MARKER) - 2  # the marker line, and a newline that may have to end a cut line
    kept = data[: max(room, 0)]
    newline = kept.rfind(b"\n")
    kept = kept[: newline + 1] if newline >= 0 else kept
    body = kept.decode("utf-8", "ignore")
    if body and not body.endswith("\n"):
        body += "\n"
    return f"{body}{TRUNCATION_MARKER}\n"


# --- listUsers ----------------------------------------------------------------------------------------------------


def list_users(entries: Iterable[pwd.struct_passwd] | None = None) -> list[str]:
    """Names of users with a login shell, in NSS order (§6.7): shell non-empty and not nologin/false."""
    source = pwd.getpwall() if entries is None else entries
    return [e.pw_name for e in source if e.pw_shell.strip() and e.pw_shell.strip() not in NOLOGIN_SHELLS]


# --- file reading -------------------------------------------------------------------------------------------------


def read_capped(path: str | Path, *, dir_fd: int | None = None, user_file: str | None = None) -> bytes | None:
    """A regular file's content, or None if it is missing, not a regular file, or unreadable. Raises FileTooLarge
    (an UnsafePath) when it holds more than MAX_FILE_BYTES: counted in bytes read, so a file that grows while it
    is read is refused too. `user_file`: the file is a user's, shown under that name; then a symlink is not followed
    and anything but a regular file with one link is UnsafePath (plainfile.check_plain_file, the edits' rule).

    O_NONBLOCK keeps a FIFO planted where a file was expected from hanging the reader; the type is checked on the
    opened descriptor, so a swap between a check and the open cannot slip something else in.
    """
    flags = os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | (0 if user_file is None else os.O_NOFOLLOW)
    try:
        fd = os.open(path, flags, dir_fd=dir_fd)
    except OSError:
        return None
    try:
        info = os.fstat(fd)
        if user_file is not None:
            check_plain_file(info, user_file)
        elif not stat.S_ISREG(info.st_mode):
            return None
        return read_at_most(fd, MAX_FILE_BYTES, user_file or str(path))
    except OSError:
        return None
    finally:
        os.close(fd)


def _file_text(path: Path) -> str:
    """A root-owned file's text for the audit; a file too big to read whole is one line saying so."""
    try:
        return _text(read_capped(path) or b"")
    except UnsafePath as refused:
        return f"{SKIPPED}{refused}\n"


def _text(data: bytes) -> str:
    return data.decode("utf-8", "replace")


def _sorted_names(directory: Path) -> list[str]:
    """What a shell glob `directory/*` lists: names not starting with a dot, in byte order."""
    try:
        return sorted(p.name for p in directory.iterdir() if not p.name.startswith("."))
    except OSError:
        return []


def authorized_keys_of(home: Path) -> str | None:
    """`home/.ssh/authorized_keys` as text, a one-line note if it was refused, or None if there is none.

    The home directory itself is followed (root or the administrator made it); `.ssh` and `authorized_keys`,
    which the user controls, are not, and the file must be a regular file with one link (the edits' own rule).
    """
    try:
        home_fd = os.open(home, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            ssh_fd = os.open(".ssh", os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=home_fd)
        except OSError:
            if _is_symlink(".ssh", home_fd):
                return f"{SKIPPED}.ssh is a symbolic link\n"
            return None
        try:
            if _is_symlink("authorized_keys", ssh_fd):
                return f"{SKIPPED}.ssh/authorized_keys is a symbolic link\n"
            try:
                data = read_capped("authorized_keys", dir_fd=ssh_fd, user_file=f"{home}/.ssh/authorized_keys")
            except UnsafePath as refused:
                return f"{SKIPPED}{refused}\n"
            return None if data is None else _text(data)
        finally:
            os.close(ssh_fd)
    finally:
        os.close(home_fd)


def _stored_keys(key_dir: Path | None) -> dict[str, str]:
    """The key store's files by user name (root-owned, read bounded like every root file here); {} without one."""
    if key_dir is None:
        return {}
    found: dict[str, str] = {}
    size = 0
    for name in _sorted_names(key_dir):
        if size > MAX_OUTPUT_BYTES:  # the answer is capped there anyway: reading more only costs memory
            break
        text = _file_text(key_dir / name)
        if text:
            found[name] = text
            size += len(text)
    return found


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.lstat(name, dir_fd=dir_fd).st_mode)
    except OSError:
        return False


# --- host keys ----------------------------------------------------------------------------------------------------


def _ssh_string(blob: bytes, offset: int) -> tuple[bytes, int]:
    if offset + 4 > len(blob):
        raise ValueError("truncated key blob")
    (length,) = struct.unpack(">I", blob[offset : offset + 4])
    end = offset + 4 + length
    if end > len(blob):
        raise ValueError("truncated key blob")
    return blob[offset + 4 : end], end


def _mpint_bits(value: bytes) -> int:
    return int.from_bytes(value, "big").bit_length()


def key_bits(key_type: str, blob: bytes) -> int:
    """The size ssh-keygen prints: the RSA modulus or DSA p length, the ECDSA curve size, 256 for Ed25519."""
    embedded, offset = _ssh_string(blob, 0)
    if embedded.decode("ascii", "replace") != key_type:
        raise ValueError("key type does not match the blob")
    if key_type in ("ssh-ed25519", "sk-ssh-ed25519@openssh.com"):
        return 256
    if key_type == "ssh-rsa":
        _exponent, offset = _ssh_string(blob, offset)
        modulus, _ = _ssh_string(blob, offset)
        return _mpint_bits(modulus)
    if key_type == "ssh-dss":
        p, _ = _ssh_string(blob, offset)
        return _mpint_bits(p)
    curve, _ = _ssh_string(blob, offset)
    if curve not in _CURVE_BITS:
        raise ValueError("unknown ECDSA curve")
    return _CURVE_BITS[curve]


def _skip_options(line: str) -> str:
    """The rest of an authorized_keys-style line after its options field (quotes may hold spaces)."""
    quoted = False
    for index, char in enumerate(line):
        if char == '"':
            quoted = not quoted
        elif char in " \t" and not quoted:
            return line[index:].lstrip(" \t")
    return ""


def _key_fingerprint(line: str) -> str | None:
    match = _KEY_LINE.match(line)
    if match is None or match["type"] not in _KEY_NAMES:
        return None
    try:
        blob = base64.b64decode(match["blob"], validate=True)
        bits = key_bits(match["type"], blob)
    except ValueError:
        return None
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode("ascii").rstrip("=")
    # ssh-keygen skips the whitespace before the comment but keeps what trails it (even a CR).
    comment = match["comment"].lstrip(" \t") or "no comment"
    return f"{bits} SHA256:{digest} {comment} ({_KEY_NAMES[match['type']]})"


def fingerprint_lines(pub_text: str) -> list[str]:
    """What `ssh-keygen -lf` prints for a public key file: "<bits> SHA256:<fp> <comment> (<TYPE>)" per key line.

    Lines that are blank, comments or not keys print nothing (ssh-keygen reports them on stderr, which upstream
    discarded). A leading options field is skipped, as ssh-keygen does for authorized_keys-style lines.
    """
    found: list[str] = []
    for raw in pub_text.split("\n"):
        line = raw.lstrip(" \t")
        if not line or line.startswith("#"):
            continue
        printed = _key_fingerprint(line) or _key_fingerprint(_skip_options(line))
        if printed is not None:
            found.append(printed)
    return found


# --- runAudit -----------------------------------------------------------------------------------------------------


def _passwd_line(e: pwd.struct_passwd) -> str:
    return f"{e.pw_name}:{e.pw_passwd}:{e.pw_uid}:{e.pw_gid}:{e.pw_gecos}:{e.pw_dir}:{e.pw_shell}"


def _group_line(g: grp.struct_group) -> str:
    return f"{g.gr_name}:{g.gr_passwd}:{g.gr_gid}:{','.join(g.gr_mem)}"


def _field(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


def read_lastlog(path: Path, entries: Iterable[pwd.struct_passwd]) -> str:
    """Render a lastlog file the way shadow's `lastlog` prints it, for hosts where the tool is gone.

    Records are indexed by UID; a record past the end of the (sparse) file means "never logged in", as in lastlog.
    """
    header = f"Username         Port     From{' ' * (_HOST_WIDTH - 3)}Latest\n"
    lines = [header]
    size = len(header)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        for entry in entries:
            if size > MAX_OUTPUT_BYTES:
                break
            raw = os.pread(fd, _LASTLOG_RECORD.size, entry.pw_uid * _LASTLOG_RECORD.size)
            when, line, host = (0, b"", b"")
            if len(raw) == _LASTLOG_RECORD.size:
                when, line, host = _LASTLOG_RECORD.unpack(raw)
            latest = time.strftime("%a %b %e %H:%M:%S %z %Y", time.localtime(when)) if when else "**Never logged in**"
            row = f"{entry.pw_name:<16} {_field(line)[:8]:<8} {_field(host):<{_HOST_WIDTH}}{latest}\n"
            lines.append(row)
            size += len(row)
    except OSError:
        return ""
    finally:
        os.close(fd)
    return "".join(lines)


def system_last_login() -> str:
    """`lastlog` output from the tool if installed, else read natively from /var/log/lastlog."""
    tool = proc.which("lastlog", LASTLOG_CANDIDATES)
    if tool is not None:
        result = proc.run([tool], timeout=30, check=False)
        if result.returncode == 0:
            return result.stdout
    return read_lastlog(Path("/var/log/lastlog"), pwd.getpwall())


class _Section:
    """Builds the audit text: markers (headers, USER lines) are the agent's, everything added is escaped content."""

    def __init__(self) -> None:
        self.parts: list[str] = []
        self.size = 0

    def _append(self, text: str) -> None:
        if text:
            self.parts.append(text)
            self.size += len(text)

    def add(self, text: str) -> None:
        """Content: marker-like lines in it are escaped (core/audit_text.py), so it can never fake a section."""
        self._append(audit_text.escape(text))

    def _marker(self, line: str) -> None:
        if self.parts and not self.parts[-1].endswith("\n"):
            # `cat` of a file without a final newline glued the next header onto its last line upstream.
            self._append("\n")
        self._append(line)

    def header(self, name: str) -> None:
        self._marker(f"==={name}===\n")

    def user(self, name: str) -> None:
        # The name is a directory under /home: escaped like content, in case someone made one with a line break.
        self._marker(f"USER:{audit_text.escape(name)}\n")

    def full(self) -> bool:
        return self.size > MAX_OUTPUT_BYTES

    def text(self) -> str:
        return cap_output("".join(self.parts))


def _authorized_keys_section(out: _Section, root: Path, key_dir: Path | None) -> None:
    """Every home's ~/.ssh/authorized_keys, and the key store's lines in the section of the user they are for."""
    out.header("AUTHORIZED_KEYS")
    homes = [root / "home" / name for name in _sorted_names(root / "home")] + [root / "root"]
    stored = _stored_keys(key_dir)
    for home in homes:
        if out.full():
            break
        keys = authorized_keys_of(home)
        in_store = stored.pop(home.name, None)
        if keys is not None or in_store is not None:
            out.user(home.name)
            for text in (keys, in_store):
                if text is not None:
                    out.add(text)
    for name, in_store in sorted(stored.items()):  # a store file without a home of that name under /home
        if out.full():
            break
        out.user(name)
        out.add(in_store)


def run_audit(
    *,
    root: Path = Path("/"),
    passwd: Iterable[pwd.struct_passwd] | None = None,
    groups: Iterable[grp.struct_group] | None = None,
    last_login: Callable[[], str] | None = None,
    key_dir: Path | None = None,
) -> str:
    """The SSH posture dump of §6.6, section by section, with every file read natively and bounded, and content
    escaped so that only the agent writes section markers.

    key_dir: the key store (keyStore store, issue 14 item 6). A store file's lines go into the section of the user
    they are for, after that user's ~/.ssh/authorized_keys: sshd reads the store for the agent's accounts, so
    what grants access is in the audit whichever file holds it (one USER section per user, as upstream's)."""
    out = _Section()
    etc = root / "etc"
    out.header("SSHD_CONFIG")
    out.add(_file_text(etc / "ssh" / "sshd_config"))

    _authorized_keys_section(out, root, key_dir)

    out.header("PASSWD")
    for entry in pwd.getpwall() if passwd is None else passwd:
        out.add(_passwd_line(entry) + "\n")
    out.header("GROUPS")
    for group in grp.getgrall() if groups is None else groups:
        out.add(_group_line(group) + "\n")

    out.header("SUDOERS")
    out.add(_file_text(etc / "sudoers"))
    for name in _sorted_names(etc / "sudoers.d"):
        if out.full():
            break
        out.add(_file_text(etc / "sudoers.d" / name))

    out.header("HOST_KEYS")
    ssh_dir = etc / "ssh"
    for name in _sorted_names(ssh_dir):
        if fnmatch.fnmatchcase(name, "ssh_host_*_key.pub"):
            for line in fingerprint_lines(_file_text(ssh_dir / name)):
                out.add(line + "\n")

    out.header("LAST_LOGIN")
    out.add((last_login or system_last_login)())
    return out.text()
