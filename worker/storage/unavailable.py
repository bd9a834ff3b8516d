"""The store a worker runs with when no storage backend can be opened.

The worker still starts, answers health (``degraded``, storage unreachable) and discovery, and every
command that needs storage gets 503 STORAGE_UNAVAILABLE naming why the backend could not be opened.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Unpack

import numpy as np

from worker.errors import StorageUnavailable
from worker.storage.base import BallInfo, BytesListOptions, ChunkOptions, ObjectStore


class UnavailableStore(ObjectStore):
    """Every call is a retryable 503; ``ping`` says False."""

    backend = "none"

    def __init__(self, reason: str) -> None:
        self.reason = reason

    def _unavailable(self) -> StorageUnavailable:
        return StorageUnavailable(f"storage is not available: {self.reason}")

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **options: Unpack[ChunkOptions]) -> BallInfo:
        raise self._unavailable()

    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        raise self._unavailable()

    async def put_blob(
        self, ball_id: str, array: np.ndarray, *, tags: Mapping[str, str] | None = None
    ) -> BallInfo:
        raise self._unavailable()

    async def put_bytes_list(
        self, ball_id: str, items: Sequence[bytes], **options: Unpack[BytesListOptions]
    ) -> BallInfo:
        raise self._unavailable()

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        raise self._unavailable()

    async def info(self, ball_id: str) -> BallInfo:
        raise self._unavailable()

    async def exists(self, ball_id: str) -> bool:
        raise self._unavailable()

    async def delete(self, ball_id: str) -> int:
        raise self._unavailable()

    async def list_balls(self) -> list[str]:
        raise self._unavailable()

    async def ping(self) -> bool:
        return False

    async def aclose(self) -> None:
        return None


__all__ = ["UnavailableStore"]
