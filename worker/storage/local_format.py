"""The local store's on-disk format: manifests, version pointers and block hashes (``local.py``).

A committed version directory holds the chunk files and ``manifest.json``: the chunk records (key,
size, MictlanX tags) with one hash per block of ``block_size`` bytes in every hash the manifest's
``block_hashes`` names. ``<ball>.ref`` points at the current version and the one it replaced. Everything
read from disk is validated here before the store trusts it: a manifest that is too large, not ours,
names another ball or carries malformed hashes is ``CorruptObject``; one that is empty or cut short
(a write that had not reached the disk when the power went) is :class:`Incomplete`.
"""

from __future__ import annotations

import json
import os
import re
import secrets
import time
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

try:
    import xxhash
except ImportError:  # pragma: no cover - a dependency; without it blocks are hashed with CRC32 only
    xxhash = None

from worker.errors import BadRequest, CorruptObject
from worker.storage.codec import (
    MAX_CHUNKS,
    BallPlan,
    ChunkMeta,
    Layout,
    check_budget,
    normalise_checksum,
    read_layout,
)
from worker.storage.layout import check_declared
from worker.storage.local_files import open_regular

FORMAT = "rory-css-local"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
VERSION_RE = re.compile(r"v[0-9a-f]{8,48}")
#: Block hashes a manifest can carry (its ``block_hashes`` tag names them; absent: CRC32 only, as
#: written before XXH3). Writers record XXH3 only (~20 GB/s; zlib's CRC32 at 3-4 GB/s per core cost
#: a put half its speed: docs/storage.md), CRC32 only when ``xxhash`` is missing; readers verify
#: whichever a manifest carries, XXH3 first. Value range of each.
HASH_BITS = {"crc32": 32, "xxh3_64": 64}
HASH_FIELD = {"crc32": "crc32", "xxh3_64": "xxh3"}
WRITTEN_HASHES: tuple[str, ...] = ("xxh3_64",) if xxhash is not None else ("crc32",)
VERIFIED_HASH = "xxh3_64" if xxhash is not None else "crc32"


class VersionGone(Exception):
    """A chunk file of the version being read vanished (a writer replaced or deleted the ball)."""


class Incomplete(Exception):
    """A version lacks bytes its manifest promises (a file missing, empty or shorter): what a write
    that was not yet on disk when the power went looks like. Readers then try the previous version."""


#: The pointer file's content: the current version, and the version it replaced (kept until the next
#: commit) or None.
Refs = tuple[str, "str | None"]


@dataclass(frozen=True)
class Stored:
    """A committed version as read from disk."""

    version: str
    directory: Path
    layout: Layout
    checks: tuple[tuple[int, ...], ...]  # per chunk, per block: the ``hash`` value
    block_size: int
    refs: Refs  # the pointer as it was when this version was loaded
    fallback: bool = False  # the previous version, read because the current one is incomplete
    hash: str = "crc32"  # the block hash the read verifies


@dataclass(frozen=True)
class Piece:
    """One block of one chunk file: where it is on disk and where its bytes go in memory."""

    path: Path
    buffer: memoryview
    offset: int
    file_size: int
    check: int | None  # the block's expected hash (reads)
    hash: str = "crc32"  # ... which one


def new_version() -> str:
    """A fresh version name (``v<ns timestamp hex><random hex>``, matching :data:`VERSION_RE`)."""
    return f"v{time.time_ns():x}{secrets.token_hex(4)}"


def block_count(size: int, block_size: int) -> int:
    """How many blocks :func:`blocks` gives, by arithmetic: a manifest's declared ``size`` is checked
    against its hash lists without building a list as long as the size claims (a 272-byte manifest
    declaring 2**40 bytes must cost nothing)."""
    return max(1, -(-size // block_size))


def blocks(size: int, block_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` blocks of a chunk; a 0-byte chunk has one empty block (CRC 0)."""
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + block_size, size)) for start in range(0, size, block_size)]


def group(pieces: Sequence[Piece], minimum: int) -> list[list[Piece]]:
    """Pack consecutive small pieces into one thread task (fewer hand-offs for many tiny chunks)."""
    groups: list[list[Piece]] = []
    current: list[Piece] = []
    weight = 0
    for piece in pieces:
        current.append(piece)
        weight += len(piece.buffer)
        if weight >= minimum:
            groups.append(current)
            current, weight = [], 0
    if current:
        groups.append(current)
    return groups


class BlockHash:
    """One block's hash (``crc32`` or ``xxh3_64``), fed piece by piece."""

    def __init__(self, name: str) -> None:
        self._crc = 0
        self._xxh = xxhash.xxh3_64() if name == "xxh3_64" else None

    def update(self, piece: memoryview) -> None:
        if self._xxh is not None:
            self._xxh.update(piece)
        else:
            self._crc = zlib.crc32(piece, self._crc)

    def value(self) -> int:
        return int(self._xxh.intdigest()) if self._xxh is not None else self._crc


def build_manifest(
    plan: BallPlan,
    *,
    bucket: str,
    producer_id: str,
    version: str,
    block_size: int,
    block_hashes: Sequence[Sequence[tuple[int, ...]]],
    chunk_sums: Sequence[str | None],
    max_bytes: int,
) -> bytes:
    """The manifest; ``block_hashes[i][b]`` holds block ``b`` of chunk ``i``'s WRITTEN_HASHES. A put
    whose manifest would exceed ``max_bytes`` (too many chunks) is refused (``BadRequest``)."""
    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "bucket_id": bucket,
        "ball_id": plan.ball_id,
        "version": version,
        "created_at_ms": time.time_ns() // 1_000_000,
        "block_size": block_size,
        "block_hashes": list(WRITTEN_HASHES),
        "chunks": [
            {
                "key": chunk.key,
                "size": chunk.size,
                "checksum": chunk_sums[i],
                **{
                    HASH_FIELD[name]: [values[number] for values in block_hashes[i]]
                    for number, name in enumerate(WRITTEN_HASHES)
                },
                "tags": chunk.tags,
                "content_type": "application/octet-stream",
                "producer_id": producer_id,
            }
            for i, chunk in enumerate(plan.chunks)
        ],
    }
    body = json.dumps(manifest, separators=(",", ":")).encode()
    if len(body) > max_bytes:
        raise BadRequest(
            f"{plan.ball_id}: {len(plan.chunks)} chunks need a {len(body)}-byte manifest, over the "
            f"local store's {max_bytes}; use fewer chunks"
        )
    return body


def parse_refs(ball_id: str, text: str) -> Refs:
    """The pointer's content: (current version, previous version or None)."""
    names = text.split()
    if not 1 <= len(names) <= 2 or not all(VERSION_RE.fullmatch(name) for name in names):
        raise CorruptObject(f"{ball_id}: unreadable version pointer {text.strip()!r:.60}")
    previous = names[1] if len(names) == 2 and names[1] != names[0] else None
    return names[0], previous


def refs_bytes(version: str, replaced: Refs | None) -> bytes:
    """The pointer's next content: the new version, then the one it replaces (kept one commit)."""
    lines = [version] if replaced is None or replaced[0] == version else [version, replaced[0]]
    return "".join(f"{line}\n" for line in lines).encode("ascii")


def read_manifest(ball_id: str, path: Path, max_bytes: int) -> bytes:
    """The manifest's bytes; one over ``max_bytes`` is refused without reading it, and an
    empty one (a write cut short by a power loss) counts as incomplete. A symlink or anything but a
    regular file is ``CorruptObject`` (``open_regular``): a FIFO would block the store's thread."""
    with open(path, "rb", opener=open_regular) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > max_bytes:
            raise CorruptObject(f"{ball_id}: a {size}-byte manifest (the limit is {max_bytes})")
        # read(n) allocates n bytes up front: ask for what fstat says (+1 to notice growth), not the
        # limit, or every manifest read would cost MAX_MANIFEST_BYTES of memory.
        raw = handle.read(size + 1)
    if len(raw) > size:
        raise CorruptObject(f"{ball_id}: the manifest grew while it was read (past {size} bytes)")
    if not raw:
        raise Incomplete(f"{ball_id}: the manifest {path.parent.name}/{MANIFEST} is empty")
    return raw


def parse_manifest(
    ball_id: str, refs: Refs, version: str, directory: Path, raw: bytes, max_object_bytes: int
) -> Stored:
    """The version a manifest describes, validated, its layout within ``max_object_bytes``."""
    try:
        doc = json.loads(raw)
    except ValueError:  # typically cut short: a write that had not reached the disk
        raise Incomplete(f"{ball_id}: the manifest of version {version} is not valid JSON") from None
    if (
        not isinstance(doc, dict)
        or doc.get("format") != FORMAT
        or doc.get("format_version") != FORMAT_VERSION
    ):
        raise CorruptObject(f"{ball_id}: not a {FORMAT} v{FORMAT_VERSION} manifest")
    if doc.get("ball_id") != ball_id or doc.get("version") != version:
        raise CorruptObject(f"{ball_id}: manifest names another ball or version")
    block_size = doc.get("block_size")
    chunks = doc.get("chunks")
    if not isinstance(block_size, int) or not 4096 <= block_size <= 1 << 30:
        raise CorruptObject(f"{ball_id}: bad block_size in manifest")
    if not isinstance(chunks, list) or not 1 <= len(chunks) <= MAX_CHUNKS:
        raise CorruptObject(f"{ball_id}: bad chunk list in manifest")
    recorded = doc.get("block_hashes", ["crc32"])  # manifests from before XXH3 carry CRC32 only
    if (
        not isinstance(recorded, list)
        or not recorded
        or not all(isinstance(name, str) and name in HASH_BITS for name in recorded)
    ):
        raise CorruptObject(f"{ball_id}: manifest names unknown block hashes {recorded!r:.80}")
    verified = VERIFIED_HASH if VERIFIED_HASH in recorded else "crc32"
    if verified not in recorded:
        raise CorruptObject(f"{ball_id}: written with {recorded} block hashes; install xxhash to read it")
    metas, checks = [], []
    declared = 0  # each record's size is charged before its hash lists are looked at
    for record in chunks:
        meta, values = parse_chunk(
            ball_id, record, block_size, recorded, verified, declared, max_object_bytes
        )
        declared += meta.size
        metas.append(meta)
        checks.append(values)
    layout = read_layout(ball_id, metas)
    check_budget(layout, max_object_bytes)  # before any read allocates its output
    return Stored(version, directory, layout, tuple(checks), block_size, refs, hash=verified)


def parse_chunk(
    ball_id: str,
    record: Any,
    block_size: int,
    recorded: Sequence[str],
    verified: str,
    declared: int,
    max_object_bytes: int,
) -> tuple[ChunkMeta, tuple[int, ...]]:
    """One chunk record: its metadata and the ``verified`` hash of each block (every hash in
    ``recorded`` must be there, one well-formed value per block).

    A ``size`` that with the ``declared`` bytes of the chunks before it exceeds ``max_object_bytes``
    is PayloadTooLarge before the block count it implies is used for anything: the ball could not be
    read anyway, and the refusal must not cost what the lie claims."""
    if not isinstance(record, dict):
        raise CorruptObject(f"{ball_id}: chunk record is not an object")
    key, size, tags = record.get("key"), record.get("size"), record.get("tags")
    if not isinstance(key, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise CorruptObject(f"{ball_id}: chunk record without key/size")
    if not isinstance(tags, dict) or not all(
        isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
    ):
        raise CorruptObject(f"{key}: tags must map str to str")
    check_declared(ball_id, f"the manifest up to chunk {key}", declared + size, max_object_bytes)
    count = block_count(size, block_size)
    for name in recorded:
        values, bits = record.get(HASH_FIELD[name]), HASH_BITS[name]
        if (
            not isinstance(values, list)
            or len(values) != count
            or not all(type(v) is int and 0 <= v < 1 << bits for v in values)
        ):
            raise CorruptObject(f"{key}: manifest needs {count} {name} values")
    checksum = normalise_checksum(record.get("checksum"))
    meta = ChunkMeta(key=key, size=size, checksum=checksum, tags=tags)
    return meta, tuple(record[HASH_FIELD[verified]])


__all__ = [
    "FORMAT",
    "FORMAT_VERSION",
    "HASH_BITS",
    "HASH_FIELD",
    "MANIFEST",
    "VERIFIED_HASH",
    "VERSION_RE",
    "WRITTEN_HASHES",
    "BlockHash",
    "Incomplete",
    "Piece",
    "Refs",
    "Stored",
    "VersionGone",
    "block_count",
    "blocks",
    "build_manifest",
    "group",
    "new_version",
    "parse_chunk",
    "parse_manifest",
    "parse_refs",
    "read_manifest",
    "refs_bytes",
]
