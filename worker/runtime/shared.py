"""Large numpy arrays cross into the compute processes through memory-mapped files, not pickle.

A secure k-means round moves about 100 MB of arrays (dataset, UDM) into a compute process and back.
Pickling them through the executor's pipe costs several copies and system calls per megabyte: it
measured ten times the computation itself. Instead, the parent writes each large array once into a
file under a RAM-backed directory (``/dev/shm`` when it has room, the temp directory otherwise), the
child maps it copy-on-write (no copy), and large results come back the same way. Everything here
runs between our own processes; nothing from the bus or from storage is ever unpickled.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

#: Arrays smaller than this travel by pickle (a file would cost more than it saves).
THRESHOLD_BYTES = 1 << 20
_SHM = Path("/dev/shm")
_counter = itertools.count()


@dataclass(frozen=True, slots=True)
class SharedArray:
    """Where a large array waits: a raw C-order file, plus its shape and dtype."""

    path: str
    shape: tuple[int, ...]
    dtype: str


def transfer_dir(nbytes: int) -> Path:
    """A RAM-backed directory with room for ``nbytes`` (twice, for safety), else the temp directory.

    Docker gives containers a 64 MB /dev/shm by default: a file that does not fit there must not be
    written there (a memory-mapped write past the end of tmpfs kills the process with SIGBUS).
    """
    with contextlib.suppress(OSError):
        if _SHM.is_dir() and shutil.disk_usage(_SHM).free > 2 * nbytes + (64 << 20):
            return _SHM
    return Path(tempfile.gettempdir())


def _new_path(directory: Path) -> Path:
    return directory / f"rory-{os.getpid()}-{next(_counter)}-{os.urandom(4).hex()}.bin"


def _write(array: np.ndarray, directory: Path | None = None) -> SharedArray:
    array = np.ascontiguousarray(array)
    path = _new_path(directory or transfer_dir(array.nbytes))
    with open(path, "wb") as handle:
        handle.write(memoryview(array).cast("B"))
    return SharedArray(str(path), tuple(array.shape), array.dtype.str)


def _map(shared: SharedArray) -> np.ndarray:
    """Copy-on-write view: the callee may even modify it without touching the file."""
    return np.memmap(shared.path, dtype=np.dtype(shared.dtype), mode="c", shape=shared.shape)


def _read(shared: SharedArray) -> np.ndarray:
    """Load into ordinary memory (one copy) so the file can be removed at once."""
    array = np.fromfile(shared.path, dtype=np.dtype(shared.dtype))
    return array.reshape(shared.shape)


def _large(value: Any) -> bool:
    return (
        isinstance(value, np.ndarray) and value.nbytes >= THRESHOLD_BYTES and value.dtype.hasobject is False
    )


def pack(value: Any, created: list[str], directory: Path | None = None) -> Any:
    """Replace large arrays inside ``value`` (also in tuples, lists and dicts) by SharedArray."""
    if _large(value):
        shared = _write(value, directory)
        created.append(shared.path)
        return shared
    if isinstance(value, tuple):
        return tuple(pack(item, created, directory) for item in value)
    if isinstance(value, list):
        return [pack(item, created, directory) for item in value]
    if isinstance(value, dict):
        return {key: pack(item, created, directory) for key, item in value.items()}
    return value


def has_large(value: Any) -> bool:
    """Whether ``pack`` would move anything (cheap: walks containers, touches no data)."""
    if isinstance(value, (tuple, list)):
        return any(has_large(item) for item in value)
    if isinstance(value, dict):
        return any(has_large(item) for item in value.values())
    return _large(value)


def has_shared(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return any(has_shared(item) for item in value)
    if isinstance(value, dict):
        return any(has_shared(item) for item in value.values())
    return isinstance(value, SharedArray)


def unpack(value: Any, loader: Callable[[SharedArray], np.ndarray]) -> Any:
    if isinstance(value, SharedArray):
        return loader(value)
    if isinstance(value, tuple):
        return tuple(unpack(item, loader) for item in value)
    if isinstance(value, list):
        return [unpack(item, loader) for item in value]
    if isinstance(value, dict):
        return {key: unpack(item, loader) for key, item in value.items()}
    return value


def remove(paths: list[str]) -> None:
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


def call(fn: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """Child side: map the inputs, run ``fn``, hand large outputs back as files."""
    result = fn(*unpack(args, _map), **unpack(kwargs, _map))
    created: list[str] = []
    try:
        return pack(result, created)
    except BaseException:
        remove(created)
        raise


def collect(result: Any) -> Any:
    """Parent side: read the outputs into memory and delete their files."""
    paths: list[str] = []

    def load(shared: SharedArray) -> np.ndarray:
        paths.append(shared.path)
        return _read(shared)

    try:
        return unpack(result, load)
    finally:
        remove(paths)


__all__ = [
    "THRESHOLD_BYTES",
    "SharedArray",
    "call",
    "collect",
    "has_large",
    "has_shared",
    "pack",
    "remove",
    "transfer_dir",
]
