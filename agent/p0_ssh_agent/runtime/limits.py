"""Every bound on what the backend can make the agent hold, in one place, and the worst case they add up to.

The backend (or whoever holds its credentials) decides how many frames it sends, how large they are and how
fast; the agent decides how much of that it keeps. Each holder below has a fixed ceiling, and the total is what
docs/security.md writes down and the unit's MemoryMax= is sized from (systemd/p0-ssh-agent.service).

    holder                                         ceiling
    frames the WebSocket library queued            (MESSAGE_QUEUE_SIZE + 2) * STRING_BYTES_PER_CHAR * MAX_FRAME
    the one frame the reader is parsing            STRING_BYTES_PER_CHAR * MAX_FRAME + 2 * MAX_FRAME_HELD
    calls taken in and not yet answered            IN_FLIGHT_BUDGET (frames as parsed + their result allowances)
    agent-access calls taken in, not yet answered  ACCESS_IN_FLIGHT_BUDGET (the same, on a budget of their own)
    bookkeeping per call (tasks, events, closures) MAX_JOBS * JOB_OVERHEAD
    the one answer being encoded and written       REPLY_ENCODING
    the host tools running at once                 HOST_THREADS * CHILD_PROCESS

Python keeps a string in 1, 2 or 4 bytes per character, set by its widest character, so one emoji in a 1 MiB
frame of ASCII makes it a 4 MiB string: every string term counts 4 bytes per character.
"""

from __future__ import annotations

from p0_ssh_agent.core.requests import Command
from p0_ssh_agent.host.inventory import MAX_OUTPUT_BYTES
from p0_ssh_agent.protocol.jsonrpc import BYTES_PER_VALUE, MAX_FRAME_BYTES, MAX_FRAME_VALUES, STRING_BYTES_PER_CHAR

KIB = 1024
MIB = 1024 * KIB

# trio-websocket's own queue of whole messages between its socket reader and ours. Ours never blocks for long
# (it parses, then hands over or answers busy), so a few frames absorb a burst; when it is full the library stops
# reading the socket and TCP pushes back on the backend. It answers pings in the meantime only while not full.
MESSAGE_QUEUE_SIZE = 4
# The most a parsed frame can hold: its strings at 4 bytes per character plus every JSON value's object.
MAX_FRAME_HELD = STRING_BYTES_PER_CHAR * MAX_FRAME_BYTES + BYTES_PER_VALUE * MAX_FRAME_VALUES

# Calls in flight share one byte budget: a call is taken in only if its parsed frame and the answer it may
# produce fit in what is left; otherwise it is answered 503 busy at once. Its share comes back when its answer
# has been sent and the host change it started (which may outlive a timed-out answer) has finished.
IN_FLIGHT_BUDGET = 64 * MIB
# An answer's text (message, error, output) is kept within its command's allowance, in characters; the
# reservation counts them at STRING_BYTES_PER_CHAR. Read-only commands carry the host's output (capped at
# MAX_OUTPUT_BYTES by host/inventory.py); every other answer is a short message (a dry run's plan included).
SMALL_ANSWER_CHARS = 16 * KIB
OUTPUT_COMMANDS = frozenset({Command.LIST_USERS.value, Command.RUN_AUDIT.value, Command.COLLECT_SUDOSH.value})
OUTPUT_ANSWER_CHARS = MAX_OUTPUT_BYTES + SMALL_ANSWER_CHARS
# The count of jobs in flight is bounded too (a call's answer and the execution it started count one each, as in
# Worker.pending): each costs trio tasks, events and closures whatever its frame's size (measured: about 8 KiB for
# the pair; JOB_OVERHEAD leaves room).
MAX_JOBS = 1024
JOB_OVERHEAD = 16 * KIB

# Answers are encoded when their turn to be written comes (under the send lock), so only one exists as JSON at a
# time: its text (up to 6 characters per output byte for escaped control characters, 4 bytes each), then the
# UTF-8 payload and the frame wsproto builds from it (6 bytes per output byte each), plus the echoed command name.
REPLY_ENCODING = (6 * STRING_BYTES_PER_CHAR + 6 + 6) * MAX_OUTPUT_BYTES + STRING_BYTES_PER_CHAR * MAX_FRAME_BYTES

# Host work runs in trio's worker threads; this pins their number (trio's default, made a decision here), and with
# it how many host tools (useradd, visudo, loginctl, sshd -T ...) run at once. Each tool may start a helper of its
# own (useradd runs nscd or sss_cache), hence CHILDREN_PER_THREAD for TasksMax=; CHILD_PROCESS is the private
# memory one such tool adds to the service's cgroup (their code is shared page cache).
HOST_THREADS = 40
CHILDREN_PER_THREAD = 2
CHILD_PROCESS = 2 * MIB
# Tasks (threads and processes) in the service's cgroup at most: the event loop's thread, then per host thread
# itself, its tool and the tool's helpers. The unit's TasksMax= is sized from it.
MAX_TASKS = 1 + HOST_THREADS * (2 + CHILDREN_PER_THREAD)
# Descriptors one host call holds at most: starting a tool (three pipes and exec's error pipe, both ends: 8), the
# nested locks (accounts, uid-N, sudoers, ledger, and the lock directory while opening one: 5), a home edit's
# directory walk (/home, the home, ~/.ssh, the file, its temp file: 5), the ledger (its directory, file and temp
# file: 3), a /proc sweep (the directory and one pidfd: 2); rounded up. BASE_FDS: stdio, epoll, trio's wakeup
# socketpair, the WebSocket, the notify and journal sockets, the configuration and key while they are read.
FDS_PER_THREAD = 24
BASE_FDS = 32
MAX_FDS = BASE_FDS + HOST_THREADS * FDS_PER_THREAD

# Agent access (issue 17, docs/ai-agents.md): ssh_* calls run on a lane of their own (runtime/worker.py), so a P0
# grant or revoke never waits behind one: they take neither a user's lock nor the worker's shared limiter, but
# ACCESS_PARALLEL tokens for all accounts, ACCESS_PER_ACCOUNT per account with at most ACCESS_QUEUE_PER_ACCOUNT
# waiting behind those (one more is answered 503 busy), and their bytes come from ACCESS_IN_FLIGHT_BUDGET.
ACCESS_COMMAND_PREFIX = "ssh_"
ACCESS_PARALLEL = 8
ACCESS_PER_ACCOUNT = 2
ACCESS_QUEUE_PER_ACCOUNT = 4
# An exec answer carries stdout and stderr, each up to ACCESS_STREAM_BYTES (agent_access/access_model.py
# MAX_STREAM_BYTES; tests/test_access_lane.py holds them equal) as base64: 4 ASCII characters per 3 bytes, one byte
# each in a Python string. Each is held twice (the worker's reply as read from its pipe, then parsed). A read's
# 512 KiB and a tree's entries fit in the same allowance; the rest of the answer is a short text.
ACCESS_STREAM_BYTES = MIB
ACCESS_STREAM_CHARS = 4 * ((ACCESS_STREAM_BYTES + 2) // 3)
ACCESS_ANSWER_CHARS = 2 * ACCESS_STREAM_CHARS + SMALL_ANSWER_CHARS
ACCESS_ANSWER_BYTES = 2 * 2 * ACCESS_STREAM_CHARS + STRING_BYTES_PER_CHAR * SMALL_ANSWER_CHARS
# Room for ACCESS_PARALLEL exec answers with their frames: more in flight at once is answered 503 busy. Its one
# answer being encoded (ASCII: the JSON text, its UTF-8 and the frame, 3 x 2.7 MiB) fits in REPLY_ENCODING.
ACCESS_IN_FLIGHT_BUDGET = 48 * MIB

LIBRARY_QUEUE_BYTES = (MESSAGE_QUEUE_SIZE + 2) * STRING_BYTES_PER_CHAR * MAX_FRAME_BYTES
READER_BYTES = STRING_BYTES_PER_CHAR * MAX_FRAME_BYTES + 2 * MAX_FRAME_HELD
JOBS_BYTES = MAX_JOBS * JOB_OVERHEAD
CHILDREN_BYTES = HOST_THREADS * CHILD_PROCESS
# What the agent's own process can hold because of the backend (its RSS above idle), and with the host tools it
# runs, what its cgroup can (MemoryMax= counts both).
PROCESS_WORST_CASE_BYTES = (
    LIBRARY_QUEUE_BYTES + READER_BYTES + IN_FLIGHT_BUDGET + ACCESS_IN_FLIGHT_BUDGET + JOBS_BYTES + REPLY_ENCODING
)
WORST_CASE_BYTES = PROCESS_WORST_CASE_BYTES + CHILDREN_BYTES


def answer_chars_allowed(command: str) -> int:
    """How many characters the answer to `command` may carry (output-bearing read-only commands get the cap)."""
    if is_access_command(command):
        return ACCESS_ANSWER_CHARS
    return OUTPUT_ANSWER_CHARS if command in OUTPUT_COMMANDS else SMALL_ANSWER_CHARS


def answer_bytes_allowed(command: str) -> int:
    """What the answer to `command` is reserved in its budget: its characters at 4 bytes each, but an agent-access
    answer's streams are base64 (ASCII, one byte per character) and counted as such (ACCESS_ANSWER_BYTES)."""
    if is_access_command(command):
        return ACCESS_ANSWER_BYTES
    return STRING_BYTES_PER_CHAR * answer_chars_allowed(command)


def is_access_command(command: str) -> bool:
    """An agent-access command (issue 17): routed to its own lane, whatever follows the prefix (an unknown ssh_*
    name is that lane's to refuse), so none of them ever reaches P0's pipeline or waits in its queue."""
    return command.startswith(ACCESS_COMMAND_PREFIX)
