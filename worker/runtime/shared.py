"""Large numpy arrays cross into the compute processes through shared memory files, not pickle.

A secure k-means round moves about 100 MB of arrays (dataset, UDM) into a compute process and back.
Pickling them through the executor's pipe costs several copies and system calls per megabyte: it
measured ten times the computation itself. Instead every large array travels as the path of a file
under a RAM-backed directory (``/dev/shm`` when it has room, the temp directory otherwise) plus its
shape, dtype and offset; the child maps it read-only (no copy; a slot keeps the previous call's
mappings for the next one), and large results come back the same way. Large lists of byte strings
(serialized CKKS ciphertexts: 260 MB for a 500-row matrix, which took the pipe about a second each
way) cross laid end to end in such a file and are copied out once on the other side. Everything
here runs between our own processes; nothing from the bus or from storage is ever unpickled.

Three things make the transfer cheap, each measured (100k x 8 SKMeans, 32 MB UDM):

* **Arrays that already live in a transfer file cross for free.** :func:`empty` hands out arrays
  backed by a shared mapping of a pooled file; the storage read cache reads objects straight into such
  arrays, so the dataset and the UDM it caches reach the child without a single copy.
* **Transfer files are pooled** (``worker/segments.py``: their creation, reuse, ownership and the
  sweeping of a killed worker's files). The parent also lends idle files to the child for results of
  the sizes the same function returned last time, so the child writes into pages that exist already.
* **Results are mapped, not read.** :func:`collect` maps the child's result file into the parent
  (shared, writable: the array owns the file) instead of copying it into fresh memory.

Compute functions must not keep references to their array arguments after they return (the file may
be reused), and get their large array arguments read-only: one that changes an input copies it.
This module is the transfer: packing arguments, the child's side of a call, collecting results;
the names of ``worker/segments.py`` that callers use are re-exported here.
"""

from __future__ import annotations

import glob
import mmap
import os
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.segments import (
    CREATE,
    DEFAULT_IDLE_BYTES,
    POOL,
    PREFIX,
    THRESHOLD_BYTES,
    FilePool,
    SharedArray,
    Spare,
    array_bytes,
    describe,
    directories,
    empty,
    in_thread,
    is_shared,
    new_path,
    next_serial,
    owner_id,
    pwrite_all,
    sweep_stale,
    transfer_dir,
    unlink,
)


@dataclass(frozen=True, slots=True)
class SharedBlobs:
    """Where a list of byte strings waits: laid end to end in a file from ``offset``; ``ends`` holds
    each string's end, relative to ``offset``."""

    path: str
    offset: int
    ends: tuple[int, ...]


def _blobs(value: Any) -> bool:
    """A list of byte strings (serialized ciphertexts) large enough to cross in a transfer file: a
    CKKS matrix of 500 rows is about 260 MB, which the executor's pipe took a second to pickle across."""
    return (
        isinstance(value, list)
        and len(value) > 0
        and all(type(item) is bytes for item in value)
        and sum(map(len, value)) >= THRESHOLD_BYTES
    )


def _leaves(value: Any) -> Iterator[Any]:
    """What :func:`pack` and :func:`unpack` look at: the items of tuples, lists and dict values,
    recursively, and anything else as itself (a large list of byte strings is one leaf)."""
    if isinstance(value, (tuple, list)) and not _blobs(value):
        for item in value:
            yield from _leaves(item)
    elif isinstance(value, dict):
        for item in value.values():
            yield from _leaves(item)
    else:
        yield value


def _rebuild(value: Any, leaf: Callable[[Any], Any]) -> Any:
    """``value`` with every leaf replaced by ``leaf(it)``: tuples, lists and dicts are rebuilt (as
    plain ones, except that a named tuple keeps its type, so a core result such as
    ``EncryptedPhaseResult`` reads the same from the pool as inline), anything else is a leaf."""
    if isinstance(value, tuple):
        items = [_rebuild(item, leaf) for item in value]
        make = getattr(type(value), "_make", None) if hasattr(value, "_fields") else None
        return make(items) if make is not None else tuple(items)
    if isinstance(value, list) and not _blobs(value):
        return [_rebuild(item, leaf) for item in value]
    if isinstance(value, dict):
        return {key: _rebuild(item, leaf) for key, item in value.items()}
    return leaf(value)


def _large(value: Any) -> bool:
    return (
        isinstance(value, np.ndarray) and value.nbytes >= THRESHOLD_BYTES and value.dtype.hasobject is False
    )


def _pack_array(array: np.ndarray, keep: list[Any]) -> SharedArray:
    described = describe(array)
    if described is not None:
        return described
    copy = empty(array.shape, array.dtype)
    np.copyto(copy, array, casting="no")
    keep.append(copy)  # the caller holds it until the call is over, then the file is pooled again
    described = describe(copy)
    assert described is not None
    return described


def _ends(blobs: list[bytes]) -> tuple[int, ...]:
    """Where each byte string ends when they are laid end to end."""
    return tuple(int(end) for end in np.cumsum([len(blob) for blob in blobs]))


def _pack_blobs(blobs: list[bytes], keep: list[Any]) -> SharedBlobs:
    ends = _ends(blobs)
    buffer = empty((ends[-1],), np.uint8)
    np.concatenate([np.frombuffer(blob, np.uint8) for blob in blobs], out=buffer)
    keep.append(buffer)  # held until the call is over, like a copied array
    described = describe(buffer)
    assert described is not None  # at least THRESHOLD_BYTES: a pooled file
    return SharedBlobs(described.path, described.offset, ends)


def _pack_leaf(leaf: Any, keep: list[Any]) -> Any:
    if _large(leaf):
        return _pack_array(leaf, keep)
    return _pack_blobs(leaf, keep) if _blobs(leaf) else leaf


def pack(value: Any, keep: list[Any]) -> Any:
    """Replace large arrays inside ``value`` (also in tuples, lists and dicts) by SharedArray, and
    large lists of byte strings by SharedBlobs.

    Arrays already in a pooled file are described in place; others, and byte strings, are copied
    into one, which is appended to ``keep``: the caller must hold ``keep`` until the child is done
    with the files.
    """
    return _rebuild(value, lambda leaf: _pack_leaf(leaf, keep))


def has_large(value: Any) -> bool:
    """Whether ``pack`` would move anything (cheap: walks containers, touches no data)."""
    return any(_large(leaf) or _blobs(leaf) for leaf in _leaves(value))


def needs_copy(value: Any) -> bool:
    """Whether ``pack`` would copy anything (a large array not already in a pooled file, byte strings)."""
    return any((_large(leaf) and describe(leaf) is None) or _blobs(leaf) for leaf in _leaves(value))


def has_shared(value: Any) -> bool:
    """Whether a child's result holds anything :func:`collect` must fetch from a file."""
    return any(isinstance(leaf, (SharedArray, SharedBlobs)) for leaf in _leaves(value))


def shared_sizes(value: Any) -> list[int]:
    """Byte sizes of the SharedArray results in ``value`` (to lend fitting files next time)."""
    return [leaf.nbytes for leaf in _leaves(value) if isinstance(leaf, SharedArray)]


def unpack(value: Any, loader: Callable[[SharedArray], np.ndarray]) -> Any:
    """``value`` with each SharedArray replaced by ``loader(it)`` and each SharedBlobs by its byte strings."""

    def load(leaf: Any) -> Any:
        if isinstance(leaf, SharedArray):
            return loader(leaf)
        return _read_blobs(leaf) if isinstance(leaf, SharedBlobs) else leaf

    return _rebuild(value, load)


def _read_blobs(shared: SharedBlobs) -> list[bytes]:
    """The byte strings, each copied out of the file once (TenSEAL takes ``bytes``)."""
    end = shared.offset + shared.ends[-1]
    with open(shared.path, "rb", buffering=0) as handle, mmap.mmap(
        handle.fileno(), end, prot=mmap.PROT_READ
    ) as view:
        starts = (0, *shared.ends[:-1])
        base = shared.offset
        return [view[base + start : base + stop] for start, stop in zip(starts, shared.ends, strict=True)]


def _write_blobs(blobs: list[bytes], tag: str, created: list[str]) -> SharedBlobs:
    """Child side: a large list of byte strings written end to end into a new file named after the
    call (the parent reads them out and deletes it)."""
    ends = _ends(blobs)
    path = new_path(transfer_dir(ends[-1]), tag)
    fd = os.open(path, CREATE, 0o600)  # 0600 like every transfer file; write(): a full tmpfs raises
    created.append(str(path))
    with os.fdopen(fd, "wb") as handle:
        for blob in blobs:  # one write a ciphertext: large writes bypass the buffer
            handle.write(blob)
    return SharedBlobs(str(path), 0, ends)


def remove(paths: Sequence[str]) -> None:
    unlink(paths)


# ----------------------------------------------------------------------------- child side
#: Where an input lies: its file, byte offset, shape and dtype.
MapKey = tuple[str, int, tuple[int, ...], str]
#: This process's mappings of the previous call's inputs, with the file identity (device, inode) each
#: was made from. A job's rounds hand the same dataset file to the same slot again and again; mapping
#: it anew each time and faulting its pages in cost 36 ms a round for 512 MB (n = 10^6), more than
#: the whole transfer otherwise. Replaced after every call, so at most one call's inputs stay mapped,
#: and dropped once the slot has been idle for KEEP_IDLE_S: a kept mapping holds its file's pages
#: even after the parent deleted the file, which an idle slot must not do for long.
Mappings = dict[MapKey, tuple[tuple[int, int], np.ndarray]]
_kept: Mappings = {}
KEEP_IDLE_S = 5.0
#: When the slot went idle with mappings kept (None: a call is running, or nothing is kept). One
#: daemon thread per process forgets them (started with the first kept mapping): a timer thread per
#: call cost ~0.2 ms of thread start and cancel on every call.
_idle_since: float | None = None
_idle_lock = threading.Lock()
_forgetter: threading.Thread | None = None


def _keep(mappings: Mappings) -> None:
    """Keep ``mappings`` (only those) for the next call, and forget them after KEEP_IDLE_S idle."""
    global _idle_since, _forgetter
    with _idle_lock:
        _kept.clear()
        _kept.update(mappings)
        _idle_since = time.monotonic() if mappings else None
        if mappings and _forgetter is None:
            _forgetter = threading.Thread(target=_forget_when_idle, name="rory-forget", daemon=True)
            _forgetter.start()


def _stop_forgetting() -> None:
    """A call starts: the kept mappings must stay while it runs."""
    global _idle_since
    with _idle_lock:
        _idle_since = None


def _forget_when_idle() -> None:
    """Daemon thread: drop the kept mappings once the slot has been idle for KEEP_IDLE_S."""
    global _idle_since
    while True:
        time.sleep(KEEP_IDLE_S / 4)  # a daemon thread of the compute process, never an event loop
        with _idle_lock:
            if _idle_since is not None and time.monotonic() - _idle_since >= KEEP_IDLE_S:
                _kept.clear()
                _idle_since = None


def _map(shared: SharedArray, reused: Mappings | None = None) -> np.ndarray:
    """A read-only view of the file region (shared mapping: it always shows the file's bytes).

    Read-only because the mapping may serve the next call too: a compute function that wants to change
    an input copies it first. With ``reused``, a mapping kept from the previous call is handed out
    again when the path still names the same file and that file is still long enough, and every
    mapping handed out is recorded there.
    """
    if shared.nbytes == 0:
        return np.empty(shared.shape, dtype=np.dtype(shared.dtype))
    key: MapKey = (shared.path, shared.offset, shared.shape, shared.dtype)
    status = os.stat(shared.path)
    identity = (status.st_dev, status.st_ino)
    kept = _kept.get(key)
    if kept is not None and kept[0] == identity and status.st_size >= shared.offset + shared.nbytes:
        array = kept[1]
    else:
        array = np.memmap(
            shared.path, dtype=np.dtype(shared.dtype), mode="r", shape=shared.shape, offset=shared.offset
        )
    if reused is not None:
        reused[key] = (identity, array)
    return array


def _write_result(array: np.ndarray, spares: list[Spare], tag: str, created: list[str]) -> SharedArray:
    """Write one result into the best-fitting lent file, else into a new file named after the call."""
    array = np.ascontiguousarray(array)
    nbytes = array.nbytes
    limit = nbytes + nbytes // 4 + (1 << 20)
    fitting = [spare for spare in spares if nbytes <= spare.capacity <= limit]
    if fitting:
        spare = min(fitting, key=lambda s: s.capacity)
        spares.remove(spare)
        fd = os.open(spare.path, os.O_WRONLY | getattr(os, "O_CLOEXEC", 0))
        try:
            pwrite_all(fd, array_bytes(array))
        finally:
            os.close(fd)
        return SharedArray(spare.path, tuple(array.shape), array.dtype.str)
    path = new_path(transfer_dir(nbytes), tag)
    # 0600 like every transfer file; write(), not a mapping: a full tmpfs raises ENOSPC here
    # instead of killing the process
    fd = os.open(path, CREATE, 0o600)
    created.append(str(path))
    try:
        pwrite_all(fd, array_bytes(array))
    finally:
        os.close(fd)
    return SharedArray(str(path), tuple(array.shape), array.dtype.str)


def call(
    fn: Callable[..., Any],
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    spares: Sequence[Spare] = (),
    tag: str | None = None,
) -> Any:
    """Child side: map the inputs, run ``fn``, write large outputs into lent files or new ones.

    New files are named ``rory-<tag>-...`` so the parent can remove them if it never collects them.
    """
    reused: Mappings = {}

    def load(leaf: SharedArray) -> np.ndarray:
        return _map(leaf, reused)

    _stop_forgetting()
    try:
        result = fn(*unpack(args, load), **unpack(kwargs, load))
    finally:
        _keep(reused)  # the previous call's other mappings go now (their files may be gone)
    created: list[str] = []
    lent = list(spares)
    call_tag = tag or f"{owner_id()}-{next_serial()}"

    def write(leaf: Any) -> Any:
        if _large(leaf):
            return _write_result(leaf, lent, call_tag, created)
        return _write_blobs(leaf, call_tag, created) if _blobs(leaf) else leaf

    try:
        return _rebuild(result, write)
    except BaseException:
        remove(created)
        raise


# ----------------------------------------------------------------------------- parent side
def new_tag() -> str:
    """A name prefix for the result files of one call (see :func:`discard_call`)."""
    return f"{owner_id()}-c{next_serial()}-{os.urandom(3).hex()}"


def discard_call(tag: str, pool: FilePool | None = None) -> None:
    """Remove result files a child created for call ``tag`` that nobody collected (failure, cancel)."""
    known = (pool or POOL).tracked()
    for directory in directories():
        found = glob.glob(str(directory / f"{PREFIX}{glob.escape(tag)}-*.bin"))
        unlink([path for path in found if path not in known])


def collect(result: Any, spares: Sequence[Spare] = (), pool: FilePool | None = None) -> Any:
    """Parent side: map the outputs (no copy); their files now belong to the returned arrays.

    Lent files the child wrote into keep their pooled identity; files it created are adopted. Byte
    strings are read out of their files, which are then deleted.
    """
    pool = pool or POOL
    lent = {spare.path: spare.capacity for spare in spares}
    mapped: list[np.ndarray] = []

    def load(shared: SharedArray) -> np.ndarray:
        capacity = lent.pop(shared.path, None)
        if capacity is None:
            capacity = pool.adopt(shared.path)
        array = pool.map(shared.path, capacity, shared.shape, np.dtype(shared.dtype))
        mapped.append(array)
        return array

    try:
        return unpack(result, load)
    except BaseException:
        mapped.clear()  # their files go back to the pool
        # A lent file the child wrote but this never mapped goes back to the pool here: the caller
        # counts every result path as used and so gives back only the lent files the child left alone.
        written = result_paths(result)
        for path in lent:
            if path in written:
                pool.release(path)
        taken = {spare.path for spare in spares}
        unlink([p for p in written if p not in taken and p not in pool.tracked()])
        raise
    finally:
        unlink([leaf.path for leaf in _leaves(result) if isinstance(leaf, SharedBlobs)])


def give_back(spares: Sequence[Spare], used: Sequence[str] = (), pool: FilePool | None = None) -> None:
    """Return lent files the child did not use to the idle pool."""
    pool = pool or POOL
    taken = set(used)
    for spare in spares:
        if spare.path not in taken:
            pool.release(spare.path)


def result_paths(value: Any) -> list[str]:
    return [leaf.path for leaf in _leaves(value) if isinstance(leaf, SharedArray)]


__all__ = [
    "DEFAULT_IDLE_BYTES",
    "POOL",
    "THRESHOLD_BYTES",
    "FilePool",
    "SharedArray",
    "SharedBlobs",
    "Spare",
    "call",
    "collect",
    "describe",
    "discard_call",
    "empty",
    "give_back",
    "has_large",
    "has_shared",
    "in_thread",
    "is_shared",
    "needs_copy",
    "new_tag",
    "owner_id",
    "pack",
    "remove",
    "result_paths",
    "shared_sizes",
    "sweep_stale",
    "transfer_dir",
]
