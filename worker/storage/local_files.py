"""File and thread plumbing of the local store (``local.py``): private modes, durable writes, and
thread-pool work that a failed call can wait out before it cleans up.

Durability (``STORAGE_FSYNC``, docs/storage.md 4.1): a file is durable once it is fsynced, and its
name once the directory holding it is fsynced; :func:`write_file`, :func:`fsync_path` and
:func:`make_dirs` are the pieces the store's commit sequence is built from.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import errno
import fcntl
import logging
import os
import stat
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

from worker.aio import await_to_end
from worker.errors import CorruptObject, StorageUnavailable

log = logging.getLogger("worker.storage.local")
T = TypeVar("T")

#: Every file and directory the store creates is private to the worker's user.
FILE_MODE = 0o600
DIR_MODE = 0o700
O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
#: Added to every open of a file the store reads (pointer, manifest, chunk): the bucket directory may
#: hold whatever another process planted there, and a symlink would read a file outside the store,
#: a FIFO would block the store's thread for ever in ``open`` or ``read``.
READ_FLAGS = os.O_RDONLY | O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK


def open_regular(path: str | os.PathLike[str], flags: int = 0) -> int:
    """Open ``path`` for reading only if it is a regular file, not following a final symlink and
    without blocking on a FIFO; anything else is ``CorruptObject`` naming the path.

    ``FileNotFoundError`` (and other ``OSError``) propagate: a missing file means something else to
    each caller (a vanished version, an incomplete write). Usable as ``open(..., opener=open_regular)``:
    the flags ``open`` passes are combined with :data:`READ_FLAGS` (writing flags are refused).
    """
    if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
        raise ValueError("open_regular opens for reading only")
    try:
        fd = os.open(path, flags | READ_FLAGS)
    except OSError as error:
        if error.errno == errno.ELOOP:  # O_NOFOLLOW met a symlink
            raise CorruptObject(
                f"local storage: {os.fspath(path)} is a symlink, not a regular file"
            ) from None
        raise
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise CorruptObject(
                f"local storage: {os.fspath(path)} is not a regular file (mode 0o{stat.S_IFMT(mode):o})"
            )
        # A regular file never blocks; clear the flag anyway so no later read sees EAGAIN.
        fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) & ~os.O_NONBLOCK)
    except BaseException:
        os.close(fd)
        raise
    return fd


def unavailable(error: OSError) -> StorageUnavailable:
    """Disk full, permission denied, I/O error: the store cannot serve the call (503, retryable)."""
    return StorageUnavailable(f"local storage: {error}")


def fsync_path(path: Path) -> None:
    """fsync a file, or a directory (which makes the names in it durable)."""
    fd = os.open(path, os.O_RDONLY | O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def make_dirs(path: Path) -> list[Path]:
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


def write_file(path: Path, data: bytes, fsync: bool) -> None:
    """Create ``path`` (mode 0600, must not exist), write ``data``, and fsync it when asked."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | O_CLOEXEC, FILE_MODE)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        if fsync:
            os.fsync(fd)
    finally:
        os.close(fd)


class Job:
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
        """Cancel queued work, then (in a helper thread) wait for running work and run ``cleanup``.

        Returns only once that is done, even when the caller is cancelled meanwhile (a deadline and
        then a shutdown): returning earlier would let the caller's own cleanup (``put_all`` deleting
        the keys it created) run while a thread can still commit. Such a cancellation is raised
        afterwards.
        """
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
        await await_to_end(asyncio.wrap_future(done))


__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "O_CLOEXEC",
    "READ_FLAGS",
    "Job",
    "fsync_path",
    "make_dirs",
    "open_regular",
    "unavailable",
    "write_file",
]
