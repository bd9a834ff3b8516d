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
from collections.abc import Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

try:
    import xxhash
except ImportError:  # pragma: no cover - a dependency; without it blocks are hashed with CRC32 only
    xxhash = None

from worker.errors import BadRequest, CorruptObject, NotFound, StorageUnavailable
from worker.settings import Settings
from worker.storage.base import Allocator, BallInfo, allocate_output
from worker.storage.codec import (
    DEFAULT_MAX_OBJECT_BYTES,
    MAX_CHUNKS,
    BallPlan,
    ChunkMeta,
    Layout,
    check_budget,
    decode_bytes_list,
    normalise_checksum,
    read_layout,
)
from worker.storage.names import check_ball_id, check_bucket_id
from worker.storage.planned import PlannedStore

log = logging.getLogger(__name__)
T = TypeVar("T")

FORMAT = "rory-css-local"
FORMAT_VERSION = 1
BLOCK_SIZE = 8 * 1024 * 1024  # unit of one block hash and of one unit of parallel work
PIECE_SIZE = 512 * 1024  # copy + checksum granularity (stays in the CPU cache)
SMALL_PUT_BYTES = 1024 * 1024  # balls up to this size are prepared and written in one thread hop
MANIFEST = "manifest.json"
#: The largest manifest a read parses (~35k chunk records); a put whose manifest would be larger is
#: refused. Fixed, not MAX_OBJECT_BYTES: JSON costs several times its size in Python objects.
MAX_MANIFEST_BYTES = 16 * 1024 * 1024
#: Every file and directory the store creates is private to the worker's user.
FILE_MODE = 0o600
DIR_MODE = 0o700
MAX_RESTARTS = 8  # re-resolutions of the pointer while writers keep replacing the ball
_VERSION_RE = re.compile(r"v[0-9a-f]{8,48}")
#: Block hashes a manifest can carry (its ``block_hashes`` tag names them; absent: CRC32 only, as
#: written before XXH3). Writers record both: XXH3 (~20 GB/s) is what this version verifies, and the
#: CRC32 list keeps the balls readable by workers that predate it. Value range of each.
_HASH_BITS = {"crc32": 32, "xxh3_64": 64}
_HASH_FIELD = {"crc32": "crc32", "xxh3_64": "xxh3"}
WRITTEN_HASHES: tuple[str, ...] = ("crc32", "xxh3_64") if xxhash is not None else ("crc32",)
VERIFIED_HASH = "xxh3_64" if xxhash is not None else "crc32"
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class _VersionGone(Exception):
    """A chunk file of the version being read vanished (a writer replaced or deleted the ball)."""


class _Incomplete(Exception):
    """A version lacks bytes its manifest promises (a file missing, empty or shorter): what a write
    that was not yet on disk when the power went looks like. Readers then try the previous version."""


#: The pointer file's content: the current version, and the version it replaced (kept until the next
#: commit) or None.
Refs = tuple[str, "str | None"]


@dataclass(frozen=True)
class _Stored:
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
class _Piece:
    """One block of one chunk file: where it is on disk and where its bytes go in memory."""

    path: Path
    buffer: memoryview
    offset: int
    file_size: int
    check: int | None  # the block's expected hash (reads)
    hash: str = "crc32"  # ... which one


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


def _make_dirs(path: Path) -> list[Path]:
    """``mkdir -p`` with mode 0700 for every directory it creates (``Path.mkdir(parents=True)`` gives
    the parents the default mode). Returns the directories it created, outermost first."""
    missing = []
    probe = path
    while not probe.is_dir() and probe.parent != probe:
        missing.append(probe)
        probe = probe.parent
    created = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, DIR_MODE)
        except FileExistsError:
            continue
        created.append(directory)
    return created


def _write_file(path: Path, data: bytes, fsync: bool) -> None:
    """Create ``path`` (mode 0600, must not exist), write ``data``, and fsync it when asked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class _BlockHash:
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


def _write_pieces(pieces: Sequence[_Piece]) -> list[tuple[int, ...]]:
    """pwrite each piece, computing its block hashes (WRITTEN_HASHES) from the source while it is
    in cache; returns one tuple of hashes per piece."""
    results = []
    for piece in pieces:
        fd = os.open(piece.path, os.O_WRONLY | os.O_CREAT | _O_CLOEXEC, FILE_MODE)
        try:
            hashes = [_BlockHash(name) for name in WRITTEN_HASHES]
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


def _read_pieces(pieces: Sequence[_Piece], verify: bool) -> None:
    """preadv each piece straight into its slice of the output, checking size and block hash."""
    for piece in pieces:
        try:
            fd = os.open(piece.path, os.O_RDONLY | _O_CLOEXEC)
        except FileNotFoundError:
            raise _VersionGone(str(piece.path)) from None
        try:
            actual = os.fstat(fd).st_size
            if actual != piece.file_size:
                raise _Incomplete(
                    f"{piece.path.name}: {actual} bytes on disk, manifest says {piece.file_size}"
                )
            block_hash = _BlockHash(piece.hash) if verify else None
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
        options.setdefault("fsync", settings.storage_fsync)
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
        block_hashes: Sequence[Sequence[tuple[int, ...]]],
        chunk_sums: Sequence[str | None],
    ) -> bytes:
        """The manifest; ``block_hashes[i][b]`` holds block ``b`` of chunk ``i``'s WRITTEN_HASHES."""
        manifest = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "bucket_id": self.bucket,
            "ball_id": plan.ball_id,
            "version": version,
            "created_at_ms": time.time_ns() // 1_000_000,
            "block_size": BLOCK_SIZE,
            "block_hashes": list(WRITTEN_HASHES),
            "chunks": [
                {
                    "key": chunk.key,
                    "size": chunk.size,
                    "checksum": chunk_sums[i],
                    **{
                        _HASH_FIELD[name]: [values[number] for values in block_hashes[i]]
                        for number, name in enumerate(WRITTEN_HASHES)
                    },
                    "tags": chunk.tags,
                    "content_type": "application/octet-stream",
                    "producer_id": self.producer_id,
                }
                for i, chunk in enumerate(plan.chunks)
            ],
        }
        body = json.dumps(manifest, separators=(",", ":")).encode()
        if len(body) > MAX_MANIFEST_BYTES:
            raise BadRequest(
                f"{plan.ball_id}: {len(plan.chunks)} chunks need a {len(body)}-byte manifest, over the "
                f"local store's {MAX_MANIFEST_BYTES}; use fewer chunks"
            )
        return body

    def _write_small(self, plan: BallPlan, version: str, directory: Path) -> bytes:
        """Prepare the version directory, write a small ball's chunks and return its manifest, in one
        go (one thread hop instead of two; the commit stays a separate hop, so a cancelled write
        never commits)."""
        self._prepare(directory)
        block_hashes = [
            _write_pieces([_Piece(directory / chunk.key, chunk.data, 0, chunk.size, None)])
            for chunk in plan.chunks
        ]
        return self._manifest(plan, version, block_hashes, [None] * len(plan.chunks))

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
            hash_groups = await asyncio.gather(*writes)
            sums = await asyncio.gather(*hashes) if hashes else []
            block_values = iter([values for group in hash_groups for values in group])
            chunk_sums: list[str | None] = [None] * len(plan.chunks)
            full: str | None = None
            if self.sha256:
                full = sums[-1]
                chunk_sums = [full] if len(plan.chunks) == 1 else list(sums[:-1])
            plan.set_full_checksum(full)
            block_hashes = [[next(block_values) for _ in blocks] for _, blocks in layout]
            body = self._manifest(plan, version, block_hashes, chunk_sums)
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
        """Create the (empty) version directory, and the bucket and its ``.tmp`` when missing."""
        created = _make_dirs(self.directory / ".tmp")
        if self.fsync:  # a new directory's entry lives in its parent
            for new in created:
                _fsync_path(new.parent)
        os.mkdir(directory, DIR_MODE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | _O_CLOEXEC, FILE_MODE)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield
        finally:
            os.close(fd)  # closing the descriptor releases the lock

    def _write_ref(self, temp: Path, version: str, replaced: Refs | None) -> None:
        """The pointer's next content: the new version, then the one it replaces (kept one commit)."""
        lines = [version] if replaced is None or replaced[0] == version else [version, replaced[0]]
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        _write_file(temp, "".join(f"{line}\n" for line in lines).encode("ascii"), self.fsync)

    def _commit(
        self, ball_id: str, version: str, directory: Path, manifest: bytes, committed: threading.Event
    ) -> None:
        """Make ``version`` the ball's current version: the manifest, then (fsync: after syncing the
        version directory) the pointer is replaced by rename, and (fsync) the bucket directory synced.

        The version replaced stays on disk, named second in the pointer, until the next commit: a
        reader still on it finishes, and a reader that finds the new version incomplete (its bytes
        lost in a power loss without fsync) reads it instead. The one before it is removed.
        """
        _write_file(directory / MANIFEST, manifest, self.fsync)
        if self.fsync:
            _fsync_path(directory)  # the entries of the chunk files and the manifest
        temp = self.directory / ".tmp" / f"{ball_id}.{version}.ref"
        seen = self._read_refs_or_none(ball_id)
        self._write_ref(temp, version, seen)  # outside the lock: its fsync does not hold other writers
        ref = self._ref(ball_id)
        with self._locked():
            current = self._read_refs_or_none(ball_id)
            if current != seen:  # another writer of this ball committed meanwhile
                self._write_ref(temp, version, current)
            os.replace(temp, ref)
            committed.set()
        if self.fsync:
            _fsync_path(self.directory)
        if current is None:
            return
        for old in {current[1]} - {None, version, current[0]}:
            # Removed in the background: the put is already complete, and a reader still on that
            # version simply restarts on the current one when its files vanish.
            path = self._version_dir(ball_id, old)  # type: ignore[arg-type]
            try:
                self._pool.submit(shutil.rmtree, path, True)
            except RuntimeError:  # the pool is shutting down: do it now
                shutil.rmtree(path, ignore_errors=True)

    # ------------------------------------------------------------------ reading
    def _read_refs(self, ball_id: str) -> Refs | None:
        """The pointer: (current version, previous version or None); None when the ball is absent."""
        try:
            with open(self._ref(ball_id), "rb") as handle:
                text = handle.read(256).decode("ascii", "replace")
        except FileNotFoundError:
            return None
        names = text.split()
        if not 1 <= len(names) <= 2 or not all(_VERSION_RE.fullmatch(name) for name in names):
            raise CorruptObject(f"{ball_id}: unreadable version pointer {text.strip()!r:.60}")
        previous = names[1] if len(names) == 2 and names[1] != names[0] else None
        return names[0], previous

    def _read_ref(self, ball_id: str) -> str | None:
        refs = self._read_refs(ball_id)
        return refs[0] if refs is not None else None

    def _read_refs_or_none(self, ball_id: str) -> Refs | None:
        """Like ``_read_refs`` but a damaged pointer counts as absent, so it can be replaced or deleted."""
        try:
            return self._read_refs(ball_id)
        except CorruptObject as error:
            log.warning("replacing a damaged pointer: %s", error)
            return None

    def _load(self, ball_id: str) -> _Stored:
        """Resolve the pointer and parse the manifest (retrying if a writer swaps it meanwhile); when
        the current version's manifest is missing or cut short, the previous version is loaded."""
        for _ in range(MAX_RESTARTS):
            refs = self._read_refs(ball_id)
            if refs is None:
                raise NotFound(f"no object {ball_id!r} in bucket {self.bucket!r}")
            try:
                return self._load_version(ball_id, refs, refs[0])
            except _Incomplete as error:
                if self._read_refs(ball_id) != refs:
                    continue  # replaced between the two reads
                return self._load_fallback(ball_id, refs, error)
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    def _load_version(self, ball_id: str, refs: Refs, version: str) -> _Stored:
        directory = self._version_dir(ball_id, version)
        try:
            raw = self._read_manifest(ball_id, directory / MANIFEST)
        except FileNotFoundError:
            raise _Incomplete(f"{ball_id}: the manifest of version {version} is missing") from None
        return self._parse_manifest(ball_id, refs, version, directory, raw)

    def _load_fallback(self, ball_id: str, refs: Refs, error: _Incomplete) -> _Stored:
        """The previous version, when the current one is incomplete; else ``CorruptObject``."""
        previous = refs[1]
        if previous is None:
            raise CorruptObject(f"{error} (and no previous version is kept)") from None
        try:
            stored = self._load_version(ball_id, refs, previous)
        except _Incomplete as again:
            raise CorruptObject(f"{error}; the previous version is incomplete too: {again}") from None
        log.warning("%s; reading the previous version %s instead (a write lost in a crash?)", error, previous)
        return replace(stored, fallback=True)

    def _read_manifest(self, ball_id: str, path: Path) -> bytes:
        """The manifest's bytes; one over MAX_MANIFEST_BYTES is refused without reading it, and an
        empty one (a write cut short by a power loss) counts as incomplete."""
        with open(path, "rb") as handle:
            size = os.fstat(handle.fileno()).st_size
            if size > MAX_MANIFEST_BYTES:
                raise CorruptObject(f"{ball_id}: a {size}-byte manifest (the limit is {MAX_MANIFEST_BYTES})")
            raw = handle.read(MAX_MANIFEST_BYTES + 1)
        if len(raw) > MAX_MANIFEST_BYTES:
            raise CorruptObject(f"{ball_id}: the manifest grew past {MAX_MANIFEST_BYTES} bytes")
        if not raw:
            raise _Incomplete(f"{ball_id}: the manifest {path.parent.name}/{MANIFEST} is empty")
        return raw

    def _parse_manifest(self, ball_id: str, refs: Refs, version: str, directory: Path, raw: bytes) -> _Stored:
        try:
            doc = json.loads(raw)
        except ValueError:  # typically cut short: a write that had not reached the disk
            raise _Incomplete(f"{ball_id}: the manifest of version {version} is not valid JSON") from None
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
            or not all(isinstance(name, str) and name in _HASH_BITS for name in recorded)
        ):
            raise CorruptObject(f"{ball_id}: manifest names unknown block hashes {recorded!r:.80}")
        verified = VERIFIED_HASH if VERIFIED_HASH in recorded else "crc32"
        if verified not in recorded:
            raise CorruptObject(f"{ball_id}: written with {recorded} block hashes; install xxhash to read it")
        metas, checks = [], []
        for record in chunks:
            meta, values = self._parse_chunk(ball_id, record, block_size, recorded, verified)
            metas.append(meta)
            checks.append(values)
        layout = read_layout(ball_id, metas)
        check_budget(layout, self.max_object_bytes)  # before any read allocates its output
        return _Stored(version, directory, layout, tuple(checks), block_size, refs, hash=verified)

    @staticmethod
    def _parse_chunk(
        ball_id: str, record: Any, block_size: int, recorded: Sequence[str], verified: str
    ) -> tuple[ChunkMeta, tuple[int, ...]]:
        """One chunk record: its metadata and the ``verified`` hash of each block (every hash in
        ``recorded`` must be there, one well-formed value per block)."""
        if not isinstance(record, dict):
            raise CorruptObject(f"{ball_id}: chunk record is not an object")
        key, size, tags = record.get("key"), record.get("size"), record.get("tags")
        if not isinstance(key, str) or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            raise CorruptObject(f"{ball_id}: chunk record without key/size")
        if not isinstance(tags, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in tags.items()
        ):
            raise CorruptObject(f"{key}: tags must map str to str")
        blocks = len(_blocks(size, block_size))
        for name in recorded:
            values, bits = record.get(_HASH_FIELD[name]), _HASH_BITS[name]
            if (
                not isinstance(values, list)
                or len(values) != blocks
                or not all(type(v) is int and 0 <= v < 1 << bits for v in values)
            ):
                raise CorruptObject(f"{key}: manifest needs {blocks} {name} values")
        checksum = normalise_checksum(record.get("checksum"))
        meta = ChunkMeta(key=key, size=size, checksum=checksum, tags=tags)
        return meta, tuple(record[_HASH_FIELD[verified]])

    async def _read(
        self, ball_id: str, prepare: Callable[[Layout], Awaitable[tuple[T, memoryview]]]
    ) -> tuple[_Stored, T]:
        """Load the ball and fill the output ``prepare`` makes for its layout, restarting when a
        writer replaces it meanwhile and falling back to the previous version when the current one
        turns out incomplete. Returns the version read and the output."""
        for _ in range(MAX_RESTARTS):
            stored = await self._run(self._load, ball_id)
            out, flat = await prepare(stored.layout)
            try:
                if await self._read_into(stored, flat):
                    return stored, out
                continue
            except _Incomplete as error:
                if stored.fallback:
                    raise CorruptObject(f"{error} (in the previous version, read instead)") from None
                del out, flat
                stored = await self._run(self._load_fallback, ball_id, stored.refs, error)
            out, flat = await prepare(stored.layout)
            try:
                if await self._read_into(stored, flat):
                    return stored, out
            except _Incomplete as again:
                raise CorruptObject(f"{ball_id}: both kept versions are incomplete: {again}") from None
        raise StorageUnavailable(f"{ball_id} kept changing while it was being read")

    async def _read_into(self, stored: _Stored, flat: memoryview) -> bool:
        """Fill ``flat`` from the chunk files; False when the version vanished (caller retries).

        A missing or wrongly sized chunk file while the pointer is unchanged is ``_Incomplete``.
        """
        layout = stored.layout
        pieces = []
        for meta, offset, checks in zip(layout.chunks, layout.offsets, stored.checks, strict=True):
            path = stored.directory / meta.key
            for (start, stop), check in zip(_blocks(meta.size, stored.block_size), checks, strict=True):
                view = flat[offset + start : offset + stop]
                pieces.append(_Piece(path, view, start, meta.size, check, stored.hash))
        job = _Job(self._pool)
        try:
            await asyncio.gather(
                *(job.submit(_read_pieces, g, self.verify) for g in _group(pieces, BLOCK_SIZE))
            )
        except (_VersionGone, _Incomplete) as error:
            await job.abort(lambda: None)
            if await self._run(self._read_refs, layout.ball_id) != stored.refs:
                return False  # a writer replaced (or deleted) the ball meanwhile: start over
            if isinstance(error, _Incomplete):
                raise
            raise _Incomplete(
                f"{layout.ball_id}: chunk file {Path(str(error)).name} of version {stored.version} is missing"
            ) from None
        except BaseException as error:
            await job.abort(lambda: None)
            if isinstance(error, OSError):
                raise _unavailable(error) from error
            raise
        return True

    # ------------------------------------------------------------------ delete, list, health
    def _delete(self, ball_id: str) -> int:
        if not self.directory.is_dir():
            return 0
        with self._locked():
            if not self._ref(ball_id).exists():
                return 0
            refs = self._read_refs_or_none(ball_id)
            os.unlink(self._ref(ball_id))
        if self.fsync:
            _fsync_path(self.directory)
        if refs is None:  # a damaged pointer: its version directories are left to sweep()
            return 0
        directory = self._version_dir(ball_id, refs[0])
        try:
            removed = sum(1 for entry in os.scandir(directory) if entry.name != MANIFEST)
        except FileNotFoundError:
            removed = 0
        for version in refs:
            if version is not None:
                shutil.rmtree(self._version_dir(ball_id, version), ignore_errors=True)
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
        _make_dirs(self.directory)
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
                    if not _VERSION_RE.fullmatch(version) or version in (self._read_refs(ball_id) or ()):
                        continue
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except (OSError, CorruptObject) as error:
                if getattr(error, "errno", None) != errno.ENOENT:
                    log.warning("sweep could not remove %s: %s", path, error)
        return removed
