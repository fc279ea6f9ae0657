"""The shared shapes of the agent-access line (pure): commands, operations, worker jobs and replies, refusals.

Everything a helper module passes to another is defined here, so the modules agree on one vocabulary.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class AccessCommand(StrEnum):
    """The forwarded body's `command` for agent access, and (action) the Cedar action each is judged as."""

    FILE_READ = "ssh_file_read"
    FILE_WRITE = "ssh_file_write"
    FILE_CREATE = "ssh_file_create"
    FILE_DELETE = "ssh_file_delete"
    FILE_MOVE = "ssh_file_move"
    FILE_COPY = "ssh_file_copy"
    DIR_LIST = "ssh_dir_list"
    DIR_TREE = "ssh_dir_tree"
    DIR_CREATE = "ssh_dir_create"
    DIR_DELETE = "ssh_dir_delete"
    DIR_DELETE_RECURSIVE = "ssh_dir_delete_recursive"
    EXEC = "ssh_exec"

    @property
    def action(self) -> str:
        """The Cedar action id, without a namespace as the issue's fragment writes it: ssh_file_read ->
        "/ssh/file/read", ssh_dir_delete_recursive -> "/ssh/dir/delete_recursive", ssh_exec -> "/ssh/exec"."""
        kind, _, rest = self.value.removeprefix("ssh_").partition("_")
        return f"/ssh/{kind}" + (f"/{rest}" if rest else "")

    @property
    def ability(self) -> str:
        """The UCAN ability that covers it: the action without its leading slash ("ssh/file/read")."""
        return self.action.removeprefix("/")


ACCESS_COMMANDS = frozenset(command.value for command in AccessCommand)
# Commands that write or delete: a dry run describes them; the audit entry carries sizes and digests.
CHANGING_COMMANDS = frozenset(
    {
        AccessCommand.FILE_WRITE,
        AccessCommand.FILE_CREATE,
        AccessCommand.FILE_DELETE,
        AccessCommand.FILE_MOVE,
        AccessCommand.FILE_COPY,
        AccessCommand.DIR_CREATE,
        AccessCommand.DIR_DELETE,
        AccessCommand.DIR_DELETE_RECURSIVE,
        AccessCommand.EXEC,
    }
)

# Per-call limits (docs/ai-agents.md): the tunnel server refuses request bodies over 100 kB (body-parser's default,
# upstream-protocol.md §4), and base64 makes 4 characters of 3 bytes, so a write carries at most 64 KiB; a read
# answers at most 512 KiB (about 700 kB of base64 in one answer frame).
MAX_WRITE_BYTES = 64 * 1024
MAX_READ_BYTES = 512 * 1024
# Exec: each stream is captured up to 1 MiB; what comes after is dropped and the answer says `truncated`.
MAX_STREAM_BYTES = 1024 * 1024
MAX_EXEC_ARGS = 256
MAX_EXEC_ARG_BYTES = 32 * 1024  # all of argv together
DEFAULT_EXEC_SECONDS = 30
MAX_EXEC_SECONDS = 110  # the answer must come within runtime/worker.py's DEFAULT_ANSWER_SECONDS (120)
MAX_TREE_ENTRIES = 5000
MAX_TREE_DEPTH = 16
MAX_LIST_ENTRIES = 5000
MAX_PATH_BYTES = 4096
MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class Operation:
    """One parsed agent-access request (operations.parse_operation): every field validated, nothing resolved.

    paths: the absolute, lexically clean paths it names, in order (move/copy: source then destination).
    data: the bytes a write/create carries (decoded from base64), else b"".
    """

    command: AccessCommand
    request_id: str
    username: str
    host: str  # the host the request names ("" when it names none: this agent's own is assumed)
    paths: tuple[str, ...]
    ucan: str  # the UCAN, compact JWT form
    cosignature: str = ""  # a compact JWS from an approver, or ""
    data: bytes = b""
    offset: int | None = None  # read/write; None with append for writes
    length: int | None = None  # read
    append: bool = False
    truncate: bool = False  # write: cut the file at offset + len(data)
    overwrite: bool = False  # move/copy/create: replace an existing regular file
    depth: int = 1  # tree
    argv: tuple[str, ...] = ()  # exec
    cwd: str = ""  # exec: inside the prefix; "" means the prefix itself
    timeout_seconds: int = DEFAULT_EXEC_SECONDS


@dataclass(frozen=True)
class Grant:
    """One (ability, constraint) pair of a UCAN: `cap["ssh://<host>"]["<ability>"]` holding the caveat
    {"provider": "ssh", "host": ..., "username": ..., "path_prefix": ...}. ability: "ssh/file/read" ... or "ssh/*"."""

    ability: str
    host: str
    username: str
    path_prefix: str  # absolute and lexically clean (scoped_paths.clean_prefix accepted it)


@dataclass(frozen=True)
class Capability:
    """A verified UCAN (capability.verify_ucan): who issued it, until when, and what it grants."""

    issuer: str  # the `iss` DID, as listed in the trust file
    audience: str  # "did:web:<this host's name>"
    not_before: int | None
    expires: int
    grants: tuple[Grant, ...]
    digest: str  # "sha256:<hex>" of the token text: what a cosignature binds
    nonce: str = ""


@dataclass(frozen=True)
class TargetAccount:
    """The account an operation runs as, read once from NSS and shadow (eligibility.py)."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str
    groups: tuple[str, ...]  # every group it is in, primary included, by name
    locked: bool  # expired (shadow) or a nologin/false shell
    system: bool  # uid below UID_MIN (login.defs), or nobody


@dataclass(frozen=True)
class TrustedKey:
    """One issuer or approver key from the trust file (trust_keys.py)."""

    key_id: str  # an issuer's `iss` DID, or an approver's `kid`
    algorithm: str  # "EdDSA" | "ES256" | "ES384": the only one accepted for this key
    public_key: object  # a cryptography public key object (Ed25519PublicKey or EllipticCurvePublicKey)


@dataclass(frozen=True)
class TrustKeys:
    issuers: dict[str, TrustedKey] = field(default_factory=dict)
    approvers: dict[str, TrustedKey] = field(default_factory=dict)


class RefusalKind(StrEnum):
    """Why a request was not run; each maps to an HTTP status in answers.py."""

    INVALID = "invalid_request"  # 400
    DISABLED = "disabled"  # 403: the kill switch, or the account is not listed
    ACCOUNT = "account_not_allowed"  # 403: root, system, locked, root-equivalent, missing
    CAPABILITY = "capability_rejected"  # 403: signature, time, audience, delegation
    OUTSIDE = "outside_capability"  # 403: host, username or path not within the constraint
    STEP_UP = "step_up_required"  # 403: exec without a valid cosignature
    POLICY = "denied_by_policy"  # 403: the agent-access Cedar policy
    NOT_FOUND = "not_found"  # 404
    EXISTS = "already_exists"  # 409
    CONFLICT = "conflict"  # 409: not a directory, is a directory, directory not empty
    REFUSED_FILE = "refused_file"  # 403: symlink out of the prefix, hard link, FIFO, device, socket, mount point
    TOO_LARGE = "too_large"  # 413
    BUSY = "busy"  # 503: the account's agent-access queue is full
    FAILED = "failed"  # 500: the worker failed, timed out starting, or replied garbage


# The kinds a worker may report (file_ops.py's, dir_ops.py's and exec_op.py's errors; INVALID: what it found wrong
# with the job, a prefix it refuses, say). Any other kind a reply names is garbage from a hostile or broken worker:
# confine.parse_reply and answers.py treat it as FAILED.
WORKER_ERROR_KINDS = frozenset(
    {
        RefusalKind.INVALID,
        RefusalKind.NOT_FOUND,
        RefusalKind.EXISTS,
        RefusalKind.CONFLICT,
        RefusalKind.REFUSED_FILE,
        RefusalKind.TOO_LARGE,
        RefusalKind.FAILED,
    }
)


@dataclass(frozen=True)
class Refusal:
    kind: RefusalKind
    message: str
    policy: str = ""  # the Cedar policy ids that decided, for POLICY


@dataclass(frozen=True)
class WorkerJob:
    """What the confined worker is told to do (JSON on its stdin; worker_main.py). `prefix` is the capability's
    path_prefix: the worker resolves every path beneath it again, with descriptors, without following links."""

    op: str  # the AccessCommand value
    prefix: str
    paths: tuple[str, ...]
    data_b64: str = ""
    offset: int | None = None
    length: int | None = None
    append: bool = False
    truncate: bool = False
    overwrite: bool = False
    depth: int = 1
    argv: tuple[str, ...] = ()
    cwd: str = ""
    timeout_seconds: int = DEFAULT_EXEC_SECONDS


@dataclass(frozen=True)
class WorkerReply:
    """What the worker answered, parsed and bounded by confine.py. ok False: `error_kind` is a RefusalKind value
    (not_found, already_exists, conflict, refused_file, too_large, failed) and `message` says which path."""

    ok: bool
    result: dict[str, object] = field(default_factory=dict)
    error_kind: str = ""
    message: str = ""
