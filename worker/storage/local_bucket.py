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
    _commit_lock: threading.Lock

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

        The ``.lock`` descriptor stays open between commits (one open less per write); it is opened
        again when the file it names was removed (the bucket directory deleted and made anew), so
        the flock is always taken on the ``.lock`` other processes open.
        """
        with self._commit_lock:
            fd = self._lock_fd
            if fd is not None and os.fstat(fd).st_nlink == 0:
                os.close(fd)
                fd = self._lock_fd = None
            if fd is None:
                fd = os.open(self.directory / ".lock", os.O_RDWR | os.O_CREAT | O_CLOEXEC, FILE_MODE)
                self._lock_fd = fd
            fcntl.flock(fd, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)

    def _close_lock(self) -> None:
        with self._commit_lock:
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def _write_ref(self, temp: Path, version: str, replaced: Refs | None, *, again: bool = False) -> None:
        """The pointer's next content: the new version, then the one it replaces (kept one commit);
        ``again`` replaces a temp file written before."""
        if again:
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
            if not self.fsync:  # (no fsync: a tiny write, cheaper than reading the pointer twice)
                self._write_ref(temp, version, current)
            elif current != seen:  # another writer of this ball committed meanwhile
                self._write_ref(temp, version, current, again=True)
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
