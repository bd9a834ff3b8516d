"""Typed errors, each carrying the wire code it maps to.

Everything the worker raises on purpose is a :class:`RoryError`; :func:`classify` turns any
exception into one, so the mapping to error Replies lives in one place.
"""

from __future__ import annotations

from typing import ClassVar

from core.errors import UnsupportedOperation as CoreUnsupported


class RoryError(Exception):
    """Base class: ``code`` is HTTP-like, ``type`` a short upper-case name, ``retryable`` a hint."""

    code: ClassVar[int] = 500
    type: ClassVar[str] = "INTERNAL"
    retryable: ClassVar[bool] = False

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class BadRequest(RoryError):
    code, type = 400, "BAD_REQUEST"


class UnknownOperation(BadRequest):
    type = "UNKNOWN_OPERATION"


class UnsupportedVersion(BadRequest):
    type = "UNSUPPORTED_VERSION"


class PayloadTooLarge(BadRequest):
    type = "PAYLOAD_TOO_LARGE"


class InvalidName(BadRequest):
    type = "INVALID_NAME"


class UnsupportedOperation(BadRequest):
    """The operation cannot be done correctly under the chosen scheme (e.g. Manhattan under CKKS)."""

    type = "UNSUPPORTED_OPERATION"


class NotFound(RoryError):
    code, type = 404, "NOT_FOUND"


class Conflict(RoryError):
    code, type = 409, "CONFLICT"


class ValidationFailed(RoryError):
    code, type = 422, "VALIDATION_FAILED"


class CorruptObject(ValidationFailed):
    type = "CORRUPT_OBJECT"


class MissingKeys(ValidationFailed):
    """Key material an operation needs is absent or unacceptable (e.g. a secret key)."""

    type = "MISSING_KEYS"


class Internal(RoryError):
    code, type = 500, "INTERNAL"


class Busy(RoryError):
    code, type, retryable = 503, "BUSY", True


class StorageUnavailable(RoryError):
    code, type, retryable = 503, "STORAGE_UNAVAILABLE", True


class DeadlineExceeded(RoryError):
    code, type, retryable = 504, "DEADLINE_EXCEEDED", True


def classify(error: BaseException) -> RoryError:
    """Map any exception to a RoryError. Core code raises ValueError for bad inputs: that is a 400."""
    if isinstance(error, RoryError):
        return error
    if isinstance(error, CoreUnsupported):
        return UnsupportedOperation(str(error))
    if isinstance(error, TimeoutError):
        return DeadlineExceeded(str(error) or "deadline exceeded")
    if isinstance(error, ValueError):
        return BadRequest(str(error))
    return Internal(f"{type(error).__name__}: {error}")
