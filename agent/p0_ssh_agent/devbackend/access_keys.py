"""The dev backend's agent-access keys (`dev-backend --agent-access-keys DIR`): a UCAN issuer and a step-up approver.

DIR holds, made on the first run and reused by every later one (so an agent's trust file stays valid):

    issuer.key.pem          the issuer's private key, EdDSA (Ed25519), PKCS#8 PEM, mode 0600
    approver.key.pem        the approver's private key, ES256 (P-256), PKCS#8 PEM, mode 0600
    agent-access-keys.json  the trust file for the agent (agent_access/trust_keys.py): public keys only, 0644

The issuer's id is its did:key (the UCAN's `iss`); the approver's is APPROVER_ID (the cosignature's `kid`). A key
file is created under a temporary name and linked into place, so it never exists with a looser mode and two runs
racing cannot both create one. Reuse refuses a key file that is a symlink, is not the caller's, or that group or
others may read (as ssh refuses such a key). Point the agent's `agentAccessKeysFile` at the trust file (it must
then be owned by root, or by the agent's own user for an unprivileged dry run).

For development and tests only: on a real deployment the private keys never sit next to the backend like this.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import stat
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from p0_ssh_agent.agent_access.jws_compact import PrivateKey
from p0_ssh_agent.agent_access.minting import did_key_ed25519, generate_key, trust_file_json
from p0_ssh_agent.errors import AgentError

ISSUER_FILE = "issuer.key.pem"
APPROVER_FILE = "approver.key.pem"
TRUST_FILE = "agent-access-keys.json"
ISSUER_ALGORITHM = "EdDSA"
APPROVER_ALGORITHM = "ES256"
APPROVER_ID = "dev-backend-approver"
MAX_KEY_FILE_BYTES = 16 * 1024  # a PEM private key is a few hundred bytes


class AccessKeysError(AgentError):
    """The keys directory or a key in it cannot be used; the message names the file and the fix."""


@dataclass(frozen=True)
class AccessKeys:
    directory: Path
    issuer: str  # the issuer's did:key
    issuer_key: PrivateKey
    approver_key: PrivateKey

    def __repr__(self) -> str:  # never show a private key, even in a traceback
        return f"AccessKeys({str(self.directory)!r}, issuer={self.issuer!r})"

    @property
    def trust_file(self) -> Path:
        return self.directory / TRUST_FILE


def open_access_keys(directory: Path) -> AccessKeys:
    """The keys in `directory`, made first when missing, with the trust file (re)written from them."""
    _prepare_directory(directory)
    dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        issuer_key = _load_or_create(dir_fd, directory, ISSUER_FILE, ISSUER_ALGORITHM)
        approver_key = _load_or_create(dir_fd, directory, APPROVER_FILE, APPROVER_ALGORITHM)
        if not isinstance(issuer_key, Ed25519PrivateKey):  # _load accepts nothing else; this tells the type checker
            raise AccessKeysError(f"{directory / ISSUER_FILE}: not an EdDSA key")
        issuer = did_key_ed25519(issuer_key)
        text = trust_file_json(
            [(issuer, ISSUER_ALGORITHM, issuer_key)], [(APPROVER_ID, APPROVER_ALGORITHM, approver_key)]
        )
        _replace(dir_fd, TRUST_FILE, text.encode(), 0o644)
    finally:
        os.close(dir_fd)
    return AccessKeys(directory, issuer, issuer_key, approver_key)


def _prepare_directory(directory: Path) -> None:
    try:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise AccessKeysError(f"cannot create {directory}: {exc.strerror or exc}") from None
    info = directory.lstat()
    if not stat.S_ISDIR(info.st_mode):
        raise AccessKeysError(f"{directory} is not a real directory (a symlink?); give a plain directory")
    if info.st_uid != os.geteuid():
        raise AccessKeysError(f"{directory} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()})")
    if stat.S_IMODE(info.st_mode) & 0o022:
        raise AccessKeysError(f"{directory} is writable by group or others; fix with: chmod 700 {directory}")


def _load_or_create(dir_fd: int, directory: Path, name: str, algorithm: str) -> PrivateKey:
    try:
        return _load(dir_fd, directory / name, name, algorithm)
    except FileNotFoundError:
        pass
    key = generate_key(algorithm)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    temp = _write_temp(dir_fd, name, pem, 0o600)
    try:
        os.link(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd, follow_symlinks=False)
    except FileExistsError:  # another run made it first: use that one
        return _load(dir_fd, directory / name, name, algorithm)
    finally:
        os.unlink(temp, dir_fd=dir_fd)
    os.fsync(dir_fd)
    return key


def _load(dir_fd: int, path: Path, name: str, algorithm: str) -> PrivateKey:
    """Raises FileNotFoundError when there is no such file (the caller makes it), AccessKeysError when it is unsafe
    or not a key of `algorithm`."""
    try:
        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dir_fd)
    except FileNotFoundError:
        raise
    except OSError as exc:
        raise AccessKeysError(f"{path}: cannot open: {exc.strerror or exc} (a symlink is refused)") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.geteuid():
            raise AccessKeysError(f"{path}: not a regular file of yours (uid {os.geteuid()}); remove it")
        if stat.S_IMODE(info.st_mode) & 0o077:
            raise AccessKeysError(
                f"{path} has mode {stat.S_IMODE(info.st_mode):o}: a private key others may read; "
                f"fix with: chmod 600 {path}"
            )
        data = os.read(fd, MAX_KEY_FILE_BYTES + 1)
    finally:
        os.close(fd)
    if len(data) > MAX_KEY_FILE_BYTES:
        raise AccessKeysError(f"{path}: larger than {MAX_KEY_FILE_BYTES} bytes, so not one of these keys")
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError):  # the message could quote the file: never shown
        raise AccessKeysError(f"{path}: not an unencrypted PEM private key; remove it to make a new one") from None
    if algorithm == "EdDSA" and isinstance(key, Ed25519PrivateKey):
        return key
    if algorithm == "ES256" and isinstance(key, ec.EllipticCurvePrivateKey) and key.curve.name == "secp256r1":
        return key
    raise AccessKeysError(f"{path}: not an {algorithm} key; remove it to make a new one")


def _write_temp(dir_fd: int, name: str, data: bytes, mode: int) -> str:
    temp = f".{name}.{secrets.token_hex(6)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    except BaseException:
        os.close(fd)
        os.unlink(temp, dir_fd=dir_fd)
        raise
    os.close(fd)
    return temp


def _replace(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    temp = _write_temp(dir_fd, name, data, mode)
    try:
        os.replace(temp, name, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp, dir_fd=dir_fd)
    os.fsync(dir_fd)
