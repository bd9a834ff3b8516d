"""The chunk format shared by every backend: how a ball is split, tagged and read back.

Writers produce exactly what the reference MictlanX client (0.1.0a5, via rorycommon) writes, so a
ball written here is readable by the original Rory code and vice versa (docs/original-rory.md, MictlanX):

* chunk ``i`` of ball ``b`` is the object ``b_i``; an ndarray is split along axis 0 into
  ``min(num_chunks, rows)`` pieces of ``rows // k`` rows, the remainder going to the last piece;
* the payload is the raw C-order bytes of the piece (``ndarray.tobytes()``), no header;
* tags (all strings): ``index``, ``num_chunks``, ``shape``/``dtype`` of *this chunk* spelled like
  Python (``"(3, 4)"``, ``"(5,)"``, ``"float64"``), ``full_shape``, ``full_dtype``, ``records``,
  ``attributes``, ``chunk_size`` (bytes of this chunk), ``group_id`` (the ball id),
  ``full_checksum`` (SHA-256 hex of all chunk bytes in order), ``updated_at`` (ms epoch, as the
  newer client 0.1.2a0 adds it) and
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

The format lives in four modules, re-exported here: ``tags.py`` (the tag vocabulary and its strict
parsers), ``chunking.py`` (writing: a ball as a plan of tagged chunks), ``layout.py`` (reading: chunk
metadata validated into a layout, and read budgets) and ``bytelist.py`` (the strict byte-list reader).
"""

from __future__ import annotations

from worker.storage.bytelist import ITEM_OVERHEAD, decode_bytes_list, scan_bytes_list, unpack_bytes_list
from worker.storage.chunking import (
    OFF_LOOP_BYTES,
    BallPlan,
    ChunkPayload,
    byte_view,
    off_loop,
    plan_blob,
    plan_bytes_list,
    plan_ndarray,
    split_rows,
    weight_of,
)
from worker.storage.layout import ChunkMeta, Layout, check_budget, check_first_chunk, read_layout
from worker.storage.tags import (
    ALLOWED_DTYPES,
    DEFAULT_MAX_OBJECT_BYTES,
    KIND_TAG,
    KINDS,
    MAX_CHUNKS,
    MAX_NDIM,
    MAX_SMALL_CHUNKS,
    MIN_PIECE_BYTES,
    SYSTEM_TAGS,
    check_user_tags,
    expected_bytes,
    format_shape,
    normalise_checksum,
    num_chunks_of,
    parse_count,
    parse_dtype,
    parse_shape,
    user_tags_of,
)

__all__ = [
    "ALLOWED_DTYPES",
    "DEFAULT_MAX_OBJECT_BYTES",
    "ITEM_OVERHEAD",
    "KINDS",
    "KIND_TAG",
    "MAX_CHUNKS",
    "MAX_NDIM",
    "MAX_SMALL_CHUNKS",
    "MIN_PIECE_BYTES",
    "OFF_LOOP_BYTES",
    "SYSTEM_TAGS",
    "BallPlan",
    "ChunkMeta",
    "ChunkPayload",
    "Layout",
    "byte_view",
    "check_budget",
    "check_first_chunk",
    "check_user_tags",
    "decode_bytes_list",
    "expected_bytes",
    "format_shape",
    "normalise_checksum",
    "num_chunks_of",
    "off_loop",
    "parse_count",
    "parse_dtype",
    "parse_shape",
    "plan_blob",
    "plan_bytes_list",
    "plan_ndarray",
    "read_layout",
    "scan_bytes_list",
    "split_rows",
    "unpack_bytes_list",
    "user_tags_of",
    "weight_of",
]
