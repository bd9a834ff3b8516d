"""The embedded backend: one directory per bucket, one immutable version directory per write.

On-disk layout (``<root>`` is ``STORAGE_PATH``, default ``<SINK_PATH>/css``)::

    <root>/<bucket>/
        .lock                      flock()ed only around the commit rename
        .tmp/                      temporary pointer files
        <ball>.ref                 the commit point: the name of the current version (one line)
        <ball>.<version>/          one write, never modified after its commit
            manifest.json          the chunk records (key, size, CRC32 per 8 MiB block, MictlanX tags)
            <ball>_0 .. <ball>_<n-1>   raw chunk bytes, exactly the MictlanX payloads

Why it is safe: a writer fills a fresh version directory nobody references, then atomically
replaces ``<ball>.ref`` (write temp file, ``os.replace``). Readers resolve the pointer first, so they
see the old version or the new one, never a mix, and never half a write; a crash before the
rename leaves the previous version untouched (the orphan directory is removed by :meth:`sweep`).
After committing, the writer removes the version it replaced (in the background); a reader that
was still reading it notices a vanished chunk file, re-resolves the pointer and starts over on the
new version.

Why it is fast: chunks are written and read by a dedicated thread pool with ``pwrite``/``preadv``
straight from/into the caller's array (no intermediate copies, one preallocated output array), and
integrity uses CRC32 per 8 MiB block, checked in 512 KiB pieces while they are hot in the cache and
in parallel across blocks. SHA-256 (the MictlanX ``checksum``/``full_checksum``) runs at ~2 GB/s on
one core and would dominate page-cache speeds, so it is opt-in (``sha256=True``). ``fsync`` is
opt-in too (``fsync=True`` syncs chunk files, manifest, directories and the pointer rename).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import fcntl
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
import threading
import time
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.errors import CorruptObject, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage.base import Allocator, BallInfo, allocate_output
from worker.storage.codec import (
    DEFAULT_MAX_OBJECT_BYTES,
    MAX_CHUNKS,
    BallPlan,
    ChunkMeta,
    Layout,
    check_budget,
    normalise_checksum,
    read_layout,
    unpack_bytes_list,
)
from worker.storage.names import check_ball_id, check_bucket_id
from worker.storage.planned import PlannedStore

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "rory-css-local"
FORMAT_VERSION = 1
BLOCK_SIZE = 8 * 1024 * 1024  # unit of one CRC32 and of one unit of parallel work
PIECE_SIZE = 512 * 1024  # copy + checksum granularity (stays in the CPU cache)
SMALL_PUT_BYTES = 1024 * 1024  # balls up to this size are prepared and written in one thread hop
MANIFEST = "manifest.json"
MAX_RESTARTS = 8  # re-resolutions of the pointer while writers keep replacing the ball
_VERSION_RE = re.compile(r"v[0-9a-f]{8,48}")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _VersionGone(Exception):
    """A chunk file of the version being read vanished (a writer replaced or deleted the ball)."""


@dataclass(frozen=True)
class _Stored:
    """A committed version as read from disk."""

    version: str
    directory: Path
    layout: Layout
    crcs: tuple[tuple[int, ...], ...]
    block_size: int


@dataclass(frozen=True)
class _Piece:
    """One block of one chunk file: where it is on disk and where its bytes go in memory."""

    path: Path
    buffer: memoryview
    offset: int
    file_size: int
    crc: int | None


def _unavailable(error: OSError) -> StorageUnavailable:
    """Disk full, permission denied, I/O error: the store cannot serve the call (503, retryable)."""
    return StorageUnavailable(f"local storage: {error}")


def _new_version() -> str:
    return f"v{time.time_ns():x}{secrets.token_hex(4)}"


def _blocks(size: int, block_size: int) -> list[tuple[int, int]]:
    """``[start, stop)`` blocks of a chunk; a 0-byte chunk has one empty block (CRC 0)."""
    if size == 0:
        return [(0, 0)]
    return [(start, min(start + block_size, size)) for start in range(0, size, block_size)]


def _group(pieces: Sequence[_Piece], minimum: int) -> list[list[_Piece]]:
    """Pack consecutive small pieces into one thread task (fewer hand-offs for many tiny chunks)."""
    groups: list[list[_Piece]] = []
    current: list[_Piece] = []
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


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_pieces(pieces: Sequence[_Piece]) -> list[int]:
    """pwrite each piece, computing its CRC32 from the source while it is in cache."""
    crcs = []
    for piece in pieces:
        fd = os.open(piece.path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            crc, position, view = 0, 0, piece.buffer
            while position < len(view):
                part = view[position : position + PIECE_SIZE]
                crc = zlib.crc32(part, crc)
                written = 0
                while written < len(part):
                    written += os.pwrite(fd, part[written:], piece.offset + position + written)
                position += len(part)
            crcs.append(crc)
        finally:
            os.close(fd)
    return crcs


def _read_pieces(pieces: Sequence[_Piece], verify: bool) -> None:
    """preadv each piece straight into its slice of the output, checking size and CRC32."""
    for piece in pieces:
        try:
            fd = os.open(piece.path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise _VersionGone(str(piece.path)) from None
        try:
            actual = os.fstat(fd).st_size
            if actual != piece.file_size:
                raise CorruptObject(
                    f"{piece.path.name}: {actual} bytes on disk, manifest says {piece.file_size}"
                )
            crc, position, view = 0, 0, piece.buffer
            while position < len(view):
                part = view[position : position + PIECE_SIZE]
                got = os.preadv(fd, [part], piece.offset + position)
                if got <= 0:
                    raise CorruptObject(f"{piece.path.name}: short read at byte {piece.offset + position}")
                if verify:
                    crc = zlib.crc32(part[:got], crc)
                position += got
            if verify and crc != piece.crc:
                raise CorruptObject(
                    f"{piece.path.name}: checksum mismatch in the block at byte {piece.offset} "
                    f"(crc32 {crc:08x}, manifest {piece.crc:08x})"
                )
        finally:
            os.close(fd)


def _sha256(views: Sequence[memoryview]) -> str:
    digest = hashlib.sha256()
    for view in views:
        for start in range(0, len(view), 4 * PIECE_SIZE):
            digest.update(view[start : start + 4 * PIECE_SIZE])
    return digest.hexdigest()


class _Job:
    """Thread-pool work of one call, so a failed or cancelled call can wait for its threads to stop
    touching files before cleaning up (cancelling an asyncio future does not stop a running thread)."""

    def __init__(self, pool: concurrent.futures.ThreadPoolExecutor) -> None:
        self._pool = pool
        self._futures: list[concurrent.futures.Future[Any]] = []

    def submit(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        future = self._pool.submit(fn, *args)
        self._futures.append(future)
        return asyncio.wrap_future(future)

    async def abort(self, cleanup: Callable[[], None]) -> None:
        """Cancel queued work, then (in a helper thread) wait for running work and run ``cleanup``."""
        for future in self._futures:
            future.cancel()
        done: concurrent.futures.Future[None] = concurrent.futures.Future()
        futures = list(self._futures)

        def janitor() -> None:
            try:
                concurrent.futures.wait(futures)
                cleanup()
                done.set_result(None)
            except BaseException as error:  # pragma: no cover - cleanup is best effort
                log.warning("local store cleanup failed: %s", error)
                done.set_result(None)

        threading.Thread(target=janitor, name="css-local-cleanup", daemon=True).start()
        with contextlib.suppress(BaseException):
            await asyncio.shield(asyncio.wrap_future(done))


class LocalStore(PlannedStore):
    """A bucket in a local directory (see the module docstring for layout and guarantees)."""

    backend = "local"

    def __init__(
        self,
        root: str | os.PathLike[str],
        bucket: str = "rory",
        *,
        fsync: bool = False,
        sha256: bool = False,
        verify: bool = True,
        max_workers: int = 4,
        producer_id: str = "rory-worker",
        max_object_bytes: int = DEFAULT_MAX_OBJECT_BYTES,
    ) -> None:
        self.bucket = check_bucket_id(bucket)
        self.root = Path(root)
        self.directory = self.root / bucket
        self.fsync = fsync
        self.sha256 = sha256
        self.verify = verify
        self.producer_id = producer_id
        # Reads refuse (PayloadTooLarge) a ball whose manifest declares more bytes than this.
        self.max_object_bytes = int(max_object_bytes)
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max(1, max_workers), thread_name_prefix="css-local"
        )
        self._closed = False

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> LocalStore:
        options.setdefault("max_workers", settings.mictlanx_max_workers)
        options.setdefault("producer_id", settings.mictlanx_client_id)
        options.setdefault("max_object_bytes", settings.max_object_bytes)
        return cls(settings.storage_path, settings.mictlanx_bucket_id, **options)

    # ------------------------------------------------------------------ paths
    def _ref(self, ball_id: str) -> Path:
        return self.directory / f"{ball_id}.ref"

    def _version_dir(self, ball_id: str, version: str) -> Path:
        return self.directory / f"{ball_id}.{version}"

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable("local store is closed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        try:
            return await asyncio.wrap_future(self._pool.submit(fn, *args))
        except OSError as error:
            raise _unavailable(error) from error

    # ------------------------------------------------------------------ public API
    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return (await self.fetch_ndarray(ball_id))[0]

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo]:
        """Read an ndarray; the info (``etag`` = version directory) names exactly the version read."""
        check_ball_id(ball_id)
        for _ in range(MAX_RESTARTS):
            stored = await self._run(self._load, ball_id)
            stored.layout.require_array()
            out, flat = await allocate_output(stored.layout, allocate)
            if await self._read_into(stored, memoryview(flat)):
                return out, replace(stored.layout.info(), etag=stored.version)
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        check_ball_id(ball_id)
        for _ in range(MAX_RESTARTS):
            stored = await self._run(self._load, ball_id)
            stored.layout.require_bytes_list()
            buffer = bytearray(stored.layout.size)
            if await self._read_into(stored, memoryview(buffer)):
                return await self._run(self._unpack, stored.layout, buffer)
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    async def info(self, ball_id: str) -> BallInfo:
        check_ball_id(ball_id)
        stored = await self._run(self._load, ball_id)
        return replace(stored.layout.info(), etag=stored.version)

    async def exists(self, ball_id: str) -> bool:
        check_ball_id(ball_id)
        return await self._run(self._ref(ball_id).is_file)

    async def delete(self, ball_id: str) -> int:
        check_ball_id(ball_id)
        return await self._run(self._delete, ball_id)

    async def list_balls(self) -> list[str]:
        return await self._run(self._list)

    async def ping(self) -> bool:
        if self._closed:
            return False
        try:
            return await self._run(self._writable)
        except Exception:
            return False

    async def sweep(self, min_age_s: float = 3600.0) -> int:
        """Remove version directories and temp files no pointer references and older than
        ``min_age_s`` (left by crashed writers). Returns how many entries were removed."""
        return await self._run(self._sweep, min_age_s)

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self._pool.shutdown, True)

    # ------------------------------------------------------------------ writing
    def _manifest(
        self,
        plan: BallPlan,
        version: str,
        crc_lists: Sequence[Sequence[int]],
        chunk_sums: Sequence[str | None],
    ) -> bytes:
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bucket_id": self.bucket,
            "ball_id": plan.ball_id,
            "version": version,
            "created_at_ms": time.time_ns() // 1_000_000,
            "block_size": BLOCK_SIZE,
            "chunks": [
                {
                    "key": chunk.key,
                    "size": chunk.size,
                    "checksum": chunk_sums[i],
                    "crc32": list(crc_lists[i]),
                    "tags": chunk.tags,
                    "content_type": "application/octet-stream",
                    "producer_id": self.producer_id,
                }
                for i, chunk in enumerate(plan.chunks)
            ],
        }
        return json.dumps(manifest, separators=(",", ":")).encode()

    def _write_small(self, plan: BallPlan, version: str, directory: Path) -> bytes:
        """Prepare the version directory, write a small ball's chunks and return its manifest, in one
        go (one thread hop instead of two; the commit stays a separate hop, so a cancelled write
        never commits)."""
        self._prepare(directory)
        crc_lists = [
            _write_pieces([_Piece(directory / chunk.key, chunk.data, 0, chunk.size, None)])
            for chunk in plan.chunks
        ]
        return self._manifest(plan, version, crc_lists, [None] * len(plan.chunks))

    async def _put(self, plan: BallPlan) -> BallInfo:
        self._check_open()
        small = plan.size <= SMALL_PUT_BYTES and all(c.size <= BLOCK_SIZE for c in plan.chunks)
        if small and not self.sha256 and not self.fsync:
            return await self._put_small(plan)
        version = _new_version()
        directory = self._version_dir(plan.ball_id, version)
        job = _Job(self._pool)
        committed = threading.Event()
        try:
            await job.submit(self._prepare, directory)
            layout = [(chunk, _blocks(chunk.size, BLOCK_SIZE)) for chunk in plan.chunks]
            pieces = [
                _Piece(directory / chunk.key, chunk.data[start:stop], start, chunk.size, None)
                for chunk, blocks in layout
                for start, stop in blocks
            ]
            groups = _group(pieces, BLOCK_SIZE)
            writes = [job.submit(_write_pieces, group) for group in groups]
            hashes = self._hash_jobs(job, plan)
            crc_groups = await asyncio.gather(*writes)
            sums = await asyncio.gather(*hashes) if hashes else []
            crcs = iter([crc for group in crc_groups for crc in group])
            chunk_sums: list[str | None] = [None] * len(plan.chunks)
            full: str | None = None
            if self.sha256:
                full = sums[-1]
                chunk_sums = [full] if len(plan.chunks) == 1 else list(sums[:-1])
            plan.set_full_checksum(full)
            crc_lists = [[next(crcs) for _ in blocks] for _, blocks in layout]
            body = self._manifest(plan, version, crc_lists, chunk_sums)
            if self.fsync:
                await asyncio.gather(*(job.submit(_fsync_path, directory / c.key) for c in plan.chunks))
            await job.submit(self._commit, plan.ball_id, version, directory, body, committed)
        except BaseException as error:
            await job.abort(
                lambda: None if committed.is_set() else shutil.rmtree(directory, ignore_errors=True)
            )
            if isinstance(error, OSError):
                raise _unavailable(error) from error
            raise
        return replace(plan.info(full), etag=version)

    async def _put_small(self, plan: BallPlan) -> BallInfo:
        """The same on-disk result as the general path for a ball of at most SMALL_PUT_BYTES (one
        CRC block per chunk) in two thread hops instead of three: a k-means step writes tiny balls."""
        version = _new_version()
        directory = self._version_dir(plan.ball_id, version)
        plan.set_full_checksum(None)
        job = _Job(self._pool)
        committed = threading.Event()
        try:
            body = await job.submit(self._write_small, plan, version, directory)
            await job.submit(self._commit, plan.ball_id, version, directory, body, committed)
        except BaseException as error:
            await job.abort(
                lambda: None if committed.is_set() else shutil.rmtree(directory, ignore_errors=True)
            )
            if isinstance(error, OSError):
                raise _unavailable(error) from error
            raise
        return replace(plan.info(None), etag=version)

    def _hash_jobs(self, job: _Job, plan: BallPlan) -> list[asyncio.Future[str]]:
        if not self.sha256:
            return []
        views = [chunk.data for chunk in plan.chunks]
        per_chunk = [job.submit(_sha256, [view]) for view in views] if len(views) > 1 else []
        return [*per_chunk, job.submit(_sha256, views)]

    def _prepare(self, directory: Path) -> None:
        (self.directory / ".tmp").mkdir(parents=True, exist_ok=True)
        directory.mkdir()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | _O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _commit(
        self, ball_id: str, version: str, directory: Path, manifest: bytes, committed: threading.Event
    ) -> None:
        manifest_path = directory / MANIFEST
        with open(manifest_path, "wb") as handle:
            handle.write(manifest)
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())
        if self.fsync:
            _fsync_path(directory)
        temp = self.directory / ".tmp" / f"{ball_id}.{version}.ref"
        with open(temp, "w", encoding="ascii") as handle:
            handle.write(version + "\n")
            if self.fsync:
                handle.flush()
                os.fsync(handle.fileno())
        ref = self._ref(ball_id)
        with self._locked():
            old = self._read_ref_or_none(ball_id)
            os.replace(temp, ref)
            committed.set()
        if self.fsync:
            _fsync_path(self.directory)
        if old is not None and old != version:
            # The replaced version is removed in the background: the put is already complete, and a
            # reader still on the old version simply restarts on the new one when its files vanish.
            try:
                self._pool.submit(shutil.rmtree, self._version_dir(ball_id, old), True)
            except RuntimeError:  # the pool is shutting down: do it now
                shutil.rmtree(self._version_dir(ball_id, old), ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def _read_ref(self, ball_id: str) -> str | None:
        try:
            with open(self._ref(ball_id), "rb") as handle:
                text = handle.read(128).decode("ascii", "replace").strip()
        except FileNotFoundError:
            return None
        if not _VERSION_RE.fullmatch(text):
            raise CorruptObject(f"{ball_id}: unreadable version pointer {text!r:.40}")
        return text

    def _read_ref_or_none(self, ball_id: str) -> str | None:
        """Like ``_read_ref`` but a damaged pointer counts as absent, so it can be replaced or deleted."""
        try:
            return self._read_ref(ball_id)
        except CorruptObject as error:
            log.warning("replacing a damaged pointer: %s", error)
            return None

    def _load(self, ball_id: str) -> _Stored:
        """Resolve the pointer and parse the manifest (retrying if a writer swaps it meanwhile)."""
        for _ in range(MAX_RESTARTS):
            version = self._read_ref(ball_id)
            if version is None:
                raise NotFound(f"no object {ball_id!r} in bucket {self.bucket!r}")
            directory = self._version_dir(ball_id, version)
            try:
                raw = self._read_manifest(ball_id, directory / MANIFEST)
            except FileNotFoundError:
                if self._read_ref(ball_id) == version:
                    raise CorruptObject(f"{ball_id}: manifest of version {version} is missing") from None
                continue  # replaced between the two reads
            return self._parse_manifest(ball_id, version, directory, raw)
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    def _read_manifest(self, ball_id: str, path: Path) -> bytes:
        """The manifest's bytes; an absurdly large one (over the object budget, and over 16 MiB,
        which is ~40k chunk records) is refused without reading it."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > max(self.max_object_bytes, 16 * 1024 * 1024):
                raise CorruptObject(f"{ball_id}: a {size}-byte manifest is larger than MAX_OBJECT_BYTES")
            return handle.read()

    def _parse_manifest(self, ball_id: str, version: str, directory: Path, raw: bytes) -> _Stored:
        try:
            doc = json.loads(raw)
        except ValueError:
            raise CorruptObject(f"{ball_id}: manifest is not valid JSON") from None
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
        metas, crcs = [], []
        for record in chunks:
            meta, crc = self._parse_chunk(ball_id, record, block_size)
            metas.append(meta)
            crcs.append(crc)
        layout = read_layout(ball_id, metas)
        check_budget(layout, self.max_object_bytes)  # before any read allocates its output
        return _Stored(version, directory, layout, tuple(crcs), block_size)

    @staticmethod
    def _parse_chunk(ball_id: str, record: Any, block_size: int) -> tuple[ChunkMeta, tuple[int, ...]]:
        if not isinstance(record, dict):
            raise CorruptObject(f"{ball_id}: chunk record is not an object")
        key, size, tags, crc = record.get("key"), record.get("size"), record.get("tags"), record.get("crc32")
        if not isinstance(key, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CorruptObject(f"{ball_id}: chunk record without key/size")
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise CorruptObject(f"{key}: tags must map str to str")
        blocks = len(_blocks(size, block_size))
        if (
            not isinstance(crc, list)
            or len(crc) != blocks
            or not all(isinstance(c, int) and 0 <= c < 1 << 32 for c in crc)
        ):
            raise CorruptObject(f"{key}: manifest needs {blocks} CRC32 values")
        checksum = normalise_checksum(record.get("checksum"))
        return ChunkMeta(key=key, size=size, checksum=checksum, tags=tags), tuple(crc)

    async def _read_into(self, stored: _Stored, flat: memoryview) -> bool:
        """Fill ``flat`` from the chunk files; False when the version vanished (caller retries)."""
        layout = stored.layout
        pieces = []
        for meta, offset, crcs in zip(layout.chunks, layout.offsets, stored.crcs, strict=True):
            path = stored.directory / meta.key
            for (start, stop), crc in zip(_blocks(meta.size, stored.block_size), crcs, strict=True):
                pieces.append(_Piece(path, flat[offset + start : offset + stop], start, meta.size, crc))
        job = _Job(self._pool)
        try:
            await asyncio.gather(
                *(job.submit(_read_pieces, g, self.verify) for g in _group(pieces, BLOCK_SIZE))
            )
        except _VersionGone:
            await job.abort(lambda: None)
            current = await self._run(self._read_ref, layout.ball_id)
            if current == stored.version:
                raise CorruptObject(
                    f"{layout.ball_id}: a chunk file of the current version is missing"
                ) from None
            return False
        except BaseException as error:
            await job.abort(lambda: None)
            if isinstance(error, OSError):
                raise _unavailable(error) from error
            raise
        return True

    @staticmethod
    def _unpack(layout: Layout, buffer: bytearray) -> list[bytes]:
        view, items = memoryview(buffer), []
        for meta, offset in zip(layout.chunks, layout.offsets, strict=True):
            items.extend(unpack_bytes_list(meta.key, view[offset : offset + meta.size], meta.tags))
        return items

    # ------------------------------------------------------------------ delete, list, health
    def _delete(self, ball_id: str) -> int:
        if not self.directory.is_dir():
            return 0
        with self._locked():
            if not self._ref(ball_id).exists():
                return 0
            version = self._read_ref_or_none(ball_id)
            os.unlink(self._ref(ball_id))
        if version is None:  # a damaged pointer: its version directory is left to sweep()
            return 0
        if self.fsync:
            _fsync_path(self.directory)
        directory = self._version_dir(ball_id, version)
        try:
            removed = sum(1 for entry in os.scandir(directory) if entry.name != MANIFEST)
        except FileNotFoundError:
            removed = 0
        shutil.rmtree(directory, ignore_errors=True)
        return removed

    def _list(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return sorted(
            name[: -len(".ref")] for name in names if name.endswith(".ref") and not name.startswith(".")
        )

    def _writable(self) -> bool:
        self.directory.mkdir(parents=True, exist_ok=True)
        return os.access(self.directory, os.W_OK | os.X_OK)

    def _sweep(self, min_age_s: float) -> int:
        removed, now = 0, time.time()
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return 0
        temps = self.directory / ".tmp"
        candidates = [
            (entry.path, entry.name) for entry in entries if "." in entry.name[1:] and entry.is_dir()
        ]
        if temps.is_dir():
            candidates += [(entry.path, None) for entry in os.scandir(temps)]
        for path, name in candidates:
            try:
                if now - os.stat(path).st_mtime < min_age_s:
                    continue
                if name is not None:
                    ball_id, _, version = name.rpartition(".")
                    if not _VERSION_RE.fullmatch(version) or self._read_ref(ball_id) == version:
                        continue
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except (OSError, CorruptObject) as error:
                if getattr(error, "errno", None) != errno.ENOENT:
                    log.warning("sweep could not remove %s: %s", path, error)
        return removed
