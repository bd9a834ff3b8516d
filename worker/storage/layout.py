"""Reading the chunk format: chunk metadata validated into a :class:`Layout`, and read budgets.

:func:`read_layout` checks that the chunks' tags agree with each other and with their sizes, and
recognises objects of the original client by their tags; :func:`check_first_chunk` and
:func:`check_budget` refuse a ball too large for ``MAX_OBJECT_BYTES`` before anything is fetched or
allocated (see :mod:`worker.storage.codec`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from worker.errors import BadRequest, CorruptObject, PayloadTooLarge
from worker.storage.base import BallInfo, Kind
from worker.storage.names import chunk_key
from worker.storage.tags import (
    KIND_TAG,
    KINDS,
    MAX_SMALL_CHUNKS,
    MIN_PIECE_BYTES,
    expected_bytes,
    normalise_checksum,
    parse_count,
    parse_dtype,
    parse_shape,
    user_tags_of,
)


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
        expected = expected_bytes(shape, chunk_dtype)
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
    expected, total = expected_bytes(shape, dtype), sum(m.size for m in metas)
    if total != expected:
        raise CorruptObject(f"{ball_id}: {total} bytes but shape {shape} × {dtype.itemsize} = {expected}")
    return shape, dtype


# ----------------------------------------------------------------------------- budgets
#: The smallest byte-list chunk a writer produces: a msgpack array header (1 byte) and one empty
#: ``bin8`` item (2 bytes). Bounds a byte list's ``num_chunks`` by the budget (:func:`check_first_chunk`).
MIN_BYTE_LIST_CHUNK = 3


def _too_large(ball_id: str, what: str, size: int, max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"{ball_id}: {what} declares {size} bytes, over the worker's MAX_OBJECT_BYTES={max_bytes}; "
        "refused before reading"
    )


def check_declared(ball_id: str, what: str, size: int, max_bytes: int) -> None:
    """Refuse (PayloadTooLarge) a size some metadata declares before anything is built from it: a
    backend's own records (the local store's manifest) are checked chunk by chunk while parsed, so a
    lying ``size`` never drives an allocation or a loop (``local_format.py``)."""
    if size > max_bytes:
        raise _too_large(ball_id, what, size, max_bytes)


def _declared_bytes(shape_tag: object, dtype_tag: object) -> int | None:
    """shape x itemsize of a pair of tags, or None when either is absent or unparseable (the full
    validation in :func:`read_layout` reports those); never evaluates, never allocates."""
    if shape_tag is None or dtype_tag is None:
        return None
    try:
        return expected_bytes(parse_shape(shape_tag), parse_dtype(dtype_tag))
    except CorruptObject:
        return None


def check_first_chunk(ball_id: str, first: ChunkMeta, count: int, max_bytes: int) -> None:
    """Refuse, from chunk 0's metadata alone, a ball that cannot fit in ``max_bytes``.

    Runs before the metadata of chunks 1..n-1 is fetched, so a lying ``num_chunks`` or shape tag costs
    one request, not a million. Lower bounds on the ball's size that every writer satisfies: chunk 0
    itself; for byte lists, ``(num_chunks - 1) x`` :data:`MIN_BYTE_LIST_CHUNK` more; for arrays,
    ``(num_chunks - 1) x`` chunk 0's size (rows are split evenly with the remainder
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
        # A byte list: chunk sizes vary with the items, but every chunk after chunk 0 holds at least
        # one item (items are split like rows, chunking.py split_rows), so it takes at least
        # MIN_BYTE_LIST_CHUNK bytes.
        least = first.size + (count - 1) * MIN_BYTE_LIST_CHUNK
        if least > max_bytes:
            raise _too_large(
                ball_id,
                f"num_chunks={count} (byte-list chunks of at least {MIN_BYTE_LIST_CHUNK} bytes)",
                least,
                max_bytes,
            )
        return
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
        declared = expected_bytes(layout.full_shape, layout.dtype)
        if declared > max_bytes:
            raise _too_large(
                layout.ball_id, f"shape {layout.full_shape} x {layout.dtype.name}", declared, max_bytes
            )
