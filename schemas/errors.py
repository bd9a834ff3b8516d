"""Error codes and types of the contract (``Reply.error``), and the exceptions that carry them.

Every error Reply names one :class:`ErrorKind` of :data:`ERRORS`: an HTTP-like ``code``, a short
upper-case ``type`` and a ``retryable`` hint. A Manager matches on ``type``; ``code`` groups them.
The exception classes are plain Python so a Manager can raise and catch the same ones the worker does
(``worker/errors.py`` re-exports them and adds the mapping of arbitrary exceptions). This module
imports nothing outside the standard library.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar


@dataclass(frozen=True)
class ErrorKind:
    """One ``(code, type)`` an error Reply can carry, with what it means (for ``docs/protocol.md``)."""

    code: int
    type: str
    retryable: bool
    meaning: str


BAD_REQUEST = ErrorKind(
    400, "BAD_REQUEST", False,
    "malformed input: not msgpack/JSON, wrong types, bad params, op differs from the subject",
)
INVALID_NAME = ErrorKind(400, "INVALID_NAME", False, "a storage key or name storage would rewrite")
PAYLOAD_TOO_LARGE = ErrorKind(
    400, "PAYLOAD_TOO_LARGE", False,
    "the message exceeds MAX_MESSAGE_BYTES, or an object the command implies exceeds MAX_OBJECT_BYTES",
)
UNKNOWN_OPERATION = ErrorKind(400, "UNKNOWN_OPERATION", False, "no such operation on this worker")
UNSUPPORTED_OPERATION = ErrorKind(
    400, "UNSUPPORTED_OPERATION", False,
    "the operation cannot be done correctly under the chosen scheme (e.g. Manhattan under CKKS)",
)
UNSUPPORTED_VERSION = ErrorKind(400, "UNSUPPORTED_VERSION", False, "`v` is not 1")
NOT_FOUND = ErrorKind(404, "NOT_FOUND", False, "a storage key the command names does not exist")
CONFLICT = ErrorKind(409, "CONFLICT", False, "the command conflicts with stored state")
VALIDATION_FAILED = ErrorKind(
    422, "VALIDATION_FAILED", False, "stored data disagrees with the command (shapes, dtypes)"
)
CORRUPT_OBJECT = ErrorKind(422, "CORRUPT_OBJECT", False, "stored bytes disagree with their tags or checksum")
MISSING_KEYS = ErrorKind(
    422, "MISSING_KEYS", False,
    "key material an operation needs is absent or unacceptable (e.g. a secret key)",
)
INTERNAL = ErrorKind(500, "INTERNAL", False, "a bug or unexpected failure in the worker")
COMPUTE_CRASHED = ErrorKind(
    500, "COMPUTE_CRASHED", False,
    "the compute process running the job died (its slot is restarted); the job may be sent again",
)
MAX_DELIVERIES = ErrorKind(
    500, "MAX_DELIVERIES", False,
    "JetStream mode: every delivery of the command ended without an answer (its workers died); "
    "it was moved to the dead-letter subject without running again",
)
BUSY = ErrorKind(
    503, "BUSY", True,
    "every slot is taken, or the worker is stopping: send again later (or to another worker)",
)
STORAGE_UNAVAILABLE = ErrorKind(503, "STORAGE_UNAVAILABLE", True, "storage cannot be reached")
STORAGE_FULL = ErrorKind(
    503, "STORAGE_FULL", False,
    "the storage bucket (or the servers' storage) is full: sending again helps only after space is freed",
)
DEADLINE_EXCEEDED = ErrorKind(
    504, "DEADLINE_EXCEEDED", True,
    "`deadline_s` passed; the computation was stopped and its result discarded",
)

#: Every error a worker answers with, ordered by code then type: every kind declared above, so a kind
#: added there is listed (and documented in docs/protocol.md) without a second edit.
ERRORS: tuple[ErrorKind, ...] = tuple(
    sorted(
        (value for value in list(globals().values()) if isinstance(value, ErrorKind)),
        key=lambda kind: (kind.code, kind.type),
    )
)
BY_TYPE: dict[str, ErrorKind] = {kind.type: kind for kind in ERRORS}


class RoryError(Exception):
    """Base class: ``code`` is HTTP-like, ``type`` a short upper-case name, ``retryable`` a hint.

    A subclass takes its code, type and retryable hint from a kind: ``class X(Base, kind=SOME_KIND)``.
    Subclasses defined elsewhere may set them directly; tests/schemas/test_errors.py checks that every
    ``(code, type)`` the worker can raise is listed in ERRORS.
    """

    code: ClassVar[int] = INTERNAL.code
    type: ClassVar[str] = INTERNAL.type
    retryable: ClassVar[bool] = INTERNAL.retryable

    def __init_subclass__(cls, kind: ErrorKind | None = None, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if kind is not None:
            cls.code, cls.type, cls.retryable = kind.code, kind.type, kind.retryable

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RoryError, kind=BAD_REQUEST):
    """Malformed input."""


class UnknownOperation(BadRequest, kind=UNKNOWN_OPERATION):
    """No such operation on this worker."""


class UnsupportedVersion(BadRequest, kind=UNSUPPORTED_VERSION):
    """``v`` is not a version this side speaks."""


class PayloadTooLarge(BadRequest, kind=PAYLOAD_TOO_LARGE):
    """A message or an implied object exceeds its limit."""


class InvalidName(BadRequest, kind=INVALID_NAME):
    """A storage key or name storage would rewrite."""


class UnsupportedOperation(BadRequest, kind=UNSUPPORTED_OPERATION):
    """The operation cannot be done correctly under the chosen scheme (e.g. Manhattan under CKKS)."""


class NotFound(RoryError, kind=NOT_FOUND):
    """A storage key the command names does not exist."""


class Conflict(RoryError, kind=CONFLICT):
    """The command conflicts with stored state."""


class ValidationFailed(RoryError, kind=VALIDATION_FAILED):
    """Stored data disagrees with the command."""


class CorruptObject(ValidationFailed, kind=CORRUPT_OBJECT):
    """Stored bytes disagree with their tags or checksum."""


class MissingKeys(ValidationFailed, kind=MISSING_KEYS):
    """Key material an operation needs is absent or unacceptable (e.g. a secret key)."""


class Internal(RoryError, kind=INTERNAL):
    """A bug or unexpected failure."""


class Busy(RoryError, kind=BUSY):
    """Every slot is taken, or the worker is stopping."""


class StorageUnavailable(RoryError, kind=STORAGE_UNAVAILABLE):
    """Storage cannot be reached."""


class StorageFull(StorageUnavailable, kind=STORAGE_FULL):
    """Storage has no room for the write; unlike :class:`StorageUnavailable` it is not retryable."""


class DeadlineExceeded(RoryError, kind=DEADLINE_EXCEEDED):
    """``deadline_s`` passed."""


__all__ = [
    "BAD_REQUEST",
    "BUSY",
    "BY_TYPE",
    "COMPUTE_CRASHED",
    "CONFLICT",
    "CORRUPT_OBJECT",
    "DEADLINE_EXCEEDED",
    "ERRORS",
    "INTERNAL",
    "INVALID_NAME",
    "MAX_DELIVERIES",
    "MISSING_KEYS",
    "NOT_FOUND",
    "PAYLOAD_TOO_LARGE",
    "STORAGE_FULL",
    "STORAGE_UNAVAILABLE",
    "UNKNOWN_OPERATION",
    "UNSUPPORTED_OPERATION",
    "UNSUPPORTED_VERSION",
    "VALIDATION_FAILED",
    "BadRequest",
    "Busy",
    "Conflict",
    "CorruptObject",
    "DeadlineExceeded",
    "ErrorKind",
    "Internal",
    "InvalidName",
    "MissingKeys",
    "NotFound",
    "PayloadTooLarge",
    "RoryError",
    "StorageFull",
    "StorageUnavailable",
    "UnknownOperation",
    "UnsupportedOperation",
    "UnsupportedVersion",
    "ValidationFailed",
]
