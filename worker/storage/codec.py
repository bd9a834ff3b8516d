"""The chunk format shared by every backend: how a ball is split, tagged and read back.

Writers produce exactly what the reference MictlanX client (0.1.0a5, via rorycommon) writes, so a
ball written here is readable by the original Rory code and vice versa (docs/original-rory.md, MictlanX):

* chunk ``i`` of ball ``b`` is the object ``b_i``; an ndarray is split along axis 0 into
  ``min(num_chunks, rows)`` pieces of ``rows // k`` rows, the remainder going to the last piece;
* the payload is the raw C-order bytes of the piece (``ndarray.tobytes()``), no header;
* tags (all strings): ``index``, ``num_chunks``, ``shape``/``dtype`` of *this chunk* spelled like
  Python (``"(3, 4)"``, ``"(5,)"``, ``"float64"``), ``full_shape``, ``full_dtype``, ``records``,
  ``attributes``, ``chunk_size`` (bytes of this chunk), ``group_id`` (the ball id),
  ``full_checksum`` (SHA-256 hex of all chunk bytes in order), ``updated_at`` (ms epoch) and
  ``rory_kind`` (ours: ``ndarray``/``blob``/``bytes_list``; the reference client ignores it);
* a single-blob ndarray (Rory's ``put_ndarray``) is the whole array's bytes split into byte pieces,
  every piece tagged with the *whole* shape and dtype;
* a byte list (CKKS ciphertexts) is one msgpack array of ``bin`` items per chunk (never pickle),
  read back by a strict reader that builds nothing until the whole chunk checks out
  (:func:`scan_bytes_list`, :func:`decode_bytes_list`).

Readers never evaluate tags: shapes are matched by a regular expression, dtypes come from an
allow-list, counts are decimal integers. Any disagreement between tags and bytes is
``CorruptObject``; objects written by the original client without ``rory_kind`` are recognised by
their tags (see :func:`read_layout`).
"""

from __future__ import annotations

import asyncio
import math
import re
import struct
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgpack
import numpy as np

from worker.errors import BadRequest, CorruptObject, PayloadTooLarge
from worker.storage.base import BallInfo, Kind
from worker.storage.names import check_ball_id, chunk_key

KIND_TAG = "rory_kind"
KINDS: frozenset[str] = frozenset({"ndarray", "blob", "bytes_list"})
#: Tags the storage layer owns; callers may not set them and BallInfo.tags never shows them.
SYSTEM_TAGS: frozenset[str] = frozenset(
    {
        "index",
        "num_chunks",
        "shape",
        "dtype",
        "full_shape",
        "full_dtype",
        "full_checksum",
        "checksum",
        "records",
        "attributes",
        "chunk_size",
        "group_id",
        "updated_at",
        "mictlanx_filters",
        KIND_TAG,
    }
)
#: The only dtypes a tag may name (native byte order); object/string/void dtypes are refused.
ALLOWED_DTYPES: frozenset[str] = frozenset(
    {
        "bool",
        "int8",
        "int16",
        "int32",
        "int64",
        "uint8",
        "uint16",
        "uint32",
        "uint64",
        "float16",
        "float32",
        "float64",
    }
)
MAX_NDIM = 32
MAX_CHUNKS = 1_000_000
#: Default MAX_OBJECT_BYTES: the most bytes one read may allocate (declared shape x itemsize).
DEFAULT_MAX_OBJECT_BYTES = 4 * 1024**3
#: No writer splits a ball into more chunks than this unless each chunk holds at least
#: MIN_PIECE_BYTES (MictlanX blob pieces are >= 4 KiB); finer splits are refused before fetching.
MAX_SMALL_CHUNKS = 4096
MIN_PIECE_BYTES = 4096
_SHAPE_RE = re.compile(r"\s*([(\[])\s*((?:\d{1,19}\s*,\s*)*\d{1,19}\s*,?)?\s*([)\]])\s*")
_INT_RE = re.compile(r"\d{1,19}")
_SHA256_RE = re.compile(r"[0-9a-fA-F]{64}")
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


# ----------------------------------------------------------------------------- tag values
def format_shape(shape: Sequence[int]) -> str:
    """``str(tuple)``: ``"(3, 4)"``, ``"(5,)"``, ``"()"`` — the reference client's spelling."""
    return str(tuple(int(d) for d in shape))


def parse_shape(text: object, *, what: str = "shape") -> tuple[int, ...]:
    """Parse a shape tag without evaluating it: ``"(3, 4)"``, ``"(5,)"``, ``"[3, 4]"``, ``"()"``."""
    if not isinstance(text, str) or len(text) > 512:
        raise CorruptObject(f"{what} tag is not a shape: {text!r:.80}")
    match = _SHAPE_RE.fullmatch(text)
    if not match or {match.group(1), match.group(3)} not in ({"(", ")"}, {"[", "]"}):
        raise CorruptObject(f"{what} tag is not a tuple of integers: {text!r:.80}")
    body = (match.group(2) or "").strip().rstrip(",")
    dims = tuple(int(part) for part in body.split(",")) if body else ()
    if len(dims) > MAX_NDIM:
        raise CorruptObject(f"{what} tag has {len(dims)} dimensions (max {MAX_NDIM})")
    return dims


def parse_dtype(text: object, *, what: str = "dtype") -> np.dtype:
    """Map a dtype tag to a numpy dtype, only from :data:`ALLOWED_DTYPES`."""
    if not isinstance(text, str) or text.strip() not in ALLOWED_DTYPES:
        raise CorruptObject(f"{what} tag {text!r:.40} is not one of {sorted(ALLOWED_DTYPES)}")
    return np.dtype(text.strip())


def parse_count(text: object, *, what: str) -> int:
    """A non-negative decimal integer tag (``index``, ``num_chunks``, ``records``)."""
    if not isinstance(text, str) or not _INT_RE.fullmatch(text.strip()):
        raise CorruptObject(f"{what} tag is not a non-negative integer: {text!r:.40}")
    return int(text.strip())


def num_chunks_of(tags: Mapping[str, str], ball_id: str) -> int:
    """The chunk count recorded on chunk 0 (1..MAX_CHUNKS)."""
    if "num_chunks" not in tags:
        raise CorruptObject(f"{ball_id}: chunk 0 has no num_chunks tag")
    count = parse_count(tags["num_chunks"], what="num_chunks")
    if not 1 <= count <= MAX_CHUNKS:
        raise CorruptObject(f"{ball_id}: num_chunks={count} out of range")
    return count


def check_user_tags(tags: Mapping[str, str] | None) -> dict[str, str]:
    """Caller tags: str -> str (MictlanX rejects anything else), and no system tag names."""
    if tags is None:
        return {}
    if not isinstance(tags, Mapping):
        raise BadRequest("tags must be a mapping of str to str")
    clean: dict[str, str] = {}
    for key, value in tags.items():
        if not isinstance(key, str) or not key or not isinstance(value, str):
            raise BadRequest(f"tags must map non-empty str to str, got {key!r}: {type(value).__name__}")
        if key in SYSTEM_TAGS:
            raise BadRequest(f"tag {key!r} is reserved by the storage layer")
        clean[key] = value
    return clean


def user_tags_of(tags: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in tags.items() if k not in SYSTEM_TAGS}


# ----------------------------------------------------------------------------- writing
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


# ----------------------------------------------------------------------------- reading
@dataclass(frozen=True)
class ChunkMeta:
    """One stored object's metadata as a backend reports it (MictlanX ``Metadata`` record)."""

    key: str
    size: int
    checksum: str | None
    tags: Mapping[str, str]


@dataclass(frozen=True)
class Layout:
    """A validated ball: where each chunk's bytes go in the flat output, and what to expect."""

    ball_id: str
    kind: Kind
    chunks: tuple[ChunkMeta, ...]
    offsets: tuple[int, ...]
    full_shape: tuple[int, ...] | None
    dtype: np.dtype | None
    full_checksum: str | None
    user_tags: dict[str, str] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(chunk.size for chunk in self.chunks)

    def info(self) -> BallInfo:
        return BallInfo(
            ball_id=self.ball_id,
            kind=self.kind,
            num_chunks=len(self.chunks),
            full_shape=self.full_shape,
            full_dtype=self.dtype.name if self.dtype is not None else None,
            size=self.size,
            checksum=self.full_checksum,
            tags=dict(self.user_tags),
        )

    def allocate(self) -> tuple[np.ndarray, np.ndarray]:
        """The output array (uninitialised) and a flat uint8 view of it to read chunks into."""
        if self.kind == "bytes_list" or self.dtype is None or self.full_shape is None:
            raise BadRequest(f"{self.ball_id} holds a byte list, not an ndarray")
        try:
            out = np.empty(self.full_shape, dtype=self.dtype)
        except (MemoryError, ValueError) as error:
            raise CorruptObject(f"{self.ball_id}: cannot allocate {self.full_shape}: {error}") from None
        return out, out.reshape(-1).view(np.uint8)

    def require_array(self) -> None:
        if self.kind == "bytes_list":
            raise BadRequest(f"{self.ball_id} holds a byte list, not an ndarray")

    def require_bytes_list(self) -> None:
        if self.kind != "bytes_list":
            raise BadRequest(f"{self.ball_id} holds an ndarray, not a byte list")


def normalise_checksum(value: object) -> str | None:
    """A SHA-256 hex string (lower-cased), or None when absent/empty."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise CorruptObject(f"checksum is not a SHA-256 hex digest: {value!r:.80}")
    return value.lower()


def _expected_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize


def read_layout(ball_id: str, metas: Sequence[ChunkMeta]) -> Layout:
    """Validate the metadata of chunks ``0..n-1`` (given in index order) and work out the layout.

    Objects written here carry ``rory_kind``. Objects from the original client are recognised:
    no ``dtype`` tag -> an opaque byte list; every chunk's size equal to its own shape × itemsize ->
    a row-split ndarray; identical whole-array shape tags whose sizes add up -> a single blob.
    """
    if not metas:
        raise CorruptObject(f"{ball_id}: no chunks")
    count = len(metas)
    for index, meta in enumerate(metas):
        if meta.key != chunk_key(ball_id, index):
            raise CorruptObject(f"{ball_id}: expected chunk {chunk_key(ball_id, index)}, got {meta.key!r}")
        if "index" in meta.tags and parse_count(meta.tags["index"], what="index") != index:
            raise CorruptObject(f"{meta.key}: index tag {meta.tags['index']!r} != {index}")
        if "num_chunks" in meta.tags and parse_count(meta.tags["num_chunks"], what="num_chunks") != count:
            raise CorruptObject(
                f"{meta.key}: num_chunks tag {meta.tags['num_chunks']!r} but chunk 0 says {count} "
                "(chunks from different writes?)"
            )
        if not isinstance(meta.size, int) or meta.size < 0:
            raise CorruptObject(f"{meta.key}: invalid size {meta.size!r}")
        normalise_checksum(meta.checksum)

    full_sums = {normalise_checksum(m.tags["full_checksum"]) for m in metas if "full_checksum" in m.tags}
    full_sums.discard(None)
    if len(full_sums) > 1:
        raise CorruptObject(f"{ball_id}: chunks carry different full_checksum tags (mixed writes)")
    full_checksum = full_sums.pop() if full_sums else None

    kinds = {m.tags.get(KIND_TAG) for m in metas}
    if len(kinds) > 1:
        raise CorruptObject(f"{ball_id}: chunks disagree on {KIND_TAG} (mixed writes)")
    tagged_kind = kinds.pop()
    if tagged_kind is not None and tagged_kind not in KINDS:
        raise CorruptObject(f"{ball_id}: unknown {KIND_TAG} {tagged_kind!r}")
    kind: str = tagged_kind or _infer_kind(metas)
    user = user_tags_of(metas[0].tags)
    offsets = tuple(_cumulative([m.size for m in metas]))
    chunks = tuple(metas)

    if kind == "bytes_list":
        full_shape = (
            parse_shape(metas[0].tags["full_shape"], what="full_shape")
            if ("full_shape" in metas[0].tags)
            else None
        )
        return Layout(ball_id, "bytes_list", chunks, offsets, full_shape, None, full_checksum, user)
    strict = tagged_kind is not None
    if kind == "blob":
        shape, dtype = _blob_layout(ball_id, metas)
    else:
        shape, dtype = _ndarray_layout(ball_id, metas)
    if strict:  # our own writes must agree with their full_* tags; the original's may not (§2.1)
        tags0 = metas[0].tags
        if "full_shape" in tags0 and parse_shape(tags0["full_shape"], what="full_shape") != shape:
            raise CorruptObject(f"{ball_id}: full_shape tag {tags0['full_shape']} != chunks' {shape}")
        if "full_dtype" in tags0 and parse_dtype(tags0["full_dtype"], what="full_dtype") != dtype:
            raise CorruptObject(f"{ball_id}: full_dtype tag {tags0['full_dtype']} != {dtype.name}")
    return Layout(ball_id, kind, chunks, offsets, shape, dtype, full_checksum, user)  # type: ignore[arg-type]


def _cumulative(sizes: Sequence[int]) -> list[int]:
    offsets, position = [], 0
    for size in sizes:
        offsets.append(position)
        position += size
    return offsets


def _infer_kind(metas: Sequence[ChunkMeta]) -> str:
    if "dtype" not in metas[0].tags:
        return "bytes_list"
    if len(metas) == 1 or any("shape" not in m.tags for m in metas):
        return "ndarray"
    try:
        _ndarray_layout("", metas)
    except CorruptObject:
        same = (
            len({m.tags.get("shape") for m in metas}) == 1 and len({m.tags.get("dtype") for m in metas}) == 1
        )
        return "blob" if same else "ndarray"
    return "ndarray"


def _ndarray_layout(ball_id: str, metas: Sequence[ChunkMeta]) -> tuple[tuple[int, ...], np.dtype]:
    dtype: np.dtype | None = None
    rows, trailing = 0, None
    shape0: tuple[int, ...] = ()
    for meta in metas:
        if "shape" not in meta.tags or "dtype" not in meta.tags:
            raise CorruptObject(f"{meta.key}: missing shape/dtype tag")
        chunk_dtype = parse_dtype(meta.tags["dtype"])
        shape = parse_shape(meta.tags["shape"])
        if dtype is None:
            dtype, shape0 = chunk_dtype, shape
        elif chunk_dtype != dtype:
            raise CorruptObject(f"{meta.key}: dtype {chunk_dtype.name} differs from chunk 0 ({dtype.name})")
        expected = _expected_bytes(shape, chunk_dtype)
        if meta.size != expected:
            raise CorruptObject(
                f"{meta.key}: {meta.size} bytes but shape {shape} × {chunk_dtype.itemsize} = {expected}"
            )
        if not shape:
            if len(metas) != 1:
                raise CorruptObject(f"{meta.key}: a 0-d chunk cannot be concatenated")
            continue
        if trailing is None:
            trailing = shape[1:]
        elif shape[1:] != trailing:
            raise CorruptObject(f"{meta.key}: shape {shape} does not stack on {(rows, *trailing)}")
        rows += shape[0]
    assert dtype is not None
    if trailing is None:
        return shape0, dtype
    return (rows, *trailing), dtype


def _blob_layout(ball_id: str, metas: Sequence[ChunkMeta]) -> tuple[tuple[int, ...], np.dtype]:
    tags0 = metas[0].tags
    if "shape" not in tags0 or "dtype" not in tags0:
        raise CorruptObject(f"{ball_id}: blob without shape/dtype tags")
    shape, dtype = parse_shape(tags0["shape"]), parse_dtype(tags0["dtype"])
    for meta in metas[1:]:
        if meta.tags.get("shape", tags0["shape"]) != tags0["shape"] or (
            meta.tags.get("dtype", tags0["dtype"]) != tags0["dtype"]
        ):
            raise CorruptObject(f"{meta.key}: blob chunk tagged with another shape/dtype")
    expected, total = _expected_bytes(shape, dtype), sum(m.size for m in metas)
    if total != expected:
        raise CorruptObject(f"{ball_id}: {total} bytes but shape {shape} × {dtype.itemsize} = {expected}")
    return shape, dtype


# ----------------------------------------------------------------------------- budgets
def _too_large(ball_id: str, what: str, size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{ball_id}: {what} declares {size} bytes, over the worker's MAX_OBJECT_BYTES={max_bytes}; "
        "refused before reading"
    )


def _declared_bytes(shape_tag: object, dtype_tag: object) -> int | None:
    """shape x itemsize of a pair of tags, or None when either is absent or unparseable (the full
    validation in :func:`read_layout` reports those); never evaluates, never allocates."""
    if shape_tag is None or dtype_tag is None:
        return None
    try:
        return _expected_bytes(parse_shape(shape_tag), parse_dtype(dtype_tag))
    except CorruptObject:
        return None


def check_first_chunk(ball_id: str, first: ChunkMeta, count: int, max_bytes: int) -> None:
    """Refuse, from chunk 0's metadata alone, a ball that cannot fit in ``max_bytes``.

    Runs before the metadata of chunks 1..n-1 is fetched, so a lying ``num_chunks`` or shape tag costs
    one request, not a million. Lower bounds on the ball's size that every writer satisfies: chunk 0
    itself; for arrays, ``(num_chunks - 1) x`` chunk 0's size (rows are split evenly with the remainder
    last, blob pieces are equal but the last) and chunk 0's ``shape`` x ``dtype`` (the chunk's, or the
    whole array's for a blob). Raises PayloadTooLarge (400), or CorruptObject (422) for a chunk count
    no writer produces.
    """
    if first.size > max_bytes:
        raise _too_large(ball_id, "chunk 0", first.size, max_bytes)
    if count > MAX_SMALL_CHUNKS and first.size < MIN_PIECE_BYTES:
        raise CorruptObject(
            f"{ball_id}: num_chunks={count} with a {first.size}-byte chunk 0; no writer splits that finely"
        )
    kind = first.tags.get(KIND_TAG)
    if kind not in ("ndarray", "blob") and not (kind is None and "dtype" in first.tags):
        return  # a byte list: chunk sizes vary with the items
    if (count - 1) * first.size > max_bytes:
        raise _too_large(
            ball_id, f"num_chunks={count} x chunk 0's {first.size} bytes", (count - 1) * first.size, max_bytes
        )
    for shape_tag, dtype_tag in (("shape", "dtype"), ("full_shape", "full_dtype")):
        if shape_tag == "full_shape" and kind is None:
            continue  # the original client's full_* tags are not reliable (docs/original-rory.md)
        declared = _declared_bytes(first.tags.get(shape_tag), first.tags.get(dtype_tag))
        if declared is not None and declared > max_bytes:
            raise _too_large(ball_id, f"tag {shape_tag}={first.tags[shape_tag]}", declared, max_bytes)


def check_budget(layout: Layout, max_bytes: int) -> None:
    """Refuse a validated layout whose bytes (and, for arrays, shape x itemsize) exceed ``max_bytes``.

    Call it after :func:`read_layout` and before anything is allocated for the read.
    """
    if layout.size > max_bytes:
        raise _too_large(layout.ball_id, f"{len(layout.chunks)} chunks", layout.size, max_bytes)
    if layout.kind != "bytes_list" and layout.full_shape is not None and layout.dtype is not None:
        declared = _expected_bytes(layout.full_shape, layout.dtype)
        if declared > max_bytes:
            raise _too_large(
                layout.ball_id, f"shape {layout.full_shape} x {layout.dtype.name}", declared, max_bytes
            )


# ----------------------------------------------------------------------------- byte lists
#: What one decoded byte-list item costs beyond its payload bytes (the bytes object's header, the
#: allocator's rounding and its slot in the list). Charged against MAX_OBJECT_BYTES before any item is
#: built, so a list of millions of tiny items is refused like the array of the same footprint.
ITEM_OVERHEAD = 64
_U16 = struct.Struct(">H").unpack_from
_U32 = struct.Struct(">I").unpack_from
_PICKLE_HINT = "pickled payloads from the original client are refused"


def _not_a_byte_list(key: str, why: str) -> CorruptObject:
    return CorruptObject(f"{key}: not a msgpack array of byte strings ({why}); {_PICKLE_HINT}")


def _byte_view(payload: bytes | bytearray | memoryview) -> memoryview:
    view = memoryview(payload)
    return view if view.format == "B" and view.ndim == 1 else view.cast("B")


def _array_header(key: str, view: memoryview) -> tuple[int, int]:
    """(item count, offset of the first item) of a msgpack array header; no object is built."""
    size = len(view)
    if size == 0:
        raise _not_a_byte_list(key, "empty payload")
    first = view[0]
    if 0x90 <= first <= 0x9F:  # fixarray
        count, position = first & 0x0F, 1
    elif first in (0xDC, 0xDD):  # array16, array32
        position = 3 if first == 0xDC else 5
        if size < position:
            raise _not_a_byte_list(key, "truncated array header")
        count = (_U16 if first == 0xDC else _U32)(view, 1)[0]
    else:
        raise _not_a_byte_list(key, f"starts with msgpack type 0x{first:02x}, not an array")
    if count * 2 > size - position:  # every bin item takes at least 2 bytes (bin8 header + length)
        raise _not_a_byte_list(key, f"{count} items cannot fit in {size - position} bytes")
    return count, position


def _walk_items(key: str, view: memoryview, count: int, position: int, out: list[bytes] | None) -> None:
    """Check that ``count`` bin8/bin16/bin32 items fill ``view`` from ``position`` exactly; append
    copies of their bytes to ``out`` when given (slices of the payload, no msgpack objects)."""
    size = len(view)
    append = out.append if out is not None else None
    for number in range(count):
        head = view[position] if position < size else -1
        if head == 0xC4 and position + 2 <= size:  # bin8
            start = position + 2
            end = start + view[position + 1]
        elif head == 0xC5 and position + 3 <= size:  # bin16
            start = position + 3
            end = start + _U16(view, position + 1)[0]
        elif head == 0xC6 and position + 5 <= size:  # bin32
            start = position + 5
            end = start + _U32(view, position + 1)[0]
        elif head < 0:
            raise _not_a_byte_list(key, f"the chunk ends before item {number}")
        elif 0xC4 <= head <= 0xC6:
            raise _not_a_byte_list(key, f"item {number} has a truncated header")
        else:
            raise _not_a_byte_list(key, f"item {number} is msgpack type 0x{head:02x}, not bin")
        if end > size:
            raise _not_a_byte_list(key, f"item {number} runs past the end of the chunk")
        if append is not None:
            append(view[start:end].tobytes())
        position = end
    if position != size:
        raise _not_a_byte_list(key, f"{size - position} bytes after the last item")


def scan_bytes_list(key: str, payload: bytes | bytearray | memoryview, tags: Mapping[str, str]) -> int:
    """Validate one chunk of a byte list and return its item count, building no objects.

    Accepted: exactly one msgpack array (fixarray/array16/array32) of bin8/bin16/bin32 items and
    nothing after it. Anything else (maps, strings, integers, nesting, pickle, a count that cannot fit
    in the bytes that follow, a ``records`` tag that disagrees) is ``CorruptObject``. The count is
    checked against the remaining bytes and the ``records`` tag before any item is looked at.
    """
    view = _byte_view(payload)
    count, position = _array_header(key, view)
    if "records" in tags and parse_count(tags["records"], what="records") != count:
        raise CorruptObject(f"{key}: {count} items but records tag says {tags['records']}")
    _walk_items(key, view, count, position, None)
    return count


def unpack_bytes_list(
    key: str, payload: bytes | bytearray | memoryview, tags: Mapping[str, str]
) -> list[bytes]:
    """Decode one chunk of a byte list: :func:`scan_bytes_list`, then copy the items out."""
    view = _byte_view(payload)
    count = scan_bytes_list(key, view, tags)
    items: list[bytes] = []
    _walk_items(key, view, count, _array_header(key, view)[1], items)
    return items


def decode_bytes_list(layout: Layout, view: memoryview, max_bytes: int) -> list[bytes]:
    """Every item of a byte-list ball whose chunks lie in ``view`` at ``layout.offsets``, in order.

    All chunks are validated first (no objects built); then the decoded list's footprint (payload
    bytes plus :data:`ITEM_OVERHEAD` per item) must fit in ``max_bytes`` (else ``PayloadTooLarge``),
    and only then are the items copied out.
    """

    def parts() -> Iterator[tuple[ChunkMeta, memoryview]]:
        for meta, offset in zip(layout.chunks, layout.offsets, strict=True):
            yield meta, view[offset : offset + meta.size]

    total = sum(scan_bytes_list(meta.key, part, meta.tags) for meta, part in parts())
    footprint = layout.size + total * ITEM_OVERHEAD
    if footprint > max_bytes:
        raise PayloadTooLarge(
            f"{layout.ball_id}: {total} items of {layout.size} bytes would take ~{footprint} bytes "
            f"decoded ({ITEM_OVERHEAD} per item), over the worker's MAX_OBJECT_BYTES={max_bytes}"
        )
    items: list[bytes] = []
    for meta, part in parts():
        count, position = _array_header(meta.key, part)
        _walk_items(meta.key, part, count, position, items)
    return items
