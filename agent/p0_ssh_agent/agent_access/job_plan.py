"""From an allowed operation to what the worker is told (pure): plan_job, and what a dry run says instead.

The job's `prefix` is the covering grant's path_prefix: the worker resolves every path beneath it again, with
descriptors and without following a link out of it (file_ops.py), whatever this line already checked on the text.
An exec's working directory is the prefix itself when the request names none.

A dry run (`dryRun: true`) stops after the decision and describes what would run: as which account, in which
confinement and with which limits, on which paths, with how many bytes (and their SHA-256), which command line.
Nothing runs, no cosignature is used up.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json

from p0_ssh_agent.agent_access.access_model import AccessCommand, Operation, TargetAccount, WorkerJob
from p0_ssh_agent.core import messages


def plan_job(operation: Operation, prefix: str) -> WorkerJob:
    return WorkerJob(
        op=operation.command.value,
        prefix=prefix,
        paths=operation.paths,
        data_b64=base64.b64encode(operation.data).decode("ascii") if operation.data else "",
        offset=operation.offset,
        length=operation.length,
        append=operation.append,
        truncate=operation.truncate,
        overwrite=operation.overwrite,
        depth=operation.depth,
        argv=operation.argv,
        cwd=operation.cwd or (prefix if operation.command is AccessCommand.EXEC else ""),
        timeout_seconds=operation.timeout_seconds,
    )


def content_digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def argv_digest(argv: tuple[str, ...]) -> str:
    """The exec's command line as one digest (JSON array, no spaces): what the audit entry names it by."""
    text = json.dumps(list(argv), ensure_ascii=False, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode("utf-8")).hexdigest()


def limits_of(limits: object) -> dict[str, object]:
    """The worker limits as plain values (a dataclass's fields), for the description."""
    if dataclasses.is_dataclass(limits) and not isinstance(limits, type):
        return {name: value for name, value in dataclasses.asdict(limits).items() if _plain(value)}
    return {}


def _plain(value: object) -> bool:
    return isinstance(value, str | int | float | bool) or value is None


def describe(
    operation: Operation,
    job: WorkerJob,
    account: TargetAccount,
    *,
    mode: str,
    limits: object,
    policies: tuple[str, ...],
    issuer: str,
    cosigner: bool,
) -> tuple[str, dict[str, object]]:
    """The dry run's text (one fact per line) and its structured form (the answer's `result`)."""
    limit_values = limits_of(limits)
    plan: dict[str, object] = {
        "dry_run": True,
        "command": operation.command.value,
        "account": account.name,
        "uid": account.uid,
        "confinement": mode,
        "limits": limit_values,
        "prefix": job.prefix,
        "paths": list(job.paths),
        "issuer": issuer,
        "cosigner": cosigner,
        "policies": list(policies),
    }
    lines = [
        f"would run as {account.name} (uid {account.uid}, gid {account.gid}) in its own confinement: {mode}",
        f"confined to {job.prefix} (every path resolved beneath it, no link followed out of it)",
    ]
    if limit_values:
        lines.append("limits: " + ", ".join(f"{name}={value}" for name, value in limit_values.items()))
    if job.paths:
        lines.append("paths: " + ", ".join(job.paths))
    if operation.command in (AccessCommand.FILE_WRITE, AccessCommand.FILE_CREATE):
        plan["bytes"] = len(operation.data)
        plan["content_sha256"] = content_digest(operation.data)
        where = "appended" if operation.append else f"at offset {operation.offset or 0}"
        lines.append(f"bytes: {len(operation.data)} {where} ({plan['content_sha256']})")
    if operation.command is AccessCommand.FILE_READ:
        plan["offset"], plan["length"] = operation.offset, operation.length
        lines.append(f"read: up to {operation.length} bytes at offset {operation.offset}")
    if operation.command is AccessCommand.EXEC:
        plan["argv"], plan["cwd"], plan["timeout_seconds"] = list(job.argv), job.cwd, job.timeout_seconds
        lines.append("argv: " + " ".join(messages.shown(arg, limit=200) for arg in job.argv))
        lines.append(f"cwd: {job.cwd}; timeout: {job.timeout_seconds} s (the whole unit is killed at it)")
    lines.append(
        f"decided by: {', '.join(policies) or '-'} (issuer {issuer}{', cosigned' if cosigner else ''}); "
        "nothing was run and no cosignature was used"
    )
    return "\n".join(lines), plan
