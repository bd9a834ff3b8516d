"""Storage objects are untrusted input too: budgets and lying tags, on both backends.

* Budget (MAX_OBJECT_BYTES): a ball whose metadata declares more bytes than the budget is refused with
  PayloadTooLarge (400) before any data is read or any output is allocated -- also when the tags lie
  about a terabyte. An absurd ``num_chunks`` is refused after fetching chunk 0's metadata only.
* Lying tags: shape, dtype, checksum, index or chunk count that disagree with the bytes or with each
  other are CorruptObject (422); tag text is parsed, never evaluated.

Local backend: the manifest is edited on disk. MictlanX: the fake router's stored metadata is edited.
"""

from __future__ import annotations

import asyncio
import json
import tracemalloc
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.fakes.mictlanx_router import FakeRouter
from worker.errors import BadRequest, CorruptObject, NotFound, PayloadTooLarge
from worker.storage import LocalStore, MictlanXStore, ObjectStore, RetryPolicy, parse_mictlanx_uri
from worker.storage.codec import MAX_SMALL_CHUNKS

BUDGET = 64 * 1024
TIB = 1 << 40
FAST = RetryPolicy(max_retries=2, delay=0.001, backoff_factor=1.0, max_delay=0.01, jitter=False)


@dataclass
class Backend:
    """A store with a small budget, an unbounded one to write with, and a way to edit metadata."""

    name: str
    store: ObjectStore  # budget BUDGET
    writer: ObjectStore  # default budget
    edit: Callable[[str, int, Callable[[dict[str, Any]], None]], None]
    data_reads: Callable[[], int]  # data requests/reads so far (to show nothing was read)


def _local_edit(root: Path) -> Callable[[str, int, Callable[[dict[str, Any]], None]], None]:
    def edit(ball: str, index: int, change: Callable[[dict[str, Any]], None]) -> None:
        bucket = root / "rory"
        version = (bucket / f"{ball}.ref").read_text().split()[0]  # current, then previous
        path = bucket / f"{ball}.{version}" / "manifest.json"
        manifest = json.loads(path.read_text())
        record = manifest["chunks"][index]
        change(record)
        blocks = max(1, -(-record["size"] // manifest["block_size"]))
        for field in ("crc32", "xxh3"):  # keep the manifest well-formed: only the tags/size lie
            if field in record and len(record[field]) != blocks:
                record[field] = (record[field] + [0] * blocks)[:blocks]
        path.write_text(json.dumps(manifest))

    return edit


def _router_edit(router: FakeRouter) -> Callable[[str, int, Callable[[dict[str, Any]], None]], None]:
    def edit(ball: str, index: int, change: Callable[[dict[str, Any]], None]) -> None:
        change(router.objects[("rory", f"{ball}_{index}")].metadata)

    return edit


@pytest.fixture(params=["local", "mictlanx"])
async def backend(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch) -> AsyncIterator[Backend]:
    if request.param == "local":
        import worker.storage.local as local

        reads = {"n": 0}
        original = local._read_pieces

        def counting(pieces: Any, verify: bool) -> None:
            reads["n"] += 1
            original(pieces, verify)

        monkeypatch.setattr(local, "_read_pieces", counting)
        store = LocalStore(tmp_path, max_object_bytes=BUDGET)
        writer = LocalStore(tmp_path)
        yield Backend("local", store, writer, _local_edit(tmp_path), lambda: reads["n"])
        await store.aclose()
        await writer.aclose()
        return
    async with FakeRouter() as router:
        routers = parse_mictlanx_uri(router.uri)
        store = MictlanXStore(routers, max_object_bytes=BUDGET, retry=FAST, timeout=5.0)
        writer = MictlanXStore(routers, retry=FAST, timeout=5.0)
        data_gets = lambda: router.count("GET", r"/buckets/rory/(?!metadata)[^/]+$")  # noqa: E731
        yield Backend("mictlanx", store, writer, _router_edit(router), data_gets)
        await store.aclose()
        await writer.aclose()


def _set_tag(tag: str, value: str) -> Callable[[dict[str, Any]], None]:
    return lambda record: record["tags"].__setitem__(tag, value)


# ------------------------------------------------------------------------------------ budgets
async def test_within_budget_reads_normally(backend: Backend) -> None:
    array = np.arange(BUDGET // 8 // 2, dtype=np.float64).reshape(-1, 4)
    await backend.writer.put_ndarray("ok", array, num_chunks=3)
    np.testing.assert_array_equal(await backend.store.get_ndarray("ok"), array)


@pytest.mark.parametrize("kind", ["ndarray", "blob", "bytes_list"])
async def test_over_budget_is_refused_before_reading(backend: Backend, kind: str) -> None:
    big = np.zeros((BUDGET // 8 + 64, 1))
    if kind == "ndarray":
        await backend.writer.put_ndarray("big", big, num_chunks=4)
    elif kind == "blob":
        await backend.writer.put_blob("big", big)
    else:
        await backend.writer.put_bytes_list("big", [b"x" * 1024] * 80, num_chunks=4)
    before = backend.data_reads()
    read = backend.store.get_bytes_list if kind == "bytes_list" else backend.store.get_ndarray
    with pytest.raises(PayloadTooLarge, match="MAX_OBJECT_BYTES"):
        await read("big")
    with pytest.raises(PayloadTooLarge):
        await backend.store.info("big")  # handlers ask info first: they fail before any download
    assert backend.data_reads() == before
    assert (await backend.writer.info("big")).size > BUDGET  # the writer's default budget reads it


async def test_terabyte_lie_is_refused_without_allocating(backend: Backend) -> None:
    """Chunk 0 claims 2**37 float64 rows (1 TiB) and a matching size: refused from the metadata."""
    await backend.writer.put_ndarray("lie", np.zeros((4, 1)), num_chunks=1)

    def lie(record: dict[str, Any]) -> None:
        record["size"] = TIB
        record["tags"].update(shape=f"({TIB // 8}, 1)", full_shape=f"({TIB // 8}, 1)")

    backend.edit("lie", 0, lie)
    tracemalloc.start()
    try:
        with pytest.raises(PayloadTooLarge):
            await backend.store.get_ndarray("lie")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 * 1024  # parsing the lying metadata, not a terabyte
    assert backend.data_reads() == 0


async def test_absurd_chunk_count_is_refused_from_chunk_zero(backend: Backend) -> None:
    await backend.writer.put_ndarray("many", np.zeros((4, 1)), num_chunks=2)
    backend.edit("many", 0, _set_tag("num_chunks", str(1_000_000)))
    with pytest.raises(CorruptObject):
        await backend.store.get_ndarray("many")
    assert backend.data_reads() == 0


async def test_absurd_chunk_count_costs_one_metadata_request() -> None:
    async with FakeRouter() as router:
        store = MictlanXStore(parse_mictlanx_uri(router.uri), max_object_bytes=BUDGET, retry=FAST)
        try:
            await store.put_ndarray("many", np.zeros((8, 1)), num_chunks=2)
            router.objects[("rory", "many_0")].metadata["tags"]["num_chunks"] = str(MAX_SMALL_CHUNKS + 1)
            before = router.count("GET", r"/metadata/")
            with pytest.raises(CorruptObject, match="splits that finely"):
                await store.info("many")
            assert router.count("GET", r"/metadata/") - before == 1
            # Big pieces may be many, but then num_chunks x chunk 0's size must fit the budget.
            router.objects[("rory", "many_0")].metadata["tags"]["num_chunks"] = "1000"
            router.objects[("rory", "many_0")].metadata["size"] = 8192
            router.objects[("rory", "many_0")].metadata["tags"]["shape"] = "(1024, 1)"
            before = router.count("GET", r"/metadata/")
            with pytest.raises(PayloadTooLarge, match="num_chunks"):
                await store.info("many")
            assert router.count("GET", r"/metadata/") - before == 1
        finally:
            await store.aclose()


async def test_a_lying_byte_list_chunk_count_costs_a_few_requests() -> None:
    """A 4 KiB byte-list chunk 0 claims 1,000,000 chunks: refused from chunk 0 by the budget; and
    with the default budget the read stops at the first missing chunk, never more than
    ``max_workers`` requests past chunk 0 and without a task per claimed chunk (the unpatched store
    created all N-1 tasks up front: 200k blocked the loop 5.4 s and took 357 MiB)."""
    async with FakeRouter() as router:
        routers = parse_mictlanx_uri(router.uri)
        async with MictlanXStore(routers, retry=FAST, timeout=30.0) as writer:
            await writer.put_bytes_list("lies", [b"x" * 4092])  # one 4096-byte msgpack chunk
        stored = router.objects[("rory", "lies_0")]
        assert stored.metadata["size"] == 4096  # not refused by the "splits that finely" rule
        stored.metadata["tags"]["num_chunks"] = str(1_000_000)
        async with MictlanXStore(routers, max_object_bytes=BUDGET, retry=FAST, timeout=30.0) as store:
            before = router.count("GET", r"/metadata/")
            with pytest.raises(PayloadTooLarge, match="num_chunks=1000000"):
                await store.get_bytes_list("lies")
            assert router.count("GET", r"/metadata/") - before == 1
        async with MictlanXStore(routers, retry=FAST, timeout=30.0) as roomy:  # 4 GiB: the bound passes
            before = router.count("GET", r"/metadata/")
            tracemalloc.start()
            try:
                with pytest.raises(NotFound, match="chunk 1 of 1000000"):
                    await asyncio.wait_for(roomy.get_bytes_list("lies"), 30)  # a hang guard only
                _, peak = tracemalloc.get_traced_memory()
            finally:
                tracemalloc.stop()
            assert router.count("GET", r"/metadata/") - before <= 1 + roomy.max_workers
            assert peak < 8 * 1024 * 1024


async def test_bounded_pulls_work_lazily() -> None:
    """``_bounded`` takes a generator and runs at most ``max_workers`` items at a time; a failure
    stops the iteration: a million claimed items cost a handful of coroutines."""
    async with (
        FakeRouter() as router,
        MictlanXStore(parse_mictlanx_uri(router.uri), max_workers=3, retry=FAST) as store,
    ):
        made, running, most = 0, 0, 0

        def factories(fail_at: int | None) -> Iterator[Callable[[], Awaitable[int]]]:
            nonlocal made
            for index in range(1_000_000 if fail_at is not None else 50):
                made += 1

                async def work(index: int = index) -> int:
                    nonlocal running, most
                    running += 1
                    most = max(most, running)
                    try:
                        await asyncio.sleep(0)
                        if index == fail_at:
                            raise NotFound(f"item {index}")
                        return index * 2
                    finally:
                        running -= 1

                yield work

        assert await store._bounded(factories(None)) == [index * 2 for index in range(50)]
        assert most == 3
        made, most = 0, 0
        with pytest.raises(NotFound, match="item 5"):
            await store._bounded(factories(5))
        assert made <= 5 + 3  # the items up to the failure (0..5) and the other runners' current ones
        assert most <= 3 and running == 0
        assert await store._bounded([]) == []


def test_budget_comes_from_settings(tmp_path: Path) -> None:
    from worker.settings import load_settings
    from worker.storage import open_store

    settings = load_settings(storage_path=str(tmp_path), max_object_bytes=123456, storage_backend="local")
    assert open_store(settings).max_object_bytes == 123456  # type: ignore[attr-defined]
    settings = load_settings(mictlanx_uri="mictlanx://r@127.0.0.1:1", max_object_bytes=654321)
    assert open_store(settings).max_object_bytes == 654321  # type: ignore[attr-defined]


# ------------------------------------------------------------------------------------ lying tags
LIES: dict[str, Callable[[dict[str, Any]], None]] = {
    "shape-bigger-than-bytes": _set_tag("shape", "(3, 2)"),
    "shape-smaller-than-bytes": _set_tag("shape", "(1, 2)"),
    "full-shape-disagrees": _set_tag("full_shape", "(5, 2)"),
    "shape-is-code": _set_tag("shape", "__import__('os').system('touch /tmp/rory-pwned')"),
    "dtype-not-allowed": _set_tag("dtype", "object"),
    "dtype-reinterpreted": _set_tag("dtype", "int64"),  # same itemsize, but full_dtype says float64
    "dtype-wrong-size": _set_tag("dtype", "float32"),
    "index-wrong": _set_tag("index", "1"),
    "num-chunks-wrong": _set_tag("num_chunks", "3"),
    "kind-unknown": _set_tag("rory_kind", "pickle"),
    "size-wrong": lambda record: record.__setitem__("size", record["size"] + 8),
    "checksum-not-hex": lambda record: record.__setitem__("checksum", "zz" * 32),
}


@pytest.mark.parametrize("lie", list(LIES))
async def test_lying_tags_are_corrupt(backend: Backend, lie: str) -> None:
    array = np.arange(8.0).reshape(4, 2)
    await backend.writer.put_ndarray("t", array, num_chunks=2)
    backend.edit("t", 0, LIES[lie])
    expected: tuple[type[Exception], ...] = (CorruptObject,)
    if lie == "num-chunks-wrong" and backend.name == "mictlanx":
        expected = (NotFound, CorruptObject)  # chunk 2 of 3 does not exist: the ball is incomplete
    with pytest.raises(expected):
        await backend.store.get_ndarray("t")
    assert not Path("/tmp/rory-pwned").exists()


async def test_lying_checksum_is_corrupt(backend: Backend) -> None:
    array = np.arange(8.0)
    await backend.writer.put_ndarray("c", array)
    if backend.name == "local":
        def lie(record: dict[str, Any]) -> None:  # every block hash the manifest records
            for field in ("crc32", "xxh3"):
                if field in record:
                    record[field] = [record[field][0] ^ 1]

        backend.edit("c", 0, lie)
    else:
        backend.edit("c", 0, lambda record: record.__setitem__("checksum", "ab" * 32))
    with pytest.raises(CorruptObject, match="checksum"):
        await backend.store.get_ndarray("c")


async def test_lying_full_checksum_on_a_byte_list(backend: Backend) -> None:
    await backend.writer.put_bytes_list("ct", [b"a", b"bb", b"ccc"], num_chunks=2)
    backend.edit("ct", 0, _set_tag("full_checksum", "cd" * 32))  # the chunks claim different writes
    backend.edit("ct", 1, _set_tag("full_checksum", "ef" * 32))
    with pytest.raises(CorruptObject, match="full_checksum"):
        await backend.store.get_bytes_list("ct")


async def test_records_tag_lie_on_a_byte_list(backend: Backend) -> None:
    await backend.writer.put_bytes_list("ct", [b"a", b"bb", b"ccc"], num_chunks=1)
    backend.edit("ct", 0, _set_tag("records", "4"))
    with pytest.raises(CorruptObject, match="records"):
        await backend.store.get_bytes_list("ct")


# ------------------------------------------------------------------------------------ derived sizes
def test_check_allocation_for_derived_arrays() -> None:
    from types import SimpleNamespace

    from worker.handlers.common import check_allocation

    ctx = SimpleNamespace(settings=SimpleNamespace(max_object_bytes=BUDGET))
    check_allocation(ctx, (BUDGET // 8,), 8, "distances")  # exactly the budget
    with pytest.raises(PayloadTooLarge, match="distances"):
        check_allocation(ctx, (10**5, 10**5), 8, "distances")
    with pytest.raises(PayloadTooLarge):
        check_allocation(ctx, (2**62, 2**62, 2**62), 8, "huge")  # Python ints: no overflow
    with pytest.raises(BadRequest):
        check_allocation(ctx, (-1, 4), 8, "negative")
