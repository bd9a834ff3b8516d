"""The life of the pooled transfer files that large arrays cross the process boundary in.

Files of one RAM-backed directory (``/dev/shm`` when it has room, the temp directory otherwise) are
created, mapped, pooled for reuse and removed here; what crosses in them, and how, is
``worker/runtime/shared.py``. This module sits below both the runtime (compute transfers) and storage
(the read cache, ``worker/storage/cache.py``, allocates the arrays it keeps here), so storage does not
import the runtime for it.

Pooled: allocating tmpfs pages is the expensive part of a fresh file (about 16 ms per 32 MB, against
1-3 ms to copy into pages that already exist), so a file whose array was freed returns to an idle pool
(bounded, see :class:`FilePool`) and the next array of a fitting size reuses it. :func:`empty` hands
out arrays backed by a shared mapping of a pooled file, so they reach a compute process without a copy.

Lifetimes: a pooled file belongs to the arrays that map it; when the last one is garbage-collected
the file goes back to the idle pool (or is deleted when the pool is full or closed). Pages of a new
file are reserved with ``posix_fallocate`` before they are mapped, so a full tmpfs raises ``OSError``
(and we fall back to the temp directory) instead of killing the process with SIGBUS.

Ownership: every file is created 0600 and named ``rory-<owner>-...bin``, where ``<owner>`` is
``<pid>-<nonce>`` of the worker process that owns it (result files a compute process writes carry
the worker's owner in their call tag). The owner holds an exclusive ``flock`` on
``rory-<owner>.lock`` in each transfer directory for as long as it lives; the kernel releases it
when the process dies, however it dies. A SIGKILLed worker cannot run its cleanup, so
:func:`sweep_stale` (called when a compute pool starts) deletes the files of every owner whose lock
is free, and never touches those of a live one: a held lock means a live owner, whatever its pid
namespace or a reused pid says.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import ctypes
import glob
import itertools
import logging
import mmap
import os
import re
import shutil
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

#: Arrays smaller than this travel by pickle (a file would cost more than it saves). Measured: a
#: 800 KB result (100k labels) takes ~1.9 ms through the executor's pipe, ~0.6 ms through a pooled file.
THRESHOLD_BYTES = 256 << 10
#: Idle pooled files kept for reuse (bytes of tmpfs); beyond it the least recently used are deleted.
DEFAULT_IDLE_BYTES = 256 << 20
#: Idle files unused for this long are deleted by the next acquire or release.
DEFAULT_IDLE_SECONDS = 120.0
SHM = Path("/dev/shm")
_WARNED = False
log = logging.getLogger("rory.worker.pool")
PREFIX = "rory-"
_counter = itertools.count()
#: Pre-faulting a new mapping saves the first writer a page fault per page. It is done with
#: ``madvise(MADV_POPULATE_WRITE)`` (Linux 5.14+) through ctypes, which releases the GIL: ``mmap``
#: with ``MAP_POPULATE`` faulted the pages in while holding it, and a 320 MB UDM mapped in a thread
#: stalled the event loop (health answers) for ~150 ms. Elsewhere the pages fault in on first use.
_MADV_POPULATE_WRITE = 23
try:
    _libc: ctypes.CDLL | None = ctypes.CDLL(None, use_errno=True)
    _libc.madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
    _libc.madvise.restype = ctypes.c_int
except (OSError, AttributeError):  # no libc symbol table (not Linux)
    _libc = None


def _prefault(address: int, nbytes: int) -> bool:
    """Fault in ``nbytes`` of a fresh shared mapping at ``address`` without holding the GIL; best
    effort (an older kernel answers EINVAL and the pages fault in when first written). True when
    the kernel did it."""
    if _libc is None or nbytes <= 0 or not sys.platform.startswith("linux"):
        return False
    return int(_libc.madvise(address, nbytes, _MADV_POPULATE_WRITE)) == 0


T = TypeVar("T")


@dataclass(frozen=True, slots=True)
class SharedArray:
    """Where a large array waits: a raw C-order file region, plus its shape, dtype and byte offset."""

    path: str
    shape: tuple[int, ...]
    dtype: str
    offset: int = 0

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * np.dtype(self.dtype).itemsize


@dataclass(frozen=True, slots=True)
class Spare:
    """An idle pooled file lent to a child for one call, to write a result of up to ``capacity``."""

    path: str
    capacity: int


def transfer_dir(nbytes: int) -> Path:
    """A RAM-backed directory with room for ``nbytes`` (twice, for safety), else the temp directory.

    Docker gives containers a 64 MB /dev/shm by default: a file that does not fit there must not be
    written there (a memory-mapped write past the end of tmpfs kills the process with SIGBUS).
    """
    with contextlib.suppress(OSError):
        if SHM.is_dir() and shutil.disk_usage(SHM).free > 2 * nbytes + (64 << 20):
            return SHM
    global _WARNED
    if not _WARNED:
        _WARNED = True
        log.warning(
            "transfer files go to %s: /dev/shm is missing or too small (give the container more, "
            "e.g. docker --shm-size=1g); compute transfers will be slower",
            tempfile.gettempdir(),
        )
    return Path(tempfile.gettempdir())


# ----------------------------------------------------------------------------- owners
_LOCK_SUFFIX = ".lock"
_OWNER_RE = re.compile(r"^rory-(?P<owner>\d+-[0-9a-f]{8})\.lock$")
CREATE = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0)
_owner_lock = threading.Lock()
_owner: tuple[int, str] | None = None  # (pid, owner id) of this process
_held: dict[str, int] = {}  # directory -> fd of this owner's lock there (held while the process lives)

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no locks, no sweeping
    fcntl = None  # type: ignore[assignment]


def next_serial() -> int:
    """A number unique in this process (parts of file names and call tags)."""
    return next(_counter)


def directories() -> list[Path]:
    """Where transfer files can be: /dev/shm (when present) and the temp directory."""
    found = [SHM] if SHM.is_dir() else []
    return [*dict.fromkeys([*found, Path(tempfile.gettempdir())])]


def _lock_path(directory: Path, owner: str) -> Path:
    return directory / f"{PREFIX}{owner}{_LOCK_SUFFIX}"


def _hold(directory: Path, owner: str) -> int | None:
    """Create and lock ``rory-<owner>.lock`` in ``directory`` (locked before it gets its name, so a
    sweeper never sees it unlocked); returns the fd to keep, None where that is impossible."""
    if fcntl is None:
        return None
    draft = directory / f".{PREFIX}{owner}.{os.urandom(4).hex()}.tmp"
    try:
        fd = os.open(draft, CREATE, 0o600)
    except OSError:
        return None  # not writable: no transfer file can be created there either
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.rename(draft, _lock_path(directory, owner))
    except OSError:
        os.close(fd)
        unlink([str(draft)])
        return None
    return fd


def owner_id() -> str:
    """``<pid>-<nonce>``: the owner part of this process's transfer file names, with its locks held.

    A forked child gets its own owner (its parent's locks are not its own); the locks are taken the
    first time, in every transfer directory, before any file of this owner exists.
    """
    global _owner
    pid = os.getpid()
    with _owner_lock:
        if _owner is None or _owner[0] != pid:
            _owner = (pid, f"{pid}-{os.urandom(4).hex()}")
            _held.clear()  # inherited fds (fork) stay open but belong to the parent's owner
        for directory in directories():
            key = str(directory)
            if key not in _held:
                fd = _hold(directory, _owner[1])
                if fd is not None:
                    _held[key] = fd
        return _owner[1]


def _owner_is_dead(lock: Path) -> int | None:
    """An fd holding ``lock`` when its owner is gone (the caller deletes, then closes); else None."""
    assert fcntl is not None
    try:
        fd = os.open(lock, os.O_RDWR | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None  # gone already, or not ours (another user's 0600 file)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        return None  # held: the owner lives
    return fd


def sweep_stale() -> list[str]:
    """Delete the transfer files of owners that are gone (a SIGKILLed worker); return their paths.

    An owner is gone when its lock file is not locked. Files of live owners (this process, other
    workers on the same host or sharing /dev/shm from another pid namespace) are never touched, nor
    is anything whose name does not follow ours.
    """
    if fcntl is None:
        return []
    mine = owner_id()
    places = directories()
    removed: list[str] = []
    for directory in places:
        try:
            names = os.listdir(directory)
        except OSError:
            continue
        for name in names:
            match = _OWNER_RE.match(name)
            if match is None or match["owner"] == mine:
                continue
            fd = _owner_is_dead(directory / name)
            if fd is not None:
                try:
                    removed += _remove_owner(match["owner"], places)
                finally:
                    os.close(fd)
    if removed:
        log.info("removed the transfer files of stopped workers", extra={"files": len(removed)})
    return removed


def _remove_owner(owner: str, directories: list[Path]) -> list[str]:
    """Files of a dead ``owner`` in every directory, then its lock files (one of them held by us)."""
    removed: list[str] = []
    for where in directories:
        found = glob.glob(str(where / f"{PREFIX}{glob.escape(owner)}-*.bin"))
        found += glob.glob(str(where / f".{PREFIX}{glob.escape(owner)}.*.tmp"))
        unlink(found)
        removed += found
    for where in directories:
        unlink([str(_lock_path(where, owner))])
    return removed


def new_path(directory: Path, tag: str | None = None) -> Path:
    middle = tag or f"{owner_id()}-{next_serial()}"
    return directory / f"{PREFIX}{middle}-{os.urandom(4).hex()}.bin"


class _SharedMap(mmap.mmap):
    """A shared, writable mapping of one pooled file (the base of every array :func:`empty` returns)."""

    path: str
    capacity: int
    address: int


def pwrite_all(fd: int, view: memoryview, offset: int = 0) -> None:
    written = 0
    while written < len(view):
        written += os.pwrite(fd, view[written:], offset + written)


def array_bytes(array: np.ndarray) -> memoryview:
    return memoryview(array.reshape(-1)).cast("B") if array.size else memoryview(b"")


class FilePool:
    """Transfer files of the parent process: idle files are kept for reuse, in-use ones are tracked.

    ``max_idle_bytes`` bounds the tmpfs kept by idle files; ``max_idle_seconds`` deletes files nobody
    reused for that long. Thread-safe (finalizers of freed arrays may run in any thread).
    """

    def __init__(
        self, max_idle_bytes: int = DEFAULT_IDLE_BYTES, max_idle_seconds: float = DEFAULT_IDLE_SECONDS
    ) -> None:
        self.max_idle_bytes = max_idle_bytes
        self.max_idle_seconds = max_idle_seconds
        self._lock = threading.Lock()
        self._idle: dict[str, tuple[int, float]] = {}  # path -> (capacity, released at); LRU order
        self._in_use: dict[str, int] = {}
        self._closed = False
        self.created = 0  # new files made (the expensive case)
        self.reused = 0  # idle files handed out again

    # -- bookkeeping
    @property
    def idle_bytes(self) -> int:
        with self._lock:
            return sum(capacity for capacity, _ in self._idle.values())

    @property
    def in_use_bytes(self) -> int:
        with self._lock:
            return sum(self._in_use.values())

    def _take_fit(self, nbytes: int) -> tuple[str, int] | None:
        """Remove and return the smallest idle file with room for ``nbytes`` (at most ~1.25x larger)."""
        limit = nbytes + nbytes // 4 + (1 << 20)
        best: tuple[str, int] | None = None
        for path, (capacity, _) in self._idle.items():
            if nbytes <= capacity <= limit and (best is None or capacity < best[1]):
                best = (path, capacity)
        if best is not None:
            del self._idle[best[0]]
        return best

    def _trim(self) -> list[str]:
        """Idle files to delete (too old, or beyond the byte bound, oldest first). Lock held."""
        doomed = []
        now = time.monotonic()
        total = sum(capacity for capacity, _ in self._idle.values())
        for path, (capacity, since) in list(self._idle.items()):
            if self._closed or total > self.max_idle_bytes or now - since > self.max_idle_seconds:
                del self._idle[path]
                total -= capacity
                doomed.append(path)
        return doomed

    # -- files
    def _create(self, nbytes: int) -> tuple[str, int]:
        first = transfer_dir(nbytes)
        fallback = Path(tempfile.gettempdir())
        for directory in dict.fromkeys((first, fallback)):
            path = new_path(directory)
            fd = os.open(path, CREATE, 0o600)
            try:
                os.posix_fallocate(fd, 0, nbytes)  # reserve the pages: ENOSPC here, never SIGBUS later
            except OSError:
                os.unlink(path)
                if directory == fallback:
                    raise
                continue
            finally:
                os.close(fd)
            return str(path), nbytes
        raise OSError("no room for a transfer file")  # pragma: no cover - the loop returns or raises

    def acquire(self, nbytes: int) -> tuple[str, int]:
        """A file with room for ``nbytes``: a fitting idle one, else a new one. Marked in use."""
        nbytes = max(1, int(nbytes))
        with self._lock:
            doomed = self._trim()
            found = self._take_fit(nbytes)
            if found is not None:
                self.reused += 1
                self._in_use[found[0]] = found[1]
        unlink(doomed)
        if found is not None:
            return found
        path, capacity = self._create(nbytes)
        with self._lock:
            self.created += 1
            self._in_use[path] = capacity
        return path, capacity

    def adopt(self, path: str) -> int:
        """Take ownership of a file a child created (a result); returns its capacity."""
        capacity = os.stat(path).st_size
        with self._lock:
            self._in_use[path] = capacity
        return capacity

    def forget(self, path: str) -> None:
        """Drop a file from the books and delete it (it could not be mapped)."""
        with self._lock:
            self._in_use.pop(path, None)
            self._idle.pop(path, None)
        unlink([path])

    def release(self, path: str) -> None:
        """The file's arrays are gone: keep it idle for reuse (or delete it when over the bounds)."""
        with self._lock:
            capacity = self._in_use.pop(path, None)
            if capacity is None:
                return
            self._idle[path] = (capacity, time.monotonic())
            doomed = self._trim()
        unlink(doomed)

    def lend(self, sizes: Sequence[int]) -> list[Spare]:
        """Idle files fitting ``sizes`` (results the child will write), marked in use for the call."""
        spares = []
        with self._lock:
            for nbytes in sizes:
                found = self._take_fit(nbytes)
                if found is None:
                    continue
                self.reused += 1
                self._in_use[found[0]] = found[1]
                spares.append(Spare(*found))
        return spares

    def tracked(self) -> set[str]:
        """Paths the pool knows (in use or idle)."""
        with self._lock:
            return set(self._in_use) | set(self._idle)

    def trim(self) -> None:
        with self._lock:
            doomed = self._trim()
        unlink(doomed)

    def drain(self) -> None:
        """Delete every idle file (files still mapped return to the pool when their arrays are freed)."""
        with self._lock:
            doomed = list(self._idle)
            self._idle.clear()
        unlink(doomed)

    def close(self) -> None:
        """Delete every idle file; files still mapped are deleted when their arrays are freed."""
        with self._lock:
            self._closed = True
        self.drain()

    def unlink_in_use(self) -> None:
        """At exit: remove the names of files still mapped (the mappings stay valid until unmapped)."""
        with self._lock:
            doomed = list(self._in_use)
        unlink(doomed)

    # -- arrays
    def map(self, path: str, capacity: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """A shared, writable array over ``path``; the file returns to the pool when it is freed."""
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        try:
            fd = os.open(path, os.O_RDWR | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            self.forget(path)
            raise
        try:
            mapping = _SharedMap(fd, max(1, nbytes), flags=mmap.MAP_SHARED)
        except BaseException:
            self.forget(path)
            raise
        finally:
            os.close(fd)
        mapping.path, mapping.capacity = path, capacity
        weakref.finalize(mapping, self.release, path)
        flat = np.frombuffer(mapping, dtype=np.uint8, count=nbytes)
        mapping.address = int(flat.ctypes.data) if nbytes else 0
        _prefault(mapping.address, nbytes)
        return flat.view(dtype).reshape(shape)


def unlink(paths: Sequence[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


#: The parent process's pool (children only write into files they were lent or create themselves).
POOL = FilePool()


@atexit.register
def _cleanup_at_exit() -> None:
    POOL.close()
    POOL.unlink_in_use()
    _release_owner()


def _release_owner() -> None:
    """At exit: this process's lock files go (after its files; a crash leaves them to sweep_stale)."""
    with _owner_lock:
        if _owner is None or _owner[0] != os.getpid():
            return
        for directory, fd in _held.items():
            unlink([str(_lock_path(Path(directory), _owner[1]))])
            with contextlib.suppress(OSError):
                os.close(fd)
        _held.clear()


def empty(shape: Sequence[int] | int, dtype: Any = np.float64) -> np.ndarray:
    """An uninitialised C-order array; large ones live in a pooled transfer file (zero-copy to the pool).

    Small arrays are ordinary memory. Use it for buffers that will be handed to the compute pool (for
    example the storage cache reads objects straight into it).
    """
    shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(int(d) for d in shape)
    dtype = np.dtype(dtype)
    nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if nbytes < THRESHOLD_BYTES or dtype.hasobject:
        return np.empty(shape, dtype=dtype)
    path, capacity = POOL.acquire(nbytes)
    return POOL.map(path, capacity, shape, dtype)


def _shared_map(array: np.ndarray) -> _SharedMap | None:
    """The pooled mapping behind ``array`` (through views and memoryviews), if any."""
    base: Any = array
    for _ in range(64):
        if isinstance(base, _SharedMap):
            return base
        if isinstance(base, np.ndarray):
            base = base.base
        elif isinstance(base, memoryview):
            base = base.obj
        else:
            return None
    return None


def describe(array: np.ndarray) -> SharedArray | None:
    """The file region holding ``array`` when it lives in a pooled file (C-contiguous), else None."""
    if not isinstance(array, np.ndarray) or not array.flags.c_contiguous or array.nbytes == 0:
        return None
    mapping = _shared_map(array)
    if mapping is None or mapping.closed:
        return None
    offset = int(array.ctypes.data) - mapping.address
    if offset < 0 or offset + array.nbytes > len(mapping):
        return None
    return SharedArray(mapping.path, tuple(array.shape), array.dtype.str, offset)


def is_shared(array: Any) -> bool:
    """Whether ``array`` already lives in a pooled transfer file (it crosses without a copy)."""
    return isinstance(array, np.ndarray) and describe(array) is not None


async def in_thread(fn: Callable[..., T], /, *args: Any) -> T:
    """``asyncio.to_thread(fn, *args)`` that does not keep the result alive afterwards.

    The executor's future of the last call of each thread keeps its result referenced until that
    thread runs something else; for an array mapped on a pooled file that would hold the file. The
    result travels in a box that is emptied here.
    """
    box = await asyncio.to_thread(lambda: [fn(*args)])
    return box.pop()


__all__ = [
    "CREATE",
    "DEFAULT_IDLE_BYTES",
    "DEFAULT_IDLE_SECONDS",
    "POOL",
    "PREFIX",
    "SHM",
    "THRESHOLD_BYTES",
    "FilePool",
    "SharedArray",
    "Spare",
    "array_bytes",
    "describe",
    "directories",
    "empty",
    "in_thread",
    "is_shared",
    "new_path",
    "next_serial",
    "owner_id",
    "pwrite_all",
    "sweep_stale",
    "transfer_dir",
    "unlink",
]
