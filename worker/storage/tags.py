"""The tag vocabulary of the chunk format and its strict parsers (see :mod:`worker.storage.codec`).

Readers never evaluate tags: shapes are matched by a regular expression, dtypes come from an
allow-list, counts are decimal integers, checksums are SHA-256 hex; anything else is ``CorruptObject``.
Writers may not set the tags the storage layer owns (:data:`SYSTEM_TAGS`).
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence

import numpy as np

from worker.errors import BadRequest, CorruptObject

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


def normalise_checksum(value: object) -> str | None:
    """A SHA-256 hex string (lower-cased), or None when absent/empty."""
    if value in (None, ""):
        return None
    if not isinstance(value, str) or not _SHA256_RE.fullmatch(value):
        raise CorruptObject(f"checksum is not a SHA-256 hex digest: {value!r:.80}")
    return value.lower()


def expected_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    """shape x itemsize: the bytes an array of ``shape`` and ``dtype`` holds."""
    return math.prod(shape) * dtype.itemsize
