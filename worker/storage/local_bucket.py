"""The bucket directory of the local store: version pointers, the commit rename, delete, list, sweep.

Everything here runs in the store's threads and touches only names: ``<ball>.ref`` (the commit point),
``<ball>.<version>/`` directories, the ``.lock`` taken around a commit and ``.tmp/``. Why a reader
always sees one whole version, and what ``fsync`` makes durable, is said in ``local.py``.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import errno
import fcntl
import logging
import os
import shutil
import threading
import time
import weakref
from collections.abc import Iterator
from pathlib import Path

from worker.errors import CorruptObject
from worker.storage.local_files import (
    DIR_MODE,
    FILE_MODE,
    O_CLOEXEC,
    fsync_path,
    make_dirs,
    open_regular,
    write_file,
)
from worker.storage.local_format import MANIFEST, VERSION_RE, Refs, parse_refs, refs_bytes

log = logging.getLogger("worker.storage.local")


class BucketFiles:
    """The pointer and directory operations of :class:`~worker.storage.local.LocalStore` (a mixin)."""

    directory: Path  # <root>/<bucket>
    fsync: bool
    _pool: concurrent.futures.ThreadPoolExecutor  # where old versions are removed in the background
    # The open ``.lock`` and the lock that orders this store's own threads around it: threads sharing
    # one descriptor all "hold" its flock, so flock alone excludes only other processes.
    _lock_fd: int | None = None
    _lock_finalizer: weakref.finalize | None = None  # closes _lock_fd if the store is dropped unclosed
    _commit_lock: threading.Lock
    _closed: bool  # set by the store's aclose

    # ------------------------------------------------------------------ paths
    def _ref(self, ball_id: str) -> Path:
        return self.directory / f"{ball_id}.ref"

    def _version_dir(self, ball_id: str, version: str) -> Path:
        return self.directory / f"{ball_id}.{version}"

    # ------------------------------------------------------------------ writing
    def _prepare(self, directory: Path) -> None:
        """Create the (empty) version directory, and the bucket and its ``.tmp`` when missing."""
        created = make_dirs(self.directory / ".tmp")
        if self.fsync:  # a new directory's entry lives in its parent
            for new in created:
                fsync_path(new.parent)
        os.mkdir(directory, DIR_MODE)

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive use of the bucket's pointers, against this store's threads and other processes.

        The ``.lock`` descriptor stays open between commits (one open less per write). After taking
        the flock it checks that the descriptor is still the file named ``<bucket>/.lock`` (same
        device and inode): when the bucket directory was moved away or deleted and made anew, or
        ``.lock`` replaced, before or while this thread waited, it opens the current one and locks
        again, so the lock is taken on the file other processes open. (A directory swapped while a
        commit is under way is not covered: docs/storage.md.) Any failure after the flock releases it.
        """
        with self._commit_lock:
            path = self.directory / ".lock"
            while True:
                fd = self._lock_fd
                if fd is None:
                    flags = os.O_RDWR | os.O_CREAT | O_CLOEXEC | os.O_NOFOLLOW
                    fd = os.open(path, flags, FILE_MODE)
                    self._lock_fd = fd
                    self._lock_finalizer = weakref.finalize(self, os.close, fd)
                fcntl.flock(fd, fcntl.LOCK_EX)
                current = False
                try:
                    current = self._names_lock_file(fd, path)
                finally:
                    if not current:  # a stale descriptor, or the check failed: let go, open anew
                        fcntl.flock(fd, fcntl.LOCK_UN)
                        self._drop_lock_fd()
                if current:
                    break
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
                if self._closed:  # closed meanwhile (a cancelled aclose left the descriptor to us)
                    self._drop_lock_fd()

    @staticmethod
    def _names_lock_file(fd: int, path: Path) -> bool:
        """Whether ``path`` still names the file open as ``fd`` (a missing path does not)."""
        held = os.fstat(fd)
        try:
            named = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            return False
        return (named.st_dev, named.st_ino) == (held.st_dev, held.st_ino)

    def _drop_lock_fd(self) -> None:
        """Close the kept ``.lock`` descriptor (the caller holds ``_commit_lock``)."""
        finalizer = self._lock_finalizer
        self._lock_fd, self._lock_finalizer = None, None
        if finalizer is not None:
            finalizer()  # closes the descriptor, once

    def _close_lock(self) -> None:
        """Close the kept descriptor now, or, when a commit thread holds ``_commit_lock`` (possibly
        waiting for another process's flock), let that thread close it when it is done: this runs
        on the event loop, which must never wait for another process."""
        if self._commit_lock.acquire(blocking=False):
            try:
                self._drop_lock_fd()
            finally:
                self._commit_lock.release()

    def _write_ref(self, temp: Path, version: str, replaced: Refs | None) -> None:
        """The pointer's next content: the new version, then the one it replaces (kept one commit).
        A file already at ``temp`` (a first attempt, or one planted there) is replaced."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temp)
        write_file(temp, refs_bytes(version, replaced), self.fsync)

    def _commit(
        self, ball_id: str, version: str, directory: Path, manifest: bytes, committed: threading.Event
    ) -> None:
        """Make ``version`` the ball's current version: the manifest, then (fsync: after syncing the
        version directory) the pointer is replaced by rename, and (fsync) the bucket directory synced.

        The version replaced stays on disk, named second in the pointer, until the next commit: a
        reader still on it finishes, and a reader that finds the new version incomplete (its bytes
        lost in a power loss without fsync) reads it instead. The one before it is removed.
        """
        write_file(directory / MANIFEST, manifest, self.fsync)
        if self.fsync:
            fsync_path(directory)  # the entries of the chunk files and the manifest
        temp = self.directory / ".tmp" / f"{ball_id}.{version}.ref"
        seen: Refs | None = None
        if self.fsync:  # written outside the lock, so its fsync does not hold other writers
            seen = self._read_refs_or_none(ball_id)
            self._write_ref(temp, version, seen)
        ref = self._ref(ball_id)
        with self._locked():
            current = self._read_refs_or_none(ball_id)
            # Without fsync the temp file is written here (a tiny write, cheaper than reading the
            # pointer twice); with it, again only if another writer of this ball committed meanwhile.
            if not self.fsync or current != seen:
                self._write_ref(temp, version, current)
            os.replace(temp, ref)
            committed.set()
        if self.fsync:
            fsync_path(self.directory)
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

    # ------------------------------------------------------------------ reading pointers
    def _read_refs(self, ball_id: str) -> Refs | None:
        """The pointer: (current version, previous version or None); None when the ball is absent.

        Opened with :func:`~worker.storage.local_files.open_regular`: a symlink or FIFO planted as
        the pointer is ``CorruptObject`` instead of a read elsewhere or a thread blocked for ever.
        """
        try:
            with open(self._ref(ball_id), "rb", opener=open_regular) as handle:
                text = handle.read(256).decode("ascii", "replace")
        except FileNotFoundError:
            return None
        return parse_refs(ball_id, text)

    def _read_refs_or_none(self, ball_id: str) -> Refs | None:
        """Like ``_read_refs`` but a damaged pointer counts as absent, so it can be replaced or deleted."""
        try:
            return self._read_refs(ball_id)
        except CorruptObject as error:
            log.warning("replacing a damaged pointer: %s", error)
            return None

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
            fsync_path(self.directory)
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
        make_dirs(self.directory)
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
                    if not VERSION_RE.fullmatch(version) or version in (self._read_refs(ball_id) or ()):
                        continue
                    shutil.rmtree(path)
                else:
                    os.unlink(path)
                removed += 1
            except (OSError, CorruptObject) as error:
                if getattr(error, "errno", None) != errno.ENOENT:
                    log.warning("sweep could not remove %s: %s", path, error)
        return removed


__all__ = ["BucketFiles"]
