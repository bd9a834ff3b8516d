"""The storage interface every handler codes against: one bucket of chunked "balls".

A ball is what Rory calls an object: N chunks stored under ``<ball>_<i>``, each carrying the
MictlanX tags (see :mod:`worker.storage.codec`). Backends differ in where the bytes live and in how
they make a multi-chunk write look atomic; the shapes, dtypes and errors they return are the same.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypedDict, TypeVar, Unpack

import numpy as np

from worker.settings import Settings

T = TypeVar("T")
Kind = Literal["ndarray", "blob", "bytes_list"]
#: Makes the output array of a read: ``allocate(shape, dtype)`` -> an uninitialised C-order ndarray.
Allocator = Callable[[tuple[int, ...], np.dtype], np.ndarray]


@dataclass(frozen=True)
class BallInfo:
    """What storage knows about a ball without downloading its payload.

    ``full_shape``/``full_dtype`` describe the whole ndarray (``None`` for byte lists, except that a
    byte list written with a logical shape keeps it in ``full_shape``). ``checksum`` is the SHA-256
    hex of the payload bytes in chunk order when the writer recorded one (MictlanX always does; the
    local backend only when built with ``sha256=True``). ``tags`` holds the caller's own tags only.

    ``etag`` names the stored version: it changes whenever the ball is rewritten with other content,
    so (``ball_id``, ``etag``) may key a read cache. The local backend uses its version directory
    name (unique per write); MictlanX and NATS a hash of the per-chunk checksums (MictlanX: the
    ``full_checksum`` tag for objects without them). ``None`` when the backend cannot name the
    version (never cached).

    ``written`` tells two writes of the same bytes apart where the etag cannot: on MictlanX and NATS,
    the write's time in milliseconds (chunk 0's ``updated_at`` tag, when the writer set one); None on
    the local backend, whose etag already differs for every write.
    """

    ball_id: str
    kind: Kind
    num_chunks: int
    full_shape: tuple[int, ...] | None
    full_dtype: str | None
    size: int
    checksum: str | None
    tags: dict[str, str] = field(default_factory=dict)
    etag: str | None = None
    written: str | None = None


#: Outputs at least this large are allocated by a custom allocator in a thread (it may touch pages).
_ALLOCATE_OFF_LOOP_BYTES = 1 << 20


async def allocate_output(layout: Any, allocate: Allocator | None) -> tuple[np.ndarray, np.ndarray]:
    """The output array of a read and a flat uint8 view of it, made by ``allocate`` when given.

    ``layout`` is a :class:`worker.storage.codec.Layout`. Without ``allocate`` (or for byte lists)
    this is ``layout.allocate()``. A custom allocator that fails (e.g. no room in /dev/shm) falls back
    to ordinary memory, so an allocation hint never turns into a failed read.
    """
    shape, dtype = layout.full_shape, layout.dtype
    if allocate is None or shape is None or dtype is None or layout.kind == "bytes_list":
        return layout.allocate()  # type: ignore[no-any-return]
    shape, dtype = tuple(int(d) for d in shape), np.dtype(dtype)
    out: np.ndarray | None = None
    with contextlib.suppress(MemoryError, OSError, ValueError):
        if math.prod(shape) * dtype.itemsize >= _ALLOCATE_OFF_LOOP_BYTES:
            # (boxed: the executor's future would otherwise keep the buffer referenced for a while)
            out = (await asyncio.to_thread(lambda: [allocate(shape, dtype)])).pop()
        else:
            out = allocate(shape, dtype)
    usable = out is not None and out.shape == shape and out.dtype == dtype
    if not usable or not (out.flags.c_contiguous and out.flags.writeable):  # type: ignore[union-attr]
        return layout.allocate()  # type: ignore[no-any-return]
    return out, out.reshape(-1).view(np.uint8)


class ChunkOptions(TypedDict, total=False):
    """The keyword options of :meth:`ObjectStore.put_ndarray`, as a wrapper passes them on unchanged."""

    num_chunks: int
    tags: Mapping[str, str] | None


class BytesListOptions(ChunkOptions, total=False):
    """The keyword options of :meth:`ObjectStore.put_bytes_list`."""

    shape: Sequence[int] | None


class ObjectStore(ABC):
    """One bucket. Every method raises the typed errors of :mod:`worker.errors`:

    ``NotFound`` (404) for a missing ball, ``CorruptObject`` (422) for bytes that disagree with their
    tags or checksums, ``InvalidName`` (400) for ids MictlanX would rewrite, ``BadRequest`` (400) for
    unusable arguments, ``StorageUnavailable`` (503, retryable) when the backend cannot be reached.
    """

    backend: str

    @property
    def atomic_overwrite(self) -> bool:
        """Whether replacing a ball is one step: a reader, and a write that fails, see the old ball
        or the new one, never neither (local: a pointer renamed; MictlanX: delete-then-put, False)."""
        return False

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

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo | None]:
        """Read an ndarray and describe exactly the version that was read (its ``etag``).

        ``allocate`` makes the output array (e.g. in a shared-memory transfer file), so the bytes land
        where the compute pool can map them. The info is ``None`` when the backend cannot name the
        version it read; this default (for backends without a version) always says so.
        """
        return await self.get_ndarray(ball_id), None

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


def settings_options(settings: Settings, options: Mapping[str, Any], **backend: Any) -> dict[str, Any]:
    """A backend's constructor options for ``from_settings``: the caller's ``options`` win over the
    ``backend``'s own values from ``settings``, which win over what every backend takes from them
    (its thread pool size and the largest object a read accepts). One place for the shared pair, so
    a setting added for every backend is mapped once."""
    return {
        "max_workers": settings.mictlanx_max_workers,
        "max_object_bytes": settings.max_object_bytes,
        **backend,
        **options,
    }


class ForwardingStore(ObjectStore):
    """Passes every call to ``inner``; a wrapper (a cache, a test probe) overrides only what it changes.

    Every call but ``ping`` and ``aclose`` goes through :meth:`_forward`, so a wrapper that acts around
    all of them (the storage circuit breaker, guarded.py) overrides that one method. Attributes the
    interface does not name (``sweep``, ``root``...) are the inner store's too.
    """

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.backend = inner.backend

    def __getattr__(self, name: str) -> Any:
        if name == "inner":  # not set yet (e.g. during unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.inner, name)

    @property
    def atomic_overwrite(self) -> bool:
        # An inner store outside the interface (a test double, a proxy answering every attribute)
        # counts as not atomic: the safe answer for put_all.
        return getattr(self.inner, "atomic_overwrite", False) is True

    async def _forward(
        self, op: str, ball_id: str | None, call: Callable[[], Awaitable[T]], *, array: Any = None
    ) -> T:
        """Run ``call`` (the inner store's method): ``op`` is ``put``, ``get``, ``info``, ``exists``,
        ``delete`` or ``list``, ``ball_id`` the ball it concerns (None for ``list``), ``array`` the
        ndarray a ``put_ndarray`` or ``put_blob`` writes (None otherwise)."""
        return await call()

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **options: Unpack[ChunkOptions]) -> BallInfo:
        return await self._forward(
            "put", ball_id, lambda: self.inner.put_ndarray(ball_id, array, **options), array=array
        )

    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return await self._forward("get", ball_id, lambda: self.inner.get_ndarray(ball_id))

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo | None]:
        return await self._forward(
            "get", ball_id, lambda: self.inner.fetch_ndarray(ball_id, allocate=allocate)
        )

    async def put_blob(
        self, ball_id: str, array: np.ndarray, *, tags: Mapping[str, str] | None = None
    ) -> BallInfo:
        return await self._forward(
            "put", ball_id, lambda: self.inner.put_blob(ball_id, array, tags=tags), array=array
        )

    async def put_bytes_list(
        self, ball_id: str, items: Sequence[bytes], **options: Unpack[BytesListOptions]
    ) -> BallInfo:
        return await self._forward(
            "put", ball_id, lambda: self.inner.put_bytes_list(ball_id, items, **options)
        )

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        return await self._forward("get", ball_id, lambda: self.inner.get_bytes_list(ball_id))

    async def info(self, ball_id: str) -> BallInfo:
        return await self._forward("info", ball_id, lambda: self.inner.info(ball_id))

    async def exists(self, ball_id: str) -> bool:
        return await self._forward("exists", ball_id, lambda: self.inner.exists(ball_id))

    async def delete(self, ball_id: str) -> int:
        return await self._forward("delete", ball_id, lambda: self.inner.delete(ball_id))

    async def list_balls(self) -> list[str]:
        return await self._forward("list", None, self.inner.list_balls)

    async def ping(self) -> bool:
        return await self.inner.ping()

    async def aclose(self) -> None:
        await self.inner.aclose()
