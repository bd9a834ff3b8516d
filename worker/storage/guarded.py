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
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

import numpy as np

from worker.errors import RoryError, StorageUnavailable
from worker.storage.base import Allocator, BallInfo, ForwardingStore, ObjectStore
from worker.storage.breaker import BreakerStatus, CircuitBreaker

T = TypeVar("T")

# Disk errors that mean "this store cannot work now", not "this request is wrong".
_OUTAGE_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EIO, errno.EDQUOT, errno.ENODEV, errno.ESTALE})


class GuardedStore(ForwardingStore):
    """``inner`` behind ``breaker``; the breaker's half-open probe is the inner store's ``ping``."""

    def __init__(self, inner: ObjectStore, breaker: CircuitBreaker) -> None:
        super().__init__(inner)
        self.breaker = breaker
        breaker.attach_probe(inner.ping)

    @property
    def storage_status(self) -> BreakerStatus:
        return self.breaker.status

    async def _guard(self, what: str, call: Callable[[], Awaitable[T]]) -> T:
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

    async def put_ndarray(
        self,
        ball_id: str,
        array: np.ndarray,
        *,
        num_chunks: int = 1,
        tags: Mapping[str, str] | None = None,
    ) -> BallInfo:
        return await self._guard(
            f"put {ball_id}", lambda: self.inner.put_ndarray(ball_id, array, num_chunks=num_chunks, tags=tags)
        )

    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return await self._guard(f"get {ball_id}", lambda: self.inner.get_ndarray(ball_id))

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo | None]:
        return await self._guard(
            f"get {ball_id}", lambda: self.inner.fetch_ndarray(ball_id, allocate=allocate)
        )

    async def put_blob(
        self, ball_id: str, array: np.ndarray, *, tags: Mapping[str, str] | None = None
    ) -> BallInfo:
        return await self._guard(f"put {ball_id}", lambda: self.inner.put_blob(ball_id, array, tags=tags))

    async def put_bytes_list(
        self,
        ball_id: str,
        items: Sequence[bytes],
        *,
        num_chunks: int = 1,
        shape: Sequence[int] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> BallInfo:
        return await self._guard(
            f"put {ball_id}",
            lambda: self.inner.put_bytes_list(ball_id, items, num_chunks=num_chunks, shape=shape, tags=tags),
        )

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        return await self._guard(f"get {ball_id}", lambda: self.inner.get_bytes_list(ball_id))

    async def info(self, ball_id: str) -> BallInfo:
        return await self._guard(f"info {ball_id}", lambda: self.inner.info(ball_id))

    async def exists(self, ball_id: str) -> bool:
        return await self._guard(f"exists {ball_id}", lambda: self.inner.exists(ball_id))

    async def delete(self, ball_id: str) -> int:
        return await self._guard(f"delete {ball_id}", lambda: self.inner.delete(ball_id))

    async def list_balls(self) -> list[str]:
        return await self._guard("list", self.inner.list_balls)

    async def aclose(self) -> None:
        await self.breaker.aclose()
        await self.inner.aclose()


__all__ = ["GuardedStore"]
