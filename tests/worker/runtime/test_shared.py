"""The transfer path into the compute pool: pooled shared-memory files, zero-copy arguments, mapped
results, lending files for results, cleanup after failures, and one BLAS thread per slot."""

from __future__ import annotations

import asyncio
import gc
import glob
import os
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import running_pool
from worker import segments
from worker.runtime import shared
from worker.runtime.pool import ComputePool

BIG = (1 << 20) // 8 + 1000  # float64 elements: just over the transfer threshold


# ----------------------------------------------------------------------------- compute functions
def total(array: np.ndarray) -> float:
    return float(np.asarray(array).sum())


def scale(array: np.ndarray, factor: float) -> np.ndarray:
    return np.asarray(array) * factor


def scribble(array: np.ndarray) -> float:
    """Writes into its argument (read-only in the child: large inputs are shared mappings)."""
    array[:] = -1.0
    return float(array[0])


def fail_after_result(array: np.ndarray) -> np.ndarray:
    raise ValueError("boom")


def reversed_blobs(blobs: list[bytes], extra: bytes) -> tuple[list[bytes], list[str]]:
    """Returns the byte strings reversed plus one, and the types it received."""
    return [*reversed(blobs), extra], sorted({type(blob).__name__ for blob in blobs})


def blob_lengths(blobs: list[bytes]) -> list[int]:
    return [len(blob) for blob in blobs]


def blas_threads() -> int:
    from threadpoolctl import threadpool_info  # installed with scikit-learn (test dependency)

    counts = [info["num_threads"] for info in threadpool_info() if info.get("user_api") == "blas"]
    return max(counts) if counts else -1


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture
async def pool() -> AsyncIterator[ComputePool]:
    async with running_pool(2, ["tests.worker.runtime.test_shared"], ready_timeout=60) as started:
        yield started


def _our_files() -> set[str]:
    pattern = f"rory-{os.getpid()}-*.bin"
    return set(glob.glob(f"/dev/shm/{pattern}")) | set(glob.glob(f"/tmp/{pattern}"))


def _leaked_since(before: set[str]) -> set[str]:
    """Transfer files that appeared since ``before`` and that the file pool does not hold."""
    gc.collect()
    return {p for p in _our_files() - before if p not in shared.POOL.tracked()}


# ----------------------------------------------------------------------------- the file pool
def test_empty_puts_large_arrays_in_a_pooled_file_and_small_ones_in_memory() -> None:
    large = shared.empty((BIG,), np.float64)
    small = shared.empty((10,), np.float64)
    assert shared.is_shared(large) and not shared.is_shared(small)
    described = shared.describe(large)
    assert described is not None and described.offset == 0 and Path(described.path).exists()
    # a contiguous view inside the file is described with its offset, a strided one is not
    view = large[100:]
    assert shared.describe(view).offset == 800  # type: ignore[union-attr]
    assert shared.describe(large[::2]) is None


def test_a_new_transfer_file_is_prefaulted_without_the_gil(monkeypatch: pytest.MonkeyPatch) -> None:
    """Pages are faulted in by ``madvise`` through ctypes (which lets other threads run), not by
    ``mmap(MAP_POPULATE)`` (which held the GIL: the event loop stalled while a large array was
    mapped in a thread); the array is usable either way."""
    calls: list[int] = []
    real = segments._prefault

    def spy(address: int, nbytes: int) -> bool:
        calls.append(nbytes)
        return real(address, nbytes)

    monkeypatch.setattr(segments, "_prefault", spy)
    segments.POOL.drain()
    array = shared.empty((BIG,), np.float64)
    array[:] = 2.0
    assert calls == [BIG * 8] and float(array.sum()) == 2.0 * BIG
    mapped = np.zeros(1 << 16, dtype=np.uint8)  # any writable page range will do for the kernel check
    if os.uname().sysname == "Linux" and tuple(int(x) for x in os.uname().release.split(".")[:2]) >= (5, 14):
        page = mapped.ctypes.data - mapped.ctypes.data % 4096 + 4096
        assert segments._prefault(page, 4096 * 8)


def test_freed_files_are_reused_and_idle_files_are_bounded(tmp_path: Path) -> None:
    pool = shared.FilePool(max_idle_bytes=8 << 20)
    try:
        path, capacity = pool.acquire(1 << 20)
        array = pool.map(path, capacity, ((1 << 20) // 8,), np.dtype(np.float64))
        array[:] = 1.0
        del array
        gc.collect()
        assert pool.idle_bytes == 1 << 20
        again, _ = pool.acquire(1 << 20)
        assert again == path and pool.reused == 1 and pool.created == 1
        # a much smaller request does not take a big idle file (it would pin its memory)
        pool.release(again)
        big, _ = pool.acquire(3 << 20)
        pool.release(big)
        other, _ = pool.acquire(1 << 20)
        assert other == path  # the best fit, not the 3 MB file
        smaller, _ = pool.acquire(1 << 19)
        assert smaller not in (path, big)
        pool.release(other)
        pool.release(smaller)
        # the idle bound: releasing more than 8 MB of files deletes the least recently used
        paths = [pool.acquire(3 << 20)[0] for _ in range(4)]
        for p in paths:
            pool.release(p)
        assert pool.idle_bytes <= 8 << 20
        assert not Path(paths[0]).exists() and Path(paths[-1]).exists()
        everything = [*paths, path, big, smaller]
        pool.drain()
        assert pool.idle_bytes == 0 and not any(Path(p).exists() for p in everything)
    finally:
        pool.close()
        pool.unlink_in_use()


def test_pack_describes_shared_arrays_in_place_and_copies_the_others() -> None:
    plain = np.arange(BIG, dtype=np.float64)
    pooled = shared.empty((BIG,), np.float64)
    pooled[:] = plain
    keep: list[Any] = []
    packed = shared.pack((plain, {"x": pooled}, [1, "two"]), keep)
    assert isinstance(packed[0], shared.SharedArray) and isinstance(packed[1]["x"], shared.SharedArray)
    assert len(keep) == 1  # only the plain array was copied
    assert packed[1]["x"].path == shared.describe(pooled).path  # type: ignore[union-attr]
    assert packed[2] == [1, "two"]
    restored = shared.unpack(packed, shared._map)
    np.testing.assert_array_equal(restored[0], plain)
    np.testing.assert_array_equal(restored[1]["x"], plain)


# ----------------------------------------------------------------------------- through the pool
async def test_arguments_and_results_cross_correctly(pool: ComputePool) -> None:
    plain = np.random.default_rng(0).random(BIG)
    pooled = shared.empty(plain.shape, plain.dtype)
    pooled[:] = plain
    read_only = pooled.view()
    read_only.flags.writeable = False
    for argument in (plain, pooled, read_only, pooled[1000:]):
        assert await pool.run(total, argument) == pytest.approx(float(np.asarray(argument).sum()))
    result = await pool.run(scale, pooled, 2.0)
    np.testing.assert_array_equal(result, plain * 2.0)
    assert shared.is_shared(result) and result.flags.writeable  # mapped on its file, not copied
    result[:5] = 0.0  # the caller owns it


async def test_results_reuse_files_lent_by_the_parent(pool: ComputePool) -> None:
    data = np.ones(BIG)
    first = await pool.run(scale, data, 3.0)
    path = shared.describe(first).path  # type: ignore[union-attr]
    del first
    gc.collect()  # the file goes back to the idle pool
    created = shared.POOL.created
    second = await pool.run(scale, data, 4.0)
    np.testing.assert_array_equal(second, data * 4.0)
    assert shared.describe(second).path == path  # type: ignore[union-attr]
    assert shared.POOL.created == created  # no new tmpfs file for the result


async def test_the_child_cannot_change_the_callers_array(pool: ComputePool) -> None:
    pooled = shared.empty((BIG,), np.float64)
    pooled[:] = 7.0
    with pytest.raises(ValueError, match="read-only"):
        await pool.run(scribble, pooled)
    assert float(pooled.min()) == 7.0


async def test_a_slot_sees_the_current_bytes_of_a_file_it_mapped_before(pool: ComputePool) -> None:
    """Slots keep the previous call's input mappings: a file the parent rewrote between two calls
    reads as rewritten, and a file freed and replaced by another reads as the new one."""
    pooled = shared.empty((BIG,), np.float64)
    for value in (1.0, 2.0, 3.0, 4.0):  # two slots: each sees every file at least twice
        pooled[:] = value
        assert await pool.run(total, pooled) == pytest.approx(value * BIG)
    del pooled
    gc.collect()
    for value in (5.0, 6.0, 7.0, 8.0):
        fresh = shared.empty((BIG,), np.float64)  # often the same pooled file, sometimes a new one
        fresh[:] = value
        assert await pool.run(total, fresh) == pytest.approx(value * BIG)
        assert await pool.run(total, fresh[1000:]) == pytest.approx(value * (BIG - 1000))


@pytest.mark.parametrize("kind", ["array", "byte strings"])
async def test_failures_leave_no_files_behind(pool: ComputePool, kind: str) -> None:
    argument = np.ones(BIG) if kind == "array" else _ciphertext_like(40, 20_000)
    before = _our_files()
    with pytest.raises(ValueError, match="boom"):
        await pool.run(fail_after_result, argument)
    assert not _leaked_since(before)


async def test_a_cancel_while_collecting_waits_for_the_mapping_before_discarding(
    pool: ComputePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Cancelled while the parent maps the results in a thread: the stray-file cleanup must not run
    before that thread is done with the files; then the call ends cancelled and leaves no file."""
    collecting, release = threading.Event(), threading.Event()
    order: list[str] = []
    collect, discard = shared.collect, shared.discard_call

    def slow_collect(result: Any, spares: Any) -> Any:
        collecting.set()
        release.wait(30)
        order.append("collected")
        return collect(result, spares)

    def recorded_discard(tag: str) -> None:
        order.append("discarded")
        discard(tag)

    monkeypatch.setattr(shared, "collect", slow_collect)
    monkeypatch.setattr(shared, "discard_call", recorded_discard)
    before = _our_files()
    try:
        task = asyncio.ensure_future(pool.run(scale, np.ones(BIG), 2.0))
        await asyncio.to_thread(collecting.wait, 30)
        task.cancel()
        # The mapping thread is held, so the call cannot have ended however the machine schedules it.
        done, _ = await asyncio.wait([task], timeout=0.2)
        assert not done and order == []
    finally:
        release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert order == ["collected", "discarded"]
    assert not _leaked_since(before)


async def test_discard_call_removes_uncollected_result_files(tmp_path: Path) -> None:
    tag = shared.new_tag()
    orphan = Path("/dev/shm") / f"rory-{tag}-deadbeef.bin"
    orphan.write_bytes(b"x" * 10)
    shared.discard_call(tag)
    assert not orphan.exists()


async def test_transfer_files_are_released_when_arrays_die(pool: ComputePool) -> None:
    data = np.ones(BIG)
    results = await asyncio.gather(*(pool.run(scale, data, float(i)) for i in range(4)))
    paths = {shared.describe(r).path for r in results}  # type: ignore[union-attr]
    in_use = shared.POOL.in_use_bytes
    del results
    await asyncio.sleep(0)  # the loop's current handle still references gather's future
    gc.collect()
    assert shared.POOL.in_use_bytes <= in_use - len(paths) * data.nbytes
    await pool.shutdown()  # drains idle files
    assert not any(Path(p).exists() for p in paths)


async def test_each_slot_uses_one_blas_thread_per_share_of_the_cores(pool: ComputePool) -> None:
    pytest.importorskip("threadpoolctl")
    expected = max(1, len(os.sched_getaffinity(0)) // pool.size)
    assert pool.blas_threads == expected
    assert await pool.run(blas_threads) in (expected, -1)  # -1: numpy without a BLAS pool


def test_blas_threads_can_be_capped_without_threadpoolctl(monkeypatch: pytest.MonkeyPatch) -> None:
    threadpoolctl = pytest.importorskip("threadpoolctl")
    from worker.runtime.pool import limit_blas_threads

    before = threadpoolctl.threadpool_info()
    if not any(info.get("internal_api") == "openblas" for info in before):
        pytest.skip("numpy is not linked with OpenBLAS here")
    original = max(info["num_threads"] for info in before if info.get("user_api") == "blas")
    monkeypatch.setitem(__import__("sys").modules, "threadpoolctl", None)  # the fallback path
    try:
        assert limit_blas_threads(1) is True
        monkeypatch.undo()
        counts = [i["num_threads"] for i in threadpoolctl.threadpool_info() if i.get("user_api") == "blas"]
        assert max(counts) == 1
    finally:
        threadpoolctl.threadpool_limits(limits=original, user_api="blas")


# ----------------------------------------------------------------------------- ownership, modes, sweeping
def _mode(path: str | Path) -> int:
    return os.stat(path).st_mode & 0o777


async def test_every_transfer_file_is_private(pool: ComputePool) -> None:
    parent_made = shared.empty((BIG,), np.float64)  # created by this process
    described = shared.describe(parent_made)
    assert described is not None and _mode(described.path) == 0o600
    child_made = await pool.run(scale, np.ones(BIG), 2.0)  # written by a compute process
    described = shared.describe(child_made)
    assert described is not None and _mode(described.path) == 0o600
    owner = shared.owner_id()
    assert Path(described.path).name.startswith(f"rory-{owner}-")  # named after the worker, not the child
    locks = [d / f"rory-{owner}.lock" for d in segments.directories()]
    assert locks and all(lock.exists() and _mode(lock) == 0o600 for lock in locks)


def _fake_owner(directory: Path, owner: str, *, files: int = 2) -> list[Path]:
    """Files and a lock of another owner, as a worker would have left them."""
    lock = directory / f"rory-{owner}.lock"
    lock.touch(mode=0o600)
    made = [lock]
    for i in range(files):
        path = directory / f"rory-{owner}-c{i}-abcdef-0123abcd.bin"
        path.write_bytes(b"x" * 64)
        made.append(path)
    return made


def test_sweep_removes_the_files_of_dead_owners_only() -> None:
    import fcntl

    directory = segments.directories()[0]
    dead = _fake_owner(directory, f"{2**22 + 7}-{os.urandom(4).hex()}")
    alive = _fake_owner(directory, f"{2**22 + 8}-{os.urandom(4).hex()}")
    holder = os.open(alive[0], os.O_RDWR)  # a live owner holds its lock (another open file: conflicts)
    fcntl.flock(holder, fcntl.LOCK_EX)
    mine = shared.empty((BIG,), np.float64)  # this process's own files stay too
    mine_path = shared.describe(mine).path  # type: ignore[union-attr]
    stranger = directory / f"rory-{os.urandom(4).hex()}.bin"  # not our naming: never touched
    stranger.write_bytes(b"y")
    try:
        removed = shared.sweep_stale()
        assert {str(p) for p in dead[1:]} <= set(removed)
        assert not any(p.exists() for p in dead)
        assert all(p.exists() for p in alive) and Path(mine_path).exists() and stranger.exists()
        assert not set(removed) & ({str(p) for p in alive} | {mine_path, str(stranger)})
    finally:
        os.close(holder)
        for path in [*alive, stranger]:
            path.unlink(missing_ok=True)
    # Once its holder is gone, the other owner's files go as well.
    again = _fake_owner(directory, f"{2**22 + 9}-{os.urandom(4).hex()}")
    shared.sweep_stale()
    assert not any(p.exists() for p in again)


async def test_a_named_tuple_result_keeps_its_fields_through_the_pool(pool: ComputePool) -> None:
    """Core results are named tuples (``EncryptedPhaseResult``): from the pool they read as inline."""
    from core.algorithms import skmeans

    rng = np.random.default_rng(3)
    encrypted, udm = rng.random((40_000, 2, 3)), rng.random((40_000, 2, 2))  # labels: 320 KB
    inline = skmeans.encrypted_phase(encrypted, udm, 2, True, None)
    pooled = await pool.run(skmeans.encrypted_phase, encrypted, udm, 2, True, None)
    assert type(pooled) is skmeans.EncryptedPhaseResult and shared.is_shared(pooled.labels)
    np.testing.assert_array_equal(pooled.labels, inline.labels)
    np.testing.assert_allclose(pooled.shift, inline.shift)


# ----------------------------------------------------------------------------- byte strings
def _ciphertext_like(count: int, size: int) -> list[bytes]:
    """Serialized ciphertexts stand-ins: distinct contents, one empty string among them."""
    rng = np.random.default_rng(count)
    return [b""] + [rng.bytes(size) for _ in range(count - 1)]


async def test_large_byte_string_lists_cross_both_ways_intact(pool: ComputePool) -> None:
    blobs = _ciphertext_like(40, 20_000)  # 780 KB: above the threshold, crosses in a transfer file
    assert shared.needs_copy((blobs,)) and shared.has_large((blobs,))
    before = _our_files()
    result, kinds = await pool.run(reversed_blobs, blobs, b"tail")
    assert result == [*reversed(blobs), b"tail"]
    assert kinds == ["bytes"]  # the callee gets bytes, as TenSEAL needs
    assert not _leaked_since(before)  # the result's file was read out and deleted


async def test_small_or_mixed_lists_are_not_moved_to_files(pool: ComputePool) -> None:
    small = _ciphertext_like(4, 100)
    mixed: list[object] = [*_ciphertext_like(40, 20_000), "not bytes"]
    assert not shared.has_large((small,)) and not shared.has_large((mixed,))
    assert await pool.run(blob_lengths, small) == [len(blob) for blob in small]


def test_a_lent_file_the_child_wrote_returns_to_the_pool_when_collecting_fails() -> None:
    path, capacity = shared.POOL.acquire(BIG * 8)  # lent to the call, written by the child
    spare = shared.Spare(path, capacity)
    in_use = shared.POOL.in_use_bytes
    gone = shared.SharedBlobs("/nonexistent/rory-gone.bin", 0, (10,))
    result = (gone, shared.SharedArray(path, (BIG,), "<f8"))
    with pytest.raises(FileNotFoundError):
        shared.collect(result, [spare])  # fails on the byte strings, before mapping the array
    assert shared.POOL.in_use_bytes == in_use - capacity  # idle again, not leaked in use
    assert path in shared.POOL.tracked() and Path(path).exists()


def test_a_slot_forgets_its_kept_mappings_once_idle(monkeypatch: pytest.MonkeyPatch) -> None:
    """Kept mappings pin their files' pages even after the parent deleted the files: an idle slot
    drops them (here the child side runs in this process, with a short idle time)."""
    monkeypatch.setattr(shared, "KEEP_IDLE_S", 0.05)
    pooled = shared.empty((BIG,), np.float64)
    pooled[:] = 2.0
    described = shared.describe(pooled)
    assert shared.call(total, (described,), {}) == pytest.approx(2.0 * BIG)
    assert shared._kept  # kept for the next call
    for _ in range(500):  # bounded: the timer fires after 0.05 s
        if not shared._kept:
            break
        time.sleep(0.01)
    assert not shared._kept
