"""The embedded backend: one directory per bucket, one immutable version directory per write.

On-disk layout (``<root>`` is ``STORAGE_PATH``, default ``<SINK_PATH>/css``)::

    <root>/<bucket>/
        .lock                      flock()ed only around the commit rename
        .tmp/                      temporary pointer files
        <ball>.ref                 the commit point: the current version's name, then (second line)
                                   the version it replaced, kept until the next commit
        <ball>.<version>/          one write, never modified after its commit
            manifest.json          the chunk records (key, size, block hashes per 8 MiB, MictlanX tags)
            <ball>_0 .. <ball>_<n-1>   raw chunk bytes, exactly the MictlanX payloads

Files are created 0600 and directories 0700: balls hold ciphertexts and model state.

Why it is safe: a writer fills a fresh version directory nobody references, then atomically
replaces ``<ball>.ref`` (write temp file, ``os.replace``). Readers resolve the pointer first, so they
see the old version or the new one, never a mix, and never half a write; a crash before the
rename leaves the previous version untouched (the orphan directory is removed by :meth:`sweep`).
The version a commit replaces stays until the next commit (which removes it in the background): a
reader still on it finishes, and a reader that finds the current version incomplete (files missing
or short, as a write that never reached the disk leaves them after a power loss) reads it instead.
A reader whose version vanishes re-resolves the pointer and starts over.

Durability: ``fsync=True`` (``STORAGE_FSYNC``) makes a returned put survive a power loss: chunk
files and manifest are fsynced, then the version directory, then the new pointer, which is renamed
into place and made durable by fsyncing the bucket directory. Off by default; docs/storage.md 4.1
says exactly what survives either way.

Why it is fast: chunks are written and read by a dedicated thread pool with ``pwrite``/``preadv``
straight from/into the caller's array (no intermediate copies, one preallocated output array), and
integrity uses a hash per 8 MiB block (XXH3, plus CRC32 for readers that predate it), checked in
512 KiB pieces while they are hot in the cache and in parallel across blocks. SHA-256 (the MictlanX
``checksum``/``full_checksum``) runs at ~2 GB/s on one core and would dominate page-cache speeds, so
it is opt-in (``sha256=True``).

The on-disk format (manifests, pointers, block hashes) is ``local_format.py``, the pointer and
directory operations (commit, delete, list, sweep) are ``local_bucket.py``, and file modes, durable
writes and thread-pool jobs are ``local_files.py``; this module is the store and its chunk I/O.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import logging
import os
import shutil
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from worker.errors import CorruptObject, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage.base import Allocator, BallInfo, allocate_output, settings_options
from worker.storage.codec import DEFAULT_MAX_OBJECT_BYTES, BallPlan, Layout, decode_bytes_list
from worker.storage.local_bucket import BucketFiles
from worker.storage.local_files import FILE_MODE, O_CLOEXEC, Job, fsync_path, open_regular, unavailable
from worker.storage.local_format import (
    FORMAT,
    FORMAT_VERSION,
    MANIFEST,
    VERIFIED_HASH,
    WRITTEN_HASHES,
    BlockHash,
    Incomplete,
    Piece,
    Refs,
    Stored,
    VersionGone,
    blocks,
    build_manifest,
    group,
    new_version,
    parse_manifest,
    read_manifest,
)
from worker.storage.names import check_ball_id, check_bucket_id
from worker.storage.planned import PlannedStore

log = logging.getLogger(__name__)
T = TypeVar("T")

BLOCK_SIZE = 8 * 1024 * 1024  # unit of one block hash and of one unit of parallel work
PIECE_SIZE = 512 * 1024  # copy + checksum granularity (stays in the CPU cache)
SMALL_PUT_BYTES = 1024 * 1024  # balls up to this size are prepared and written in one thread hop
#: The largest manifest a read parses (~35k chunk records); a put whose manifest would be larger is
#: refused. Fixed, not MAX_OBJECT_BYTES: JSON costs several times its size in Python objects.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
MAX_RESTARTS = 8  # re-resolutions of the pointer while writers keep replacing the ball
#: The last parsed manifest of each ball is kept with its version: a version never changes after
#: its commit, so ``info`` and reads of a version seen before cost one pointer read instead of a
#: manifest read and parse (a secure k-means round looks up the same dozen balls every round). Only
#: small manifests (a few chunks, few tags: a one-chunk ndarray's is ~600 bytes) are kept, one per
#: ball, within a budget of raw manifest bytes; parsed, a manifest takes up to ~12x its raw size
#: (tag-heavy ones), so the cache stays under ~12 MiB.
MANIFEST_CACHE_ENTRY_BYTES = 4 * 1024
MANIFEST_CACHE_BUDGET_BYTES = 1 << 20


def _write_pieces(pieces: Sequence[Piece]) -> list[tuple[int, ...]]:
    """pwrite each piece, computing its block hashes (WRITTEN_HASHES) from the source while it is
    in cache; returns one tuple of hashes per piece."""
    results = []
    for piece in pieces:
        fd = os.open(piece.path, os.O_WRONLY | os.O_CREAT | O_CLOEXEC, FILE_MODE)
        try:
            hashes = [BlockHash(name) for name in WRITTEN_HASHES]
            position, view = 0, piece.buffer
            while position < len(view):
                part = view[position : position + PIECE_SIZE]
                for block_hash in hashes:
                    block_hash.update(part)
                written = 0
                while written < len(part):
                    written += os.pwrite(fd, part[written:], piece.offset + position + written)
                position += len(part)
            results.append(tuple(block_hash.value() for block_hash in hashes))
        finally:
            os.close(fd)
    return results


def _read_pieces(pieces: Sequence[Piece], verify: bool) -> None:
    """preadv each piece straight into its slice of the output, checking size and block hash."""
    for piece in pieces:
        try:
            fd = open_regular(piece.path)  # a planted symlink or FIFO is CorruptObject, never followed
        except FileNotFoundError:
            raise VersionGone(str(piece.path)) from None
        try:
            actual = os.fstat(fd).st_size
            if actual != piece.file_size:
                raise Incomplete(
                    f"{piece.path.name}: {actual} bytes on disk, manifest says {piece.file_size}"
                )
            block_hash = BlockHash(piece.hash) if verify else None
            position, view = 0, piece.buffer
            while position < len(view):
                part = view[position : position + PIECE_SIZE]
                got = os.preadv(fd, [part], piece.offset + position)
                if got <= 0:
                    raise CorruptObject(f"{piece.path.name}: short read at byte {piece.offset + position}")
                if block_hash is not None:
                    block_hash.update(part[:got])
                position += got
            if block_hash is not None and (value := block_hash.value()) != piece.check:
                raise CorruptObject(
                    f"{piece.path.name}: checksum mismatch in the block at byte {piece.offset} "
                    f"({piece.hash} {value:x}, manifest {piece.check:x})"
                )
        finally:
            os.close(fd)


def _sha256(views: Sequence[memoryview]) -> str:
    digest = hashlib.sha256()
    for view in views:
        for start in range(0, len(view), 4 * PIECE_SIZE):
            digest.update(view[start : start + 4 * PIECE_SIZE])
    return digest.hexdigest()


class LocalStore(PlannedStore, BucketFiles):
    """A bucket in a local directory (see the module docstring for layout and guarantees)."""

    backend = "local"

    @property
    def atomic_overwrite(self) -> bool:
        return True  # a commit renames the pointer over the old one

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
        # ball -> (raw manifest size, its parsed version), least recently used first
        self._manifests: OrderedDict[str, tuple[int, Stored]] = OrderedDict()
        self._manifest_bytes = 0
        self._manifests_lock = threading.Lock()  # loads run in several pool threads
        self._commit_lock = threading.Lock()

    @classmethod
    def from_settings(cls, settings: Settings, **options: Any) -> LocalStore:
        options = settings_options(
            settings, options, producer_id=settings.mictlanx_client_id, fsync=settings.storage_fsync
        )
        return cls(settings.storage_path, settings.mictlanx_bucket_id, **options)

    def _check_open(self) -> None:
        if self._closed:
            raise StorageUnavailable("local store is closed")

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        self._check_open()
        try:
            return await asyncio.wrap_future(self._pool.submit(fn, *args))
        except OSError as error:
            raise unavailable(error) from error

    # ------------------------------------------------------------------ public API
    async def get_ndarray(self, ball_id: str) -> np.ndarray:
        return (await self.fetch_ndarray(ball_id))[0]

    async def fetch_ndarray(
        self, ball_id: str, *, allocate: Allocator | None = None
    ) -> tuple[np.ndarray, BallInfo]:
        """Read an ndarray; the info (``etag`` = version directory) names exactly the version read."""
        check_ball_id(ball_id)

        async def prepare(layout: Layout) -> tuple[np.ndarray, memoryview]:
            layout.require_array()
            out, flat = await allocate_output(layout, allocate)
            return out, memoryview(flat)

        stored, out = await self._read(ball_id, prepare)
        return out, replace(stored.layout.info(), etag=stored.version)

    async def get_bytes_list(self, ball_id: str) -> list[bytes]:
        check_ball_id(ball_id)

        async def prepare(layout: Layout) -> tuple[bytearray, memoryview]:
            layout.require_bytes_list()
            buffer = bytearray(layout.size)
            return buffer, memoryview(buffer)

        stored, buffer = await self._read(ball_id, prepare)
        return await self._run(decode_bytes_list, stored.layout, memoryview(buffer), self.max_object_bytes)

    async def info(self, ball_id: str) -> BallInfo:
        check_ball_id(ball_id)
        stored = await self._current(ball_id)
        return replace(stored.layout.info(), etag=stored.version)

    async def exists(self, ball_id: str) -> bool:
        check_ball_id(ball_id)
        self._check_open()
        # One stat of the pointer file, on the loop: a thread hand-off costs ten times as much, and a
        # secure k-means step asks for every key it writes.
        try:
            return self._ref(ball_id).is_file()
        except OSError as error:
            raise unavailable(error) from error

    async def _current(self, ball_id: str) -> Stored:
        """The ball's current version. When its manifest is kept, found on the loop by reading the
        pointer alone (under 256 bytes; a planted FIFO or symlink is refused without blocking), since
        a thread hand-off costs ten times that; otherwise loaded in a thread (which also reports
        absence)."""
        self._check_open()
        with self._manifests_lock:
            kept = ball_id in self._manifests
        if kept:
            try:
                refs = self._read_refs(ball_id)
            except OSError as error:
                raise unavailable(error) from error
            stored = self._cached(ball_id, refs, refs[0]) if refs is not None else None
            if stored is not None:
                return stored
        return await self._run(self._load, ball_id)

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
            try:
                await asyncio.to_thread(self._pool.shutdown, True)
            finally:
                self._close_lock()

    # ------------------------------------------------------------------ writing
    def _manifest(
        self,
        plan: BallPlan,
        version: str,
        block_hashes: Sequence[Sequence[tuple[int, ...]]],
        chunk_sums: Sequence[str | None],
    ) -> bytes:
        """The manifest of ``plan`` (see :func:`~worker.storage.local_format.build_manifest`)."""
        return build_manifest(
            plan,
            bucket=self.bucket,
            producer_id=self.producer_id,
            version=version,
            block_size=BLOCK_SIZE,
            block_hashes=block_hashes,
            chunk_sums=chunk_sums,
            max_bytes=MAX_MANIFEST_BYTES,
        )

    def _write_small(self, plan: BallPlan, version: str, directory: Path) -> bytes:
        """Prepare the version directory, write a small ball's chunks and return its manifest (the
        thread-side half of a small put: :meth:`_write_version` commits it in the same hop)."""
        self._prepare(directory)
        block_hashes = [
            _write_pieces([Piece(directory / chunk.key, chunk.data, 0, chunk.size, None)])
            for chunk in plan.chunks
        ]
        return self._manifest(plan, version, block_hashes, [None] * len(plan.chunks))

    async def _put(self, plan: BallPlan) -> BallInfo:
        self._check_open()
        small = plan.size <= SMALL_PUT_BYTES and all(c.size <= BLOCK_SIZE for c in plan.chunks)
        if small and not self.sha256 and not self.fsync:
            # The same on-disk result as the general path for a ball of at most SMALL_PUT_BYTES (one
            # block per chunk) in one thread hop instead of three: a k-means step writes tiny balls.
            plan.set_full_checksum(None)
            version, _ = await self._write_version(plan, None)
            return replace(plan.info(None), etag=version)
        version, full = await self._write_version(plan, self._fill)
        return replace(plan.info(full), etag=version)

    async def _write_version(
        self, plan: BallPlan, fill: Callable[[BallPlan, Job, str, Path], Awaitable[tuple[bytes, T]]] | None
    ) -> tuple[str, T | None]:
        """Write ``plan`` as a new version and commit it; returns the version and what ``fill`` returned.

        ``fill(plan, job, version, directory)`` creates and fills the version directory and returns
        the manifest; None writes a small ball (:meth:`_write_small`) and commits it in the same
        thread hop (a put costs one hand-off instead of two). On any failure or cancellation the
        job's threads are waited for and the directory is removed unless the commit happened; disk
        errors become ``StorageUnavailable``. A cancellation that reaches this coroutine before the
        thread checks ``abandoned`` (just before committing) commits nothing. One delivered later
        finds the version committed and still raises: the caller sees CancelledError for a put that
        landed, as when a two-hop commit had already begun. The thread cannot see a cancel the loop has
        not delivered yet, so the one-hop path's window is the loop's delay in delivering it.
        """
        version = new_version()
        directory = self._version_dir(plan.ball_id, version)
        job = Job(self._pool)
        committed, abandoned = threading.Event(), threading.Event()
        result: T | None = None

        def write_and_commit() -> None:
            body = self._write_small(plan, version, directory)
            if not abandoned.is_set():
                self._commit(plan.ball_id, version, directory, body, committed)

        try:
            if fill is None:
                await job.submit(write_and_commit)
            else:
                body, result = await fill(plan, job, version, directory)
                await job.submit(self._commit, plan.ball_id, version, directory, body, committed)
        except BaseException as error:
            abandoned.set()
            await job.abort(
                lambda: None if committed.is_set() else shutil.rmtree(directory, ignore_errors=True)
            )
            if isinstance(error, OSError):
                raise unavailable(error) from error
            raise
        return version, result

    async def _fill(
        self, plan: BallPlan, job: Job, version: str, directory: Path
    ) -> tuple[bytes, str | None]:
        """Every chunk in BLOCK_SIZE blocks written in parallel (hashed as they go), the SHA-256s when
        asked, the manifest, and (fsync) the chunk files synced. Returns the manifest and full SHA-256."""
        await job.submit(self._prepare, directory)
        layout = [(chunk, blocks(chunk.size, BLOCK_SIZE)) for chunk in plan.chunks]
        pieces = [
            Piece(directory / chunk.key, chunk.data[start:stop], start, chunk.size, None)
            for chunk, chunk_blocks in layout
            for start, stop in chunk_blocks
        ]
        writes = [job.submit(_write_pieces, batch) for batch in group(pieces, BLOCK_SIZE)]
        hashes = self._hash_jobs(job, plan)
        hash_groups = await asyncio.gather(*writes)
        sums = await asyncio.gather(*hashes) if hashes else []
        block_values = iter([values for written in hash_groups for values in written])
        chunk_sums: list[str | None] = [None] * len(plan.chunks)
        full: str | None = None
        if self.sha256:
            full = sums[-1]
            chunk_sums = [full] if len(plan.chunks) == 1 else list(sums[:-1])
        plan.set_full_checksum(full)
        block_hashes = [[next(block_values) for _ in chunk_blocks] for _, chunk_blocks in layout]
        body = self._manifest(plan, version, block_hashes, chunk_sums)
        if self.fsync:
            await asyncio.gather(*(job.submit(fsync_path, directory / c.key) for c in plan.chunks))
        return body, full

    def _hash_jobs(self, job: Job, plan: BallPlan) -> list[asyncio.Future[str]]:
        if not self.sha256:
            return []
        views = [chunk.data for chunk in plan.chunks]
        per_chunk = [job.submit(_sha256, [view]) for view in views] if len(views) > 1 else []
        return [*per_chunk, job.submit(_sha256, views)]

    # ------------------------------------------------------------------ reading
    def _load(self, ball_id: str) -> Stored:
        """Resolve the pointer and parse the manifest (retrying if a writer swaps it meanwhile); when
        the current version's manifest is missing or cut short, the previous version is loaded."""
        for _ in range(MAX_RESTARTS):
            refs = self._read_refs(ball_id)
            if refs is None:
                raise NotFound(f"no object {ball_id!r} in bucket {self.bucket!r}")
            try:
                return self._load_version(ball_id, refs, refs[0])
            except Incomplete as error:
                if self._read_refs(ball_id) != refs:
                    continue  # replaced between the two reads
                return self._load_fallback(ball_id, refs, error)
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    def _load_version(self, ball_id: str, refs: Refs, version: str) -> Stored:
        """The committed ``version`` of ``ball_id``: from the manifest cache, else parsed from disk.

        A cached manifest is the one read when the version was first seen; its block hashes still
        check every byte read, so a manifest replaced on disk afterwards changes nothing for this
        store (a missing or short chunk file is still ``Incomplete``).
        """
        stored = self._cached(ball_id, refs, version)
        if stored is not None:
            return stored
        directory = self._version_dir(ball_id, version)
        try:
            raw = read_manifest(ball_id, directory / MANIFEST, MAX_MANIFEST_BYTES)
        except FileNotFoundError:
            raise Incomplete(f"{ball_id}: the manifest of version {version} is missing") from None
        stored = parse_manifest(ball_id, refs, version, directory, raw, self.max_object_bytes)
        if len(raw) <= MANIFEST_CACHE_ENTRY_BYTES:
            self._keep_manifest(ball_id, len(raw), stored)
        return stored

    def _cached(self, ball_id: str, refs: Refs, version: str) -> Stored | None:
        """``version`` of ``ball_id`` from the manifest cache (then the most recently used), else None."""
        with self._manifests_lock:
            cached = self._manifests.get(ball_id)
            if cached is None or cached[1].version != version:
                return None
            self._manifests.move_to_end(ball_id)
            return replace(cached[1], refs=refs)

    def _keep_manifest(self, ball_id: str, size: int, stored: Stored) -> None:
        """Keep ``stored`` as ``ball_id``'s manifest (replacing the one of an older version), evicting
        the least recently used balls beyond the budget."""
        with self._manifests_lock:
            old = self._manifests.pop(ball_id, None)
            if old is not None:
                self._manifest_bytes -= old[0]
            self._manifests[ball_id] = (size, stored)
            self._manifest_bytes += size
            while self._manifest_bytes > MANIFEST_CACHE_BUDGET_BYTES:
                _, (evicted, _) = self._manifests.popitem(last=False)
                self._manifest_bytes -= evicted

    def _load_fallback(self, ball_id: str, refs: Refs, error: Incomplete) -> Stored:
        """The previous version, when the current one is incomplete; else ``CorruptObject``."""
        previous = refs[1]
        if previous is None:
            raise CorruptObject(f"{error} (and no previous version is kept)") from None
        try:
            stored = self._load_version(ball_id, refs, previous)
        except Incomplete as again:
            raise CorruptObject(f"{error}; the previous version is incomplete too: {again}") from None
        log.warning("%s; reading the previous version %s instead (a write lost in a crash?)", error, previous)
        return replace(stored, fallback=True)

    async def _read(
        self, ball_id: str, prepare: Callable[[Layout], Awaitable[tuple[T, memoryview]]]
    ) -> tuple[Stored, T]:
        """Load the ball and fill the output ``prepare`` makes for its layout, restarting when a
        writer replaces it meanwhile and falling back to the previous version when the current one
        turns out incomplete. Returns the version read and the output."""
        for _ in range(MAX_RESTARTS):
            stored = await self._current(ball_id)
            out, flat = await prepare(stored.layout)
            try:
                if await self._read_into(stored, flat):
                    return stored, out
                continue
            except Incomplete as error:
                if stored.fallback:
                    raise CorruptObject(f"{error} (in the previous version, read instead)") from None
                del out, flat
                stored = await self._run(self._load_fallback, ball_id, stored.refs, error)
            out, flat = await prepare(stored.layout)
            try:
                if await self._read_into(stored, flat):
                    return stored, out
            except Incomplete as again:
                raise CorruptObject(f"{ball_id}: both kept versions are incomplete: {again}") from None
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    async def _read_into(self, stored: Stored, flat: memoryview) -> bool:
        """Fill ``flat`` from the chunk files; False when the version vanished (caller retries).

        A missing or wrongly sized chunk file while the pointer is unchanged is ``Incomplete``.
        """
        layout = stored.layout
        pieces = []
        for meta, offset, checks in zip(layout.chunks, layout.offsets, stored.checks, strict=True):
            path = stored.directory / meta.key
            for (start, stop), check in zip(blocks(meta.size, stored.block_size), checks, strict=True):
                view = flat[offset + start : offset + stop]
                pieces.append(Piece(path, view, start, meta.size, check, stored.hash))
        job = Job(self._pool)
        try:
            await asyncio.gather(
                *(job.submit(_read_pieces, g, self.verify) for g in group(pieces, BLOCK_SIZE))
            )
        except (VersionGone, Incomplete) as error:
            await job.abort(lambda: None)
            if await self._run(self._read_refs, layout.ball_id) != stored.refs:
                return False  # a writer replaced (or deleted) the ball meanwhile: start over
            if isinstance(error, Incomplete):
                raise
            raise Incomplete(
                f"{layout.ball_id}: chunk file {Path(str(error)).name} of version {stored.version} is missing"
            ) from None
        except BaseException as error:
            await job.abort(lambda: None)
            if isinstance(error, OSError):
                raise unavailable(error) from error
            raise
        return True


__all__ = [
    "BLOCK_SIZE",
    "FORMAT",
    "FORMAT_VERSION",
    "MANIFEST",
    "MAX_MANIFEST_BYTES",
    "PIECE_SIZE",
    "VERIFIED_HASH",
    "WRITTEN_HASHES",
    "LocalStore",
]
