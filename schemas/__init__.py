"""Wire models shared by the worker, Managers and clients.

``schemas.envelopes`` (Command, Reply, Health, Heartbeat, Announcement), ``schemas.codec`` (bounded
msgpack/JSON), ``schemas.subjects`` (subject builders and parser). Operation parameter and result
models live in ``schemas.operations``; storage key names in ``schemas.keys``.
"""

from schemas import codec, subjects
from schemas.envelopes import (
    PROTOCOL_VERSION,
    Announcement,
    Command,
    ErrorInfo,
    Event,
    Health,
    Heartbeat,
    Load,
    NatsHealth,
    Reply,
    StorageHealth,
    Timings,
    WorkerStatus,
    parse_command,
)

__all__ = [
    "PROTOCOL_VERSION",
    "Announcement",
    "Command",
    "ErrorInfo",
    "Event",
    "Health",
    "Heartbeat",
    "Load",
    "NatsHealth",
    "Reply",
    "StorageHealth",
    "Timings",
    "WorkerStatus",
    "codec",
    "parse_command",
    "subjects",
]
