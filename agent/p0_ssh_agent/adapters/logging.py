"""Logging: structlog set up once for three destinations, with secrets redacted from every event.

* Under journald (stdout/stderr connected to the journal, recognised by JOURNAL_STREAM as systemd.exec(5)
  describes): one line per event, a "<N>" syslog-priority prefix that journald turns into PRIORITY= (so
  `journalctl -p warning` works), no timestamp (the journal has its own), then logfmt-style key=value pairs.
* On a terminal: structlog's ConsoleRenderer with colours (NO_COLOR turns them off).
* Anything else (a pipe, a file): an ISO-8601 UTC timestamp, the level, then the same key=value pairs.

The standard library's `logging` goes through the same chain, so library messages are formatted and redacted
like ours. Redaction runs in the processor chain before anything leaves structlog: a handler added later (for
example pytest's caplog) sees the redacted event too.
"""

from __future__ import annotations

import base64
import binascii
import json
import logging
import os
import re
import sys
from collections.abc import Mapping
from typing import Any, TextIO

import structlog

__all__ = ["configure_logging", "debug_enabled", "get_logger", "log_request_line", "redact"]

# systemd's SyslogLevelPrefix= parses these (sd-daemon.h: SD_CRIT "<2>" ... SD_DEBUG "<7>").
JOURNALD_PRIORITY = {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}

# One hostile field must not turn a log line into megabytes; redaction runs before this cut, so the cut can
# never leave half a token behind.
MAX_VALUE_CHARS = 8192

# trio-websocket logs every frame and ping at DEBUG, and some harmless events at INFO.
QUIET_LIBRARY_LOGGERS = ("trio-websocket",)

_HANDLER_MARK = "_p0_ssh_agent_handler"
_STRUCTLOG_META_KEYS = frozenset({"_record", "_from_structlog"})

EventDict = structlog.typing.EventDict


def configure_logging(
    *, verbose: bool = False, stream: TextIO | None = None, env: Mapping[str, str] | None = None
) -> None:
    """Route structlog and stdlib logging to `stream` (default: stderr), chosen by what the stream is.

    Idempotent: a second call replaces the first configuration (and its handler) instead of adding to it.
    """
    environ = os.environ if env is None else env
    out = sys.stderr if stream is None else stream
    mode = _output_mode(out, environ)

    shared: list[structlog.typing.Processor] = [
        structlog.stdlib.add_log_level,
        # After the event's own keys (merge_contextvars uses setdefault), so a canonical line keeps its order.
        structlog.contextvars.merge_contextvars,
    ]
    if mode != "journald":
        shared.append(
            structlog.processors.TimeStamper(fmt="iso", utc=True)
            if mode == "plain"
            else structlog.processors.TimeStamper(fmt="%Y-%m-%d %H:%M:%S", utc=False)
        )
    # Tracebacks become a plain string before redaction, so the redactor sees them too.
    shared += [structlog.processors.format_exc_info, _redact_event]

    renderer: structlog.typing.Processor
    if mode == "console":
        renderer = structlog.dev.ConsoleRenderer(colors="NO_COLOR" not in environ, sort_keys=False)
    else:
        renderer = LineRenderer(journald=mode == "journald")

    structlog.configure(
        processors=[
            structlog.stdlib.filter_by_level,
            *shared,
            structlog.stdlib.ProcessorFormatter.wrap_for_formatter,
        ],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=_BoundLogger,
        # Not cached: a second configure_logging() (tests, a future log-level reload) must reach loggers that
        # modules created at import time.
        cache_logger_on_first_use=False,
    )

    handler = logging.StreamHandler(out)
    setattr(handler, _HANDLER_MARK, True)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[structlog.stdlib.add_logger_name, *shared],
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    # No caller lookup (file, line, function) for each record: no renderer here prints one, and the lookup walks
    # the stack on every line (the stdlib's own advice, "Optimization" in the logging HOWTO).
    logging._srcfile = None
    root = logging.getLogger()
    for old in [h for h in root.handlers if getattr(h, _HANDLER_MARK, False)]:
        root.removeHandler(old)
        old.close()
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for name in QUIET_LIBRARY_LOGGERS:
        logging.getLogger(name).setLevel(logging.WARNING)


class _BoundLogger(structlog.stdlib.BoundLogger):
    def exception(self, event: str | None = None, *args: Any, **kw: Any) -> Any:
        """As error(exc_info=True). structlog's own version calls logging.Logger.exception, which attaches the
        raw exception to the LogRecord, and any other handler (pytest's caplog, a handler a library adds)
        would print that traceback unredacted. Here format_exc_info consumes it in our chain instead."""
        kw.setdefault("exc_info", True)
        return self.error(event, *args, **kw)


def get_logger(name: str | None = None) -> structlog.stdlib.BoundLogger:
    """A logger named after the module (pass `__name__`); usable before configure_logging() runs."""
    if name is None:
        return structlog.stdlib.get_logger()
    return structlog.stdlib.get_logger(name)


REQUEST_LOGGER = "p0_ssh_agent.request"
_request_log = get_logger(REQUEST_LOGGER)
# The request line's logger, bound once per structlog configuration instead of on every line (the module loggers
# are lazy proxies that assemble a new BoundLogger at each call, so that a later configure reaches them).
_CONFIG_PARTS = ("processors", "context_class", "wrapper_class", "logger_factory")
_request_bound: dict[str, tuple[tuple[object, ...], Any]] = {}  # "logger": (the configuration's parts, the logger)


def _request_logger() -> Any:
    config = structlog.get_config()
    parts = tuple(config[name] for name in _CONFIG_PARTS)
    bound = _request_bound.get("logger")
    # By identity: configure() and reset_defaults() install new objects, and the cache follows. The cache holds
    # the parts it was made with, so none of them can be freed and its id reused by a new one.
    if bound is None or any(new is not old for new, old in zip(parts, bound[0], strict=True)):
        bound = _request_bound["logger"] = (parts, _request_log.bind())
    return bound[1]


def debug_enabled(name: str) -> bool:
    """Whether a debug event of logger `name` would be written: lets a hot path skip building one that would be
    dropped (the level filter of our chain, structlog.stdlib.filter_by_level, asks the same question)."""
    return logging.getLogger(name).isEnabledFor(logging.DEBUG)


def log_request_line(
    *,
    request_id: str,
    command: str,
    user: str,
    action: str,
    outcome: str,
    duration_ms: float,
    **extra: object,
) -> None:
    """The one canonical line per request: `request request_id=… command=… user=… action=… outcome=…
    duration_ms=…` then any extra fields. Operators grep for it; keep the field order stable."""
    _request_logger().info(
        "request",
        request_id=request_id,
        command=command,
        user=user,
        action=action,
        outcome=outcome,
        duration_ms=duration_ms,
        **extra,
    )


def _output_mode(stream: TextIO, env: Mapping[str, str]) -> str:
    """ "journald", "console" or "plain" for this stream."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):
        # io.StringIO and friends (io.UnsupportedOperation is both an OSError and a ValueError)
        return "plain"
    if _is_journal_stream(fd, env.get("JOURNAL_STREAM", "")):
        return "journald"
    try:
        return "console" if os.isatty(fd) else "plain"
    except OSError:
        return "plain"


def _is_journal_stream(fd: int, journal_stream: str) -> bool:
    """systemd.exec(5): JOURNAL_STREAM is "<st_dev>:<st_ino>" of the journal socket. Comparing it with our own
    stream (not just checking it is set) matters: a child of a service inherits the variable even when its
    output goes to a pipe or a terminal."""
    device, sep, inode = journal_stream.partition(":")
    if not sep:
        return False
    try:
        stat = os.fstat(fd)
        return stat.st_dev == int(device) and stat.st_ino == int(inode)
    except (OSError, ValueError):
        return False


def _redact_event(_logger: Any, _method: str, event_dict: EventDict) -> EventDict:
    """Processor: redact every value; objects of unknown type are turned into (redacted) text here, because
    their str() might carry a token that no later stage would recognise."""
    redacted: EventDict = {}
    for key, value in event_dict.items():
        if key in _STRUCTLOG_META_KEYS:
            redacted[key] = value
        elif is_sensitive_key(key):
            redacted[key] = REDACTED
        elif type(value) is str:  # the common case, as redact() would treat it, without its type tests
            redacted[key] = redact_text(value)
        else:
            redacted[key] = redact(_stringify_unknown(value))
    return redacted


def _stringify_unknown(value: object) -> object:
    if value is None or isinstance(value, str | bytes | bool | int | float):
        return value
    if isinstance(value, dict):
        return {k: _stringify_unknown(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(_stringify_unknown(v) for v in value)
    return str(value)


class LineRenderer:
    """One line per event: `<6>event k=v …` for journald, `<timestamp> <level> event k=v …` otherwise."""

    def __init__(self, *, journald: bool) -> None:
        self.journald = journald

    def __call__(self, _logger: Any, _method: str, event_dict: EventDict) -> str:
        level = str(event_dict.pop("level", "info"))
        timestamp = event_dict.pop("timestamp", None)
        event = _one_line(str(event_dict.pop("event", "")))
        fields = " ".join(f"{_key(k)}={format_value(v)}" for k, v in event_dict.items())
        if self.journald:
            head = f"<{JOURNALD_PRIORITY.get(level, 6)}>{event}"
        else:
            head = f"{timestamp} {level} {event}" if timestamp else f"{level} {event}"
        return f"{head} {fields}" if fields else head


def format_value(value: object) -> str:
    """logfmt-style: bare when unambiguous, else a JSON string literal (which also escapes newlines)."""
    if type(value) is str:  # the common case first; the same steps as for any other text below
        text = value
    elif value is None:
        return "-"
    elif isinstance(value, bool):
        return "true" if value else "false"
    elif isinstance(value, int | float):
        return str(value)  # str, not repr: an IntEnum (an exit code) prints as its number
    elif isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
    elif isinstance(value, dict | list | tuple):
        text = json.dumps(value, separators=(",", ":"), ensure_ascii=False, default=str)
    else:
        text = str(value)
    # A safety net for text produced after the redaction processor (json.dumps of odd objects).
    text = redact_text(text)
    if len(text) > MAX_VALUE_CHARS:
        text = f"{text[:MAX_VALUE_CHARS]}…({len(text) - MAX_VALUE_CHARS} more chars)"
    # The regex is a fast path for the common plain value (it accepts only characters the general test accepts):
    # this runs for every field of every request line, and the per-character test was a third of its cost.
    if _PLAIN_TEXT.fullmatch(text) or (
        text and not any(c.isspace() or c in '="\\' or not c.isprintable() for c in text)
    ):
        return text
    return json.dumps(text, ensure_ascii=False)


_PLAIN_TEXT = re.compile(r"[A-Za-z0-9_.:/@+,-]+")


def _key(key: str) -> str:
    if _PLAIN_TEXT.fullmatch(key):  # fast path, as in format_value: nothing here would be replaced
        return key
    return "".join("_" if c.isspace() or c in '="' or not c.isprintable() else c for c in key) or "_"


def _one_line(text: str) -> str:
    return text.replace("\r", "\\r").replace("\n", "\\n")


# --- redaction ---------------------------------------------------------------------------------------------

REDACTED = "[REDACTED]"
REDACTED_JWT = "[REDACTED-JWT]"
REDACTED_PRIVATE_KEY = "[REDACTED-PRIVATE-KEY]"

# Compared after lower-casing and dropping "-", "_" and spaces, so "Proxy-Authorization", "private_key" and
# "privateKey" are one entry.
_SENSITIVE_KEYS = frozenset(
    {
        "authorization",
        "proxyauthorization",
        "token",
        "jwt",
        "auth",
        "password",
        "passwd",
        "passphrase",
        "privatekey",
        "cookie",
        "setcookie",
        "secret",
        "credentials",
        "apikey",
    }
)
_SENSITIVE_SUFFIXES = ("token", "secret", "password", "privatekey", "apikey", "credentials")
# Private members of a JWK (RFC 7518 §6): "d" for EC and RSA, the CRT values for RSA, "k" for symmetric keys.
# Only meaningful inside an object that is a JWK (it has "kty"); elsewhere "d" or "k" is an ordinary name.
_JWK_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})

_BEARER = re.compile(r"\b(bearer)\s+[^\s\"',;]+", re.IGNORECASE)
_BASIC = re.compile(r"\b(basic)\s+([A-Za-z0-9+/=]+)", re.IGNORECASE)
_JWT = re.compile(r"\beyJ[A-Za-z0-9_-]*\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]*")
# An unterminated block (a truncated dump) is redacted to the end of the text.
_PEM_PRIVATE = re.compile(
    r"-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----.*?(?:-----END [A-Z0-9 ]*PRIVATE KEY-----|\Z)", re.DOTALL
)
_URL_USERINFO = re.compile(r"\b([a-zA-Z][a-zA-Z0-9+.-]*://)[^/\s@]+@")
# "key": "value" pairs inside text that is itself JSON (a raw frame in a debug line).
_JSON_PAIR = re.compile(r'"((?:[^"\\]|\\.){1,64})"(\s*:\s*)"(?:[^"\\]|\\.)*"')
# Every pattern above needs one of these literals (case-insensitive here, a superset of what they match), so text
# without any of them is returned as it is: most log values are short plain words, and redact_text runs on each.
_CREDENTIAL_HINT = re.compile(r'-----BEGIN|bearer|basic|eyJ|://|"', re.IGNORECASE)


# Answers of is_sensitive_key for text keys: log events use a few dozen names, each asked about on every line.
# Bounded (keys of a logged mapping may come from the network): emptied when full.
_SENSITIVE_KEY_MEMO: dict[str, bool] = {}
_SENSITIVE_KEY_MEMO_SIZE = 1024


def is_sensitive_key(key: object) -> bool:
    """True for mapping keys whose values are credentials (compared case- and separator-insensitively)."""
    if type(key) is str:
        known = _SENSITIVE_KEY_MEMO.get(key)
        if known is not None:
            return known
    if isinstance(key, bytes):
        key = key.decode("latin-1")
    if not isinstance(key, str):
        return False
    normal = key.lower().replace("-", "").replace("_", "").replace(" ", "")
    sensitive = normal in _SENSITIVE_KEYS or normal.endswith(_SENSITIVE_SUFFIXES)
    if type(key) is str:
        if len(_SENSITIVE_KEY_MEMO) >= _SENSITIVE_KEY_MEMO_SIZE:
            _SENSITIVE_KEY_MEMO.clear()
        _SENSITIVE_KEY_MEMO[key] = sensitive
    return sensitive


def redact(value: object) -> object:
    """A copy of `value` with credentials replaced, recursing into dicts, lists and tuples.

    Keys such as Authorization, token, password, private_key (and a JWK's "d") lose their values;
    "Bearer …"/"Basic …" credentials, JWT-shaped strings, PEM private keys and user:password@ in URLs are cut
    out of any string. Other values are returned unchanged.
    """
    if isinstance(value, str):
        return redact_text(value)
    if isinstance(value, bytes):
        text = value.decode("utf-8", "backslashreplace")
        cleaned = redact_text(text)
        return value if cleaned == text else cleaned
    if isinstance(value, dict):
        is_jwk = "kty" in value
        return {
            key: REDACTED if is_sensitive_key(key) or (is_jwk and key in _JWK_PRIVATE_MEMBERS) else redact(item)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        # Header lists such as [(b"authorization", b"Bearer …")] carry the name in the first element.
        if len(value) == 2 and isinstance(value, tuple) and is_sensitive_key(value[0]):
            return (value[0], REDACTED)
        return type(value)(redact(item) for item in value)
    return value


def redact_text(text: str) -> str:
    """Cut credentials out of free text (see redact())."""
    if _CREDENTIAL_HINT.search(text) is None:  # no pattern below can match: skip five substitutions
        return text
    text = _PEM_PRIVATE.sub(REDACTED_PRIVATE_KEY, text)
    text = _BEARER.sub(lambda m: f"{m.group(1)} {REDACTED}", text)
    text = _BASIC.sub(_redact_basic, text)
    text = _JWT.sub(REDACTED_JWT, text)
    text = _URL_USERINFO.sub(lambda m: f"{m.group(1)}{REDACTED}@", text)
    if '"' in text:
        text = _JSON_PAIR.sub(_redact_json_pair, text)
    return text


def _redact_basic(match: re.Match[str]) -> str:
    """ "Basic" is also an English word ("Basic authentication"): only a base64 "user:password" counts."""
    scheme, blob = match.group(1), match.group(2)
    try:
        decoded = base64.b64decode(blob, validate=True)
    except (binascii.Error, ValueError):
        return match.group(0)
    return f"{scheme} {REDACTED}" if b":" in decoded else match.group(0)


def _redact_json_pair(match: re.Match[str]) -> str:
    if not is_sensitive_key(match.group(1)):
        return match.group(0)
    return f'"{match.group(1)}"{match.group(2)}"{REDACTED}"'
