"""Typed errors, each carrying the wire code it maps to.

The exception classes and their codes/types are the contract's (``schemas/errors.py``) and are
re-exported here, so ``from worker.errors import BadRequest`` and ``from schemas.errors import
BadRequest`` name the same class. What is the worker's own is :func:`classify`, which turns any
exception into a RoryError, so the mapping to error Replies lives in one place.
"""

from __future__ import annotations

from core.errors import UnsupportedOperation as CoreUnsupported
from schemas import errors as contract
from schemas.errors import (  # noqa: F401 - re-exported: see __all__
    BadRequest,
    Busy,
    Conflict,
    CorruptObject,
    DeadlineExceeded,
    Internal,
    InvalidName,
    MissingKeys,
    NotFound,
    PayloadTooLarge,
    RoryError,
    StorageFull,
    StorageUnavailable,
    UnknownOperation,
    UnsupportedOperation,
    UnsupportedVersion,
    ValidationFailed,
)

#: The contract's exception classes (re-exported above), then what is the worker's own. Derived from
#: ``schemas/errors.py`` rather than listed again; tests/schemas/test_errors.py checks each name.
__all__ = [
    *(
        name
        for name in contract.__all__
        if isinstance(value := getattr(contract, name), type) and issubclass(value, RoryError)
    ),
    "classify",
]


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
