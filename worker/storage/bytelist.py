"""The strict reader of byte-list chunks (serialized ciphertexts): it counts before it builds.

A byte-list chunk is one msgpack array of ``bin`` items. A general msgpack unpacker would turn an
8 MiB chunk of empty maps into ~600 MiB of Python dicts, so this reader takes the array header,
refuses a count that cannot fit in the bytes that follow, then walks the ``bin`` headers without
building anything; only when every chunk checks out, and the decoded list fits in ``MAX_OBJECT_BYTES``,
are the items copied out (docs/storage.md, section 3).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping

from worker.errors import CorruptObject, PayloadTooLarge
from worker.storage.layout import ChunkMeta, Layout
from worker.storage.tags import parse_count

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
