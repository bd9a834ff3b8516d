"""Writing the chunk format: an ndarray, a single blob or a byte list as a plan of tagged chunks.

A :class:`BallPlan` holds every chunk's key, bytes (views into the caller's array, no copies) and tags,
exactly as the reference MictlanX client writes them (see :mod:`worker.storage.codec`); a backend
only hashes and stores it (``worker/storage/planned.py``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import msgpack
import numpy as np

from worker.errors import BadRequest
from worker.storage.base import BallInfo, Kind
from worker.storage.names import check_ball_id, chunk_key
from worker.storage.tags import ALLOWED_DTYPES, KIND_TAG, MAX_NDIM, check_user_tags, format_shape

#: Planning or decoding more bytes than this runs in a thread, not on the event loop.
OFF_LOOP_BYTES = 8 * 1024 * 1024
T = TypeVar("T")


def weight_of(value: object) -> int:
    """Roughly how many bytes planning ``value`` touches (copies, msgpack packing)."""
    if isinstance(value, np.ndarray):
        return value.nbytes
    if isinstance(value, Sequence) and not isinstance(value, (bytes, bytearray, memoryview, str)):
        return sum(len(item) for item in value if isinstance(item, (bytes, bytearray, memoryview)))
    return 0


async def off_loop(weight: int, fn: Callable[..., T], *args: Any) -> T:
    """Call ``fn`` directly when cheap, else in a worker thread so heartbeats keep flowing."""
    if weight > OFF_LOOP_BYTES:
        return await asyncio.to_thread(fn, *args)
    return fn(*args)


def split_rows(rows: int, num_chunks: int) -> list[tuple[int, int]]:
    """``[start, stop)`` row ranges: ``k = min(num_chunks, rows)`` pieces (1 for 0 rows) of
    ``rows // k`` rows, the remainder appended to the last piece (Rory's convention; always exactly
    ``k`` pieces, so the ``num_chunks`` tag equals the real count)."""
    if isinstance(num_chunks, bool) or not isinstance(num_chunks, int) or num_chunks < 1:
        raise BadRequest(f"num_chunks must be a positive integer, got {num_chunks!r}")
    k = max(1, min(num_chunks, rows))
    per = rows // k
    bounds = [(i * per, (i + 1) * per) for i in range(k - 1)]
    bounds.append(((k - 1) * per, rows))
    return bounds


def byte_view(array: np.ndarray) -> memoryview:
    """Zero-copy ``'B'`` view of a C-contiguous array's bytes."""
    return memoryview(array.reshape(-1).view(np.uint8))


@dataclass
class ChunkPayload:
    """One object to write: its key, its bytes (a view, not a copy) and its tags."""

    index: int
    key: str
    data: memoryview
    tags: dict[str, str]

    @property
    def size(self) -> int:
        return self.data.nbytes


@dataclass
class BallPlan:
    """Every chunk of a ball, ready to be hashed and written."""

    ball_id: str
    kind: Kind
    chunks: list[ChunkPayload]
    full_shape: tuple[int, ...] | None
    full_dtype: str | None
    user_tags: dict[str, str]
    keepalive: object = None  # owner of the memory the chunk views point into

    @property
    def size(self) -> int:
        return sum(chunk.size for chunk in self.chunks)

    def set_full_checksum(self, checksum: str | None) -> None:
        if checksum is not None:
            for chunk in self.chunks:
                chunk.tags["full_checksum"] = checksum

    def info(self, checksum: str | None) -> BallInfo:
        return BallInfo(
            ball_id=self.ball_id,
            kind=self.kind,
            num_chunks=len(self.chunks),
            full_shape=self.full_shape,
            full_dtype=self.full_dtype,
            size=self.size,
            checksum=checksum,
            tags=dict(self.user_tags),
        )


def _native_array(array: object) -> np.ndarray:
    if isinstance(array, np.generic):  # a numpy scalar (e.g. a bias) is a 0-d array
        array = np.asarray(array)
    if not isinstance(array, np.ndarray):
        raise BadRequest(f"expected a numpy ndarray, got {type(array).__name__}")
    dtype = array.dtype
    if dtype.byteorder not in ("=", "|") and dtype.newbyteorder("=").name in ALLOWED_DTYPES:
        array = array.astype(dtype.newbyteorder("="))  # a byte-swapped float64 is still a float64
    if array.dtype.name not in ALLOWED_DTYPES or array.dtype.byteorder not in ("=", "|"):
        raise BadRequest(f"dtype {array.dtype.str} cannot be stored; allowed: {sorted(ALLOWED_DTYPES)}")
    return array if array.flags.c_contiguous else array.copy(order="C")  # (ascontiguousarray makes 0-d 1-d)


def _base_tags(ball_id: str, index: int, count: int, size: int, kind: Kind, now: str) -> dict[str, str]:
    return {
        "index": str(index),
        "num_chunks": str(count),
        "chunk_size": str(size),
        "group_id": ball_id,
        "updated_at": now,
        KIND_TAG: kind,
    }


def _now_ms() -> str:
    return str(time.time_ns() // 1_000_000)


def plan_ndarray(
    ball_id: str, array: np.ndarray, num_chunks: int, tags: Mapping[str, str] | None
) -> BallPlan:
    """Split along axis 0 (a 0-d array is one chunk) and tag each piece with its own shape."""
    check_ball_id(ball_id)
    user = check_user_tags(tags)
    array = _native_array(array)
    if array.ndim == 0:
        split_rows(1, num_chunks)  # validates num_chunks
        bounds: list[tuple[int, int]] = []
    else:
        bounds = split_rows(array.shape[0], num_chunks)
    dtype, now = array.dtype.name, _now_ms()
    pieces = [array] if array.ndim == 0 else [array[start:stop] for start, stop in bounds]
    chunks = []
    for index, piece in enumerate(pieces):
        data = byte_view(piece)
        chunk_tags = {
            **user,
            **_base_tags(ball_id, index, len(pieces), data.nbytes, "ndarray", now),
            "shape": format_shape(piece.shape),
            "dtype": dtype,
            "full_shape": format_shape(array.shape),
            "full_dtype": dtype,
            "records": str(piece.shape[0] if piece.ndim else 1),
            "attributes": str(piece.shape[1] if piece.ndim > 1 else 1),
        }
        chunks.append(ChunkPayload(index, chunk_key(ball_id, index), data, chunk_tags))
    return BallPlan(ball_id, "ndarray", chunks, tuple(array.shape), dtype, user, keepalive=array)


def plan_blob(
    ball_id: str, array: np.ndarray, tags: Mapping[str, str] | None, *, piece_size: int | None = None
) -> BallPlan:
    """The whole array as one byte stream, cut into ``piece_size`` pieces (one piece if ``None``);
    every piece carries the whole shape/dtype, as the reference ``put`` + rorycommon do."""
    check_ball_id(ball_id)
    user = check_user_tags(tags)
    array = _native_array(array)
    data = byte_view(array)
    total = data.nbytes
    step = total if not piece_size or piece_size >= total else piece_size
    offsets = list(range(0, total, step)) if total else [0]
    dtype, now, count = array.dtype.name, _now_ms(), len(offsets)
    chunks = []
    for index, start in enumerate(offsets):
        piece = data[start : start + step] if total else data
        chunk_tags = {
            **user,
            **_base_tags(ball_id, index, count, piece.nbytes, "blob", now),
            "shape": format_shape(array.shape),
            "dtype": dtype,
            "full_shape": format_shape(array.shape),
            "full_dtype": dtype,
        }
        chunks.append(ChunkPayload(index, chunk_key(ball_id, index), piece, chunk_tags))
    return BallPlan(ball_id, "blob", chunks, tuple(array.shape), dtype, user, keepalive=array)


def plan_bytes_list(
    ball_id: str,
    items: Sequence[bytes],
    num_chunks: int,
    shape: Sequence[int] | None,
    tags: Mapping[str, str] | None,
) -> BallPlan:
    """Items split like rows; each chunk is ``msgpack.packb([bin, ...])``."""
    check_ball_id(ball_id)
    user = check_user_tags(tags)
    if isinstance(items, (bytes, bytearray, memoryview, str)) or not isinstance(items, Sequence):
        raise BadRequest("items must be a sequence of bytes objects")
    for position, item in enumerate(items):
        if not isinstance(item, (bytes, bytearray, memoryview)):
            raise BadRequest(f"items[{position}] is {type(item).__name__}, expected bytes")
    logical: tuple[int, ...] | None = None
    if shape is not None:
        try:
            logical = tuple(int(d) for d in shape)
        except (TypeError, ValueError):
            raise BadRequest(f"shape must be a sequence of integers, got {shape!r:.80}") from None
        if any(d < 0 for d in logical) or len(logical) > MAX_NDIM:
            raise BadRequest(f"shape must be non-negative integers, got {logical}")
    bounds = split_rows(len(items), num_chunks)
    now = _now_ms()
    chunks = []
    for index, (start, stop) in enumerate(bounds):
        packed = msgpack.packb([bytes(item) for item in items[start:stop]], use_bin_type=True)
        chunk_tags = {
            **user,
            **_base_tags(ball_id, index, len(bounds), len(packed), "bytes_list", now),
            "records": str(stop - start),
        }
        if logical is not None:
            chunk_tags["full_shape"] = format_shape(logical)
        chunks.append(ChunkPayload(index, chunk_key(ball_id, index), memoryview(packed), chunk_tags))
    return BallPlan(ball_id, "bytes_list", chunks, logical, None, user)
