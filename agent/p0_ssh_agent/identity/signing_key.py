"""The agent's identity: an ECDSA P-384 key pair stored as RFC 7517 JWKs (upstream-protocol.md §2.1).

`jwk.private.json` (0600) and `jwk.public.json` (0644) live in a 0700 directory owned by the running user. The
private file is created with O_EXCL, so there is never a moment when it exists with a looser mode. Loading
refuses a private key that group or others can read. No message ever contains key material.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import secrets
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec

from p0_ssh_agent.errors import AgentError, KeyFileError, PermissionProblem

PRIVATE_KEY_FILE = "jwk.private.json"
PUBLIC_KEY_FILE = "jwk.public.json"
COORDINATE_BYTES = 48  # P-384


@dataclass(frozen=True)
class AgentKey:
    private_key: ec.EllipticCurvePrivateKey
    public_jwk: dict[str, str]
    thumbprint: str
    key_dir: Path

    def __repr__(self) -> str:  # never show the private key, even in a traceback
        return f"AgentKey(thumbprint={self.thumbprint!r}, key_dir={str(self.key_dir)!r})"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _int_to_b64(value: int) -> str:
    return b64url(value.to_bytes(COORDINATE_BYTES, "big"))


def public_jwk_from_key(key: ec.EllipticCurvePublicKey) -> dict[str, str]:
    numbers = key.public_numbers()
    return {"kty": "EC", "crv": "P-384", "x": _int_to_b64(numbers.x), "y": _int_to_b64(numbers.y)}


def jwk_thumbprint(jwk: Mapping[str, object]) -> str:
    """RFC 7638: SHA-256 over the required members in lexical order, no whitespace."""
    required = {name: jwk[name] for name in ("crv", "kty", "x", "y")}
    canonical = json.dumps(required, separators=(",", ":"), sort_keys=True)
    return b64url(hashlib.sha256(canonical.encode()).digest())


def _coordinate(jwk: Mapping[str, object], name: str, where: str) -> int:
    value = jwk.get(name)
    if not isinstance(value, str):
        raise KeyFileError(f"{where}: member {name!r} is missing or not a string")
    try:
        raw = b64url_decode(value)
    except ValueError:
        raise KeyFileError(f"{where}: member {name!r} is not base64url") from None
    if len(raw) != COORDINATE_BYTES:
        raise KeyFileError(f"{where}: member {name!r} must encode {COORDINATE_BYTES} bytes for P-384")
    return int.from_bytes(raw, "big")


def public_key_from_jwk(jwk: Mapping[str, object], *, where: str = "JWK") -> ec.EllipticCurvePublicKey:
    if jwk.get("kty") != "EC" or jwk.get("crv") != "P-384":
        raise KeyFileError(f'{where}: expected an EC P-384 key ("kty":"EC","crv":"P-384")')
    numbers = ec.EllipticCurvePublicNumbers(_coordinate(jwk, "x", where), _coordinate(jwk, "y", where), ec.SECP384R1())
    try:
        return numbers.public_key()
    except ValueError:
        raise KeyFileError(f"{where}: the point (x, y) is not on the P-384 curve") from None


def _read_json(path: Path) -> dict[str, object]:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise KeyFileError(
            f"{path} not found; create keys with: p0-ssh-agent keygen --key-path {path.parent}"
        ) from None
    except OSError as exc:
        if exc.errno == 40:  # ELOOP: a symlink
            raise KeyFileError(f"{path} is a symlink; key files must be regular files") from None
        raise KeyFileError(f"cannot read {path}: {exc.strerror}") from None
    # fstat before fdopen: fdopen itself raises IsADirectoryError on a directory.
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise KeyFileError(f"{path} is not a regular file")
    with os.fdopen(fd, "rb") as handle:
        raw = handle.read(65536)
    try:
        value = json.loads(raw)
    except ValueError:
        raise KeyFileError(f"{path} is not valid JSON") from None
    if not isinstance(value, dict):
        raise KeyFileError(f"{path} must hold a JSON object (a JWK)")
    return value


def load_public_jwk(key_dir: Path) -> dict[str, str]:
    return load_public_jwk_file(Path(key_dir) / PUBLIC_KEY_FILE)


def load_public_jwk_file(path: Path) -> dict[str, str]:
    jwk = _read_json(path)
    public_key_from_jwk(jwk, where=str(path))
    # Registration forwards every string member (upstream-protocol.md §9.2).
    return {name: value for name, value in jwk.items() if isinstance(value, str)}


def load_private_key(key_dir: Path) -> AgentKey:
    key_dir = Path(key_dir)
    path = key_dir / PRIVATE_KEY_FILE
    try:
        info = path.lstat()
    except FileNotFoundError:
        raise KeyFileError(f"{path} not found; create keys with: p0-ssh-agent keygen --key-path {key_dir}") from None
    if stat.S_ISREG(info.st_mode) and stat.S_IMODE(info.st_mode) & 0o077:
        raise KeyFileError(
            f"{path} has mode {stat.S_IMODE(info.st_mode):o}: the private key is readable or writable by "
            f"others; fix with: chmod 600 {path}"
        )
    jwk = _read_json(path)
    public = public_key_from_jwk(jwk, where=str(path))
    d_text = jwk.get("d")
    if not isinstance(d_text, str):
        raise KeyFileError(f"{path}: member 'd' (the private scalar) is missing; is this the public key?")
    try:
        d_raw = b64url_decode(d_text)
        private = ec.derive_private_key(int.from_bytes(d_raw, "big"), ec.SECP384R1())
    except ValueError:
        raise KeyFileError(f"{path}: member 'd' is not a valid P-384 private scalar") from None
    if private.public_key().public_numbers() != public.public_numbers():
        raise KeyFileError(f"{path}: 'd' does not match 'x' and 'y'")
    public_jwk = {name: value for name, value in jwk.items() if isinstance(value, str) and name != "d"}
    return AgentKey(private, public_jwk, jwk_thumbprint(public_jwk), key_dir)


def _prepare_dir(key_dir: Path) -> None:
    try:
        key_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    except PermissionError:
        raise PermissionProblem(f"cannot create {key_dir}: permission denied (run as root?)") from None
    except FileExistsError:
        pass  # a dangling symlink or a file in the way: the lstat below refuses it with a clear message
    except OSError as exc:  # e.g. a parent is a regular file
        raise KeyFileError(f"cannot create {key_dir}: {exc.strerror}; use a plain directory for keys") from None
    info = key_dir.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISDIR(info.st_mode):
        raise KeyFileError(f"{key_dir} is not a real directory (a symlink?); use a plain directory for keys")
    if info.st_uid != os.geteuid():
        raise PermissionProblem(
            f"{key_dir} is owned by uid {info.st_uid}, not by you (uid {os.geteuid()}); "
            f"fix with: chown {os.geteuid()} {key_dir}"
        )
    key_dir.chmod(0o700)  # mkdir's mode is filtered by the umask; the key directory must be private


def _write_new(dir_fd: int, name: str, data: bytes, mode: int) -> None:
    fd = os.open(name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode, dir_fd=dir_fd)
    try:
        os.fchmod(fd, mode)  # O_CREAT's mode is filtered by the umask too
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def generate_keys(key_dir: Path, *, force: bool = False) -> AgentKey:
    key_dir = Path(key_dir)
    _prepare_dir(key_dir)
    if not force and (key_dir / PRIVATE_KEY_FILE).exists():
        raise AgentError(
            f"keys already exist at {key_dir}; a new key breaks this host's registration with P0 "
            "(you would have to register again). Pass --force to replace them."
        )
    private = ec.generate_private_key(ec.SECP384R1())
    public_jwk = public_jwk_from_key(private.public_key())
    d = _int_to_b64(private.private_numbers().private_value)
    private_text = json.dumps({**public_jwk, "d": d}, separators=(",", ":")).encode()
    public_text = json.dumps(public_jwk, separators=(",", ":")).encode() + b"\n"
    dir_fd = os.open(key_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    suffix = secrets.token_hex(6)
    temps = (f".{PRIVATE_KEY_FILE}.{suffix}", f".{PUBLIC_KEY_FILE}.{suffix}")
    try:
        _write_new(dir_fd, temps[0], private_text, 0o600)
        _write_new(dir_fd, temps[1], public_text, 0o644)
        # Replace the private key first: if we die in between, the public key is stale but `status` says so.
        os.replace(temps[0], PRIVATE_KEY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.replace(temps[1], PUBLIC_KEY_FILE, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)
        os.fsync(dir_fd)
    finally:
        for name in temps:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(name, dir_fd=dir_fd)
        os.close(dir_fd)
    return AgentKey(private, public_jwk, jwk_thumbprint(public_jwk), key_dir)
