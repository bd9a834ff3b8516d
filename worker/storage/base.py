"""The storage interface every handler codes against: one bucket of chunked "balls".

A ball is what Rory calls an object: N chunks stored under ``<ball>_<i>``, each carrying the
MictlanX tags (see :mod:`worker.storage.codec`). Backends differ in where the bytes live and in how
they make a multi-chunk write look atomic; the shapes, dtypes and errors they return are the same.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np

Kind = Literal["ndarray", "blob", "bytes_list"]


@dataclass(frozen=True)
class BallInfo:
    """What storage knows about a ball without downloading its payload.

    ``full_shape``/``full_dtype`` describe the whole ndarray (``None`` for byte lists, except that a
    byte list written with a logical shape keeps it in ``full_shape``). ``checksum`` is the SHA-256
    hex of the payload bytes in chunk order when the writer recorded one (MictlanX always does; the
    local backend only when built with ``sha256=True``). ``tags`` holds the caller's own tags only.
    """

    ball_id: str
    kind: Kind
    num_chunks: int
    full_shape: tuple[int, ...] | None
    full_dtype: str | None
    size: int
    checksum: str | None
    tags: dict[str, str] = field(default_factory=dict)


class ObjectStore(ABC):
    """One bucket. Every method raises the typed errors of :mod:`worker.errors`:

    ``NotFound`` (404) for a missing ball, ``CorruptObject`` (422) for bytes that disagree with their
    tags or checksums, ``InvalidName`` (400) for ids MictlanX would rewrite, ``BadRequest`` (400) for
    unusable arguments, ``StorageUnavailable`` (503, retryable) when the backend cannot be reached.
    """

    backend: str

    @abstractmethod
    async def put_ndarray(
        self,
        ball_id: str,
        array: np.ndarray,
        *,
        num_chunks: int = 1,
        tags: Mapping[str, str] | None = None,
    ) -> BallInfo:
        """Split ``array`` along axis 0 into ``min(num_chunks, rows)`` chunks; replaces any old ball."""

    @abstractmethod
    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        """Read a chunked ndarray or a single-blob ndarray, whichever the ball is."""

    @abstractmethod
    async def put_blob(
        self, ball_id: str, array: np.ndarray, *, tags: Mapping[str, str] | None = None
    ) -> BallInfo:
        """Store ``array`` as one byte stream tagged with the whole shape (Rory's ``put_ndarray``)."""

    @abstractmethod
    async def put_bytes_list(
        self,
        ball_id: str,
        items: Sequence[bytes],
        *,
        num_chunks: int = 1,
        shape: Sequence[int] | None = None,
        tags: Mapping[str, str] | None = None,
    ) -> BallInfo:
        """Store opaque byte strings (serialized ciphertexts) as msgpack arrays, one per chunk."""

    @abstractmethod
    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        """Read back the flat list written by :meth:`put_bytes_list`, in order."""

    @abstractmethod
    async def info(self, ball_id: str) -> BallInfo:
        """Describe a ball; ``NotFound`` if it is absent."""

    @abstractmethod
    async def exists(self, ball_id: str) -> bool:
        """True when the ball is visible (complete) to readers."""

    @abstractmethod
    async def delete(self, ball_id: str) -> int:
        """Remove the ball; returns how many stored objects were removed (0 when it was absent)."""

    @abstractmethod
    async def list_balls(self) -> list[str]:
        """Ids of the visible balls in the bucket, sorted."""

    @abstractmethod
    async def ping(self) -> bool:
        """Cheap reachability probe for health reports; never raises."""

    @abstractmethod
    async def aclose(self) -> None:
        """Release connections and threads. The store is unusable afterwards."""

    async def __aenter__(self) -> ObjectStore:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()
