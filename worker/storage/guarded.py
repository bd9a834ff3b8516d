"""The storage circuit breaker around any backend (see :mod:`worker.storage.breaker`).

Every call is admitted by the breaker first, so while it is open a command gets its retryable 503 in
microseconds instead of waiting out a retry schedule. An answer from storage, even "not found" or
"conflict", proves storage is up and closes the breaker; an outage (``StorageUnavailable``) or an I/O
error of the local disk (full, read-only, failing) counts as a failure and reaches the caller as a
retryable 503 naming the cause. Backends that retry internally (MictlanX) also report each attempt to
the same breaker, so it opens during the first command's retry schedule, not after several of them.
"""

from __future__ import annotations

import errno
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from worker.errors import RoryError, StorageUnavailable
from worker.storage.base import ForwardingStore, ObjectStore
from worker.storage.breaker import BreakerStatus, CircuitBreaker

T = TypeVar("T")

# Disk errors that mean "this store cannot work now", not "this request is wrong".
_OUTAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.ENODEV, errno.ESTALE})


class GuardedStore(ForwardingStore):
    """``inner`` behind ``breaker``; the breaker's half-open probe is the inner store's ``ping``.

    Every call the interface names, except ``ping`` and ``aclose``, passes the breaker
    (:meth:`ForwardingStore._forward`)."""

    def __init__(self, inner: ObjectStore, breaker: CircuitBreaker) -> None:
        super().__init__(inner)
        self.breaker = breaker
        breaker.attach_probe(inner.ping)

    @property
    def storage_status(self) -> BreakerStatus:
        return self.breaker.status

    async def _forward(
        self, op: str, ball_id: str | None, call: Callable[[], Awaitable[T]], *, array: Any = None
    ) -> T:
        what = op if ball_id is None else f"{op} {ball_id}"
        self.breaker.admit(what)
        try:
            result = await call()
        except StorageUnavailable as error:
            # A full bucket is not an outage: reads still work, so only retryable failures count.
            if error.retryable:
                self.breaker.failed(error)
            raise
        except OSError as error:
            if error.errno not in _OUTAGE_ERRNOS:
                raise
            self.breaker.failed(error)
            raise StorageUnavailable(f"{what}: local storage failed: {error.strerror or error}") from error
        except RoryError:
            self.breaker.succeeded()  # storage answered (404, 409, a corrupt object...): it is up
            raise
        self.breaker.succeeded()
        return result

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self.inner.aclose()


__all__ = ["GuardedStore"]
