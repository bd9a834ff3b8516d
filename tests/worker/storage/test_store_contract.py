"""The ObjectStore contract, run against every backend (local directory, MictlanX via the fake, a
JetStream object store on the session's nats-server)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from tests.worker.storage.conftest import Backend
from worker.errors import BadRequest, CorruptObject, InvalidName, NotFound
from worker.storage import ObjectStore


@pytest.fixture
def backend(contract_backend: Backend) -> Backend:
    """This module's tests run on all three backends (the conftest's ``store`` uses this too)."""
    return contract_backend

DTYPES = ["float32", "float64", "int64"]
SHAPES = [(7,), (7, 3), (7, 3, 2)]


def _array(shape: tuple[int, ...], dtype: str, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.asarray(rng.standard_normal(shape) * 1000).astype(dtype)


def _same(a: np.ndarray, b: np.ndarray) -> None:
    assert b.dtype == a.dtype
    assert b.shape == a.shape
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
@pytest.mark.parametrize("num_chunks", [1, 3, 64])
async def test_ndarray_round_trip(
    store: ObjectStore, dtype: str, shape: tuple[int, ...], num_chunks: int
) -> None:
    array = _array(shape, dtype)
    info = await store.put_ndarray("roundtrip", array, num_chunks=num_chunks)
    assert info.kind == "ndarray"
    assert info.num_chunks == min(num_chunks, shape[0])
    assert info.full_shape == shape and info.full_dtype == dtype
    assert info.size == array.nbytes
    _same(array, await store.get_ndarray("roundtrip"))
    assert await store.info("roundtrip") == info


@pytest.mark.parametrize("shape", [(0,), (0, 3), (0, 3, 2), (1,), (1, 4), (1, 2, 3)], ids=str)
@pytest.mark.parametrize("num_chunks", [1, 5])
async def test_zero_and_one_row(store: ObjectStore, shape: tuple[int, ...], num_chunks: int) -> None:
    array = _array(shape, "float64")
    info = await store.put_ndarray("edge", array, num_chunks=num_chunks)
    assert info.num_chunks == 1  # clamped to the row count, at least one chunk
    assert info.full_shape == shape
    _same(array, await store.get_ndarray("edge"))


@pytest.mark.parametrize("num_chunks", [1, 2, 7, 16, 63, 64])
async def test_chunk_counts(store: ObjectStore, num_chunks: int) -> None:
    array = np.arange(64 * 5, dtype=np.int64).reshape(64, 5)
    info = await store.put_ndarray("many", array, num_chunks=num_chunks)
    assert info.num_chunks == num_chunks
    _same(array, await store.get_ndarray("many"))


async def test_num_chunks_larger_than_rows_is_clamped(store: ObjectStore) -> None:
    array = np.arange(15.0).reshape(5, 3)
    info = await store.put_ndarray("clamped", array, num_chunks=4096)
    assert info.num_chunks == 5
    _same(array, await store.get_ndarray("clamped"))


@pytest.mark.parametrize("num_chunks", [0, -1, 2.5, True])
async def test_bad_num_chunks(store: ObjectStore, num_chunks: object) -> None:
    with pytest.raises(BadRequest):
        await store.put_ndarray("bad", np.zeros((3, 3)), num_chunks=num_chunks)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "array",
    [
        np.array([True, False, True]),
        np.arange(12, dtype=np.uint8).reshape(3, 4),
        np.linspace(0, 1, 6, dtype=np.float16),
        np.arange(6, dtype=np.int32).reshape(2, 3).T,  # not C-contiguous
        np.arange(6, dtype=">f8"),  # non-native byte order is stored natively
        np.array(3.5),  # 0-d (a scalar bias)
    ],
    ids=["bool", "uint8", "float16", "transposed", "big-endian", "0-d"],
)
async def test_other_arrays(store: ObjectStore, array: np.ndarray) -> None:
    await store.put_ndarray("other", array, num_chunks=2)
    got = await store.get_ndarray("other")
    np.testing.assert_array_equal(got, array)
    assert got.dtype == array.dtype.newbyteorder("=")


@pytest.mark.parametrize(
    "value", [np.array(["a", "b"]), np.array([object(), 1], dtype=object), np.zeros(2, np.complex128), [1.0]]
)
async def test_unstorable_arrays(store: ObjectStore, value: object) -> None:
    with pytest.raises(BadRequest):
        await store.put_ndarray("nope", value)  # type: ignore[arg-type]


@pytest.mark.parametrize("shape", [(), (1,), (5,), (40, 3)], ids=str)
async def test_blob_round_trip(store: ObjectStore, shape: tuple[int, ...]) -> None:
    array = _array(shape, "float32")
    info = await store.put_blob("bias", array, tags={"role": "bias"})
    assert info.kind == "blob" and info.full_shape == shape and info.full_dtype == "float32"
    _same(array, await store.get_ndarray("bias"))
    stored = await store.info("bias")
    assert stored.kind == "blob" and stored.tags == {"role": "bias"}


@pytest.mark.parametrize("count", [0, 1, 5, 17])
@pytest.mark.parametrize("num_chunks", [1, 4])
@pytest.mark.parametrize("with_shape", [False, True])
async def test_bytes_list_round_trip(
    store: ObjectStore, count: int, num_chunks: int, with_shape: bool
) -> None:
    items = [bytes([i % 256]) * (i * 37 % 300) for i in range(count)]
    shape = (count,) if with_shape else None
    info = await store.put_bytes_list("ctxts", items, num_chunks=num_chunks, shape=shape)
    assert info.kind == "bytes_list"
    assert info.full_shape == shape and info.full_dtype is None
    assert info.num_chunks == max(1, min(num_chunks, count))
    assert await store.get_bytes_list("ctxts") == items
    assert (await store.info("ctxts")).full_shape == shape


async def test_bytes_list_matrix_shape(store: ObjectStore) -> None:
    items = [f"ct-{r}-{c}".encode() * 10 for r in range(3) for c in range(4)]
    info = await store.put_bytes_list("distances", items, num_chunks=3, shape=[3, 4])
    assert info.full_shape == (3, 4)
    assert await store.get_bytes_list("distances") == items


@pytest.mark.parametrize("items", [b"abc", "abc", [b"ok", "text"], [b"ok", 3]])
async def test_bytes_list_rejects_non_bytes(store: ObjectStore, items: object) -> None:
    with pytest.raises(BadRequest):
        await store.put_bytes_list("bad", items)  # type: ignore[arg-type]


async def test_kind_mismatch(store: ObjectStore) -> None:
    await store.put_ndarray("arr", np.zeros((2, 2)))
    await store.put_bytes_list("lst", [b"x"])
    with pytest.raises(BadRequest):
        await store.get_bytes_list("arr")
    with pytest.raises(BadRequest):
        await store.get_ndarray("lst")


async def test_tags(store: ObjectStore) -> None:
    info = await store.put_ndarray("tagged", np.ones((4, 2)), num_chunks=2, tags={"job": "j-1", "step": "2"})
    assert info.tags == {"job": "j-1", "step": "2"}
    assert (await store.info("tagged")).tags == {"job": "j-1", "step": "2"}
    for bad in ({"shape": "(1,)"}, {"num_chunks": "9"}, {"x": 1}, {"": "v"}):
        with pytest.raises(BadRequest):
            await store.put_ndarray("tagged2", np.ones(2), tags=bad)  # type: ignore[arg-type]


async def test_missing_keys(store: ObjectStore) -> None:
    with pytest.raises(NotFound):
        await store.get_ndarray("absent")
    with pytest.raises(NotFound):
        await store.get_bytes_list("absent")
    with pytest.raises(NotFound):
        await store.info("absent")
    assert not await store.exists("absent")
    assert await store.delete("absent") == 0


async def test_exists_delete_list(store: ObjectStore) -> None:
    assert await store.list_balls() == []
    await store.put_ndarray("b1", np.zeros((6, 2)), num_chunks=3)
    await store.put_bytes_list("b2", [b"a", b"b"])
    assert await store.exists("b1") and await store.exists("b2")
    assert await store.list_balls() == ["b1", "b2"]
    assert await store.delete("b1") >= 3
    assert not await store.exists("b1")
    assert await store.list_balls() == ["b2"]
    assert await store.delete("b1") == 0


async def test_overwrite_replaces(store: ObjectStore) -> None:
    await store.put_ndarray("ow", np.ones((10, 3)), num_chunks=5, tags={"v": "1"})
    new = np.arange(8, dtype=np.int64)
    info = await store.put_ndarray("ow", new, num_chunks=2, tags={"v": "2"})
    assert info.num_chunks == 2
    _same(new, await store.get_ndarray("ow"))
    stored = await store.info("ow")
    assert stored.num_chunks == 2 and stored.tags == {"v": "2"} and stored.full_shape == (8,)


async def test_writing_the_same_bytes_again_is_a_new_version(store: ObjectStore) -> None:
    """Every write is a version of its own, even of identical bytes: by its etag (local) or by its
    write time beside the content etag (MictlanX, NATS), and every call names it the same way."""
    data = _array((6, 4), "float64")
    first = await store.put_ndarray("same", data, num_chunks=2)
    await asyncio.sleep(0.005)  # a later write (content-hash backends stamp it in milliseconds)
    second = await store.put_ndarray("same", data.copy(), num_chunks=2)
    assert first.etag is not None and second.etag is not None
    assert (second.etag, second.written) != (first.etag, first.written)
    info = await store.info("same")
    _, read = await store.fetch_ndarray("same")
    assert read is not None
    assert (info.etag, info.written) == (read.etag, read.written) == (second.etag, second.written)


@pytest.mark.parametrize("name", ["a__b", "a.b", "_x", "x_", "a--", "ñandú", "", "a/b", "../etc", "x" * 201])
async def test_names_the_router_would_rewrite(backend: Backend, name: str) -> None:
    before = len(backend.router.requests)
    with pytest.raises(InvalidName):
        await backend.store.put_ndarray(name, np.zeros(3))
    with pytest.raises(InvalidName):
        await backend.store.get_ndarray(name)
    with pytest.raises(InvalidName):
        await backend.store.delete(name)
    assert len(backend.router.requests) == before  # nothing reached MictlanX


@pytest.mark.parametrize("name", ["ball_0", "a-b", "A1", "x1encryptedudm", "encrypted-abc_12"])
async def test_fixed_point_names_are_accepted(store: ObjectStore, name: str) -> None:
    await store.put_ndarray(name, np.ones(3))
    assert await store.exists(name)


async def test_corrupt_chunk_is_detected(backend: Backend) -> None:
    array = _array((12, 4), "float64")
    await backend.store.put_ndarray("bad", array, num_chunks=3)
    await backend.corrupt_chunk("bad", index=1, offset=17)
    with pytest.raises(CorruptObject):
        await backend.store.get_ndarray("bad")


async def test_corrupt_bytes_list_is_detected(backend: Backend) -> None:
    await backend.store.put_bytes_list("badl", [b"x" * 100, b"y" * 100], num_chunks=2)
    await backend.corrupt_chunk("badl", index=0, offset=50)
    with pytest.raises(CorruptObject):
        await backend.store.get_bytes_list("badl")


async def test_concurrent_puts_and_gets(store: ObjectStore) -> None:
    arrays = {f"c{i}": _array((20 + i, 3), "float64", seed=i) for i in range(12)}
    await asyncio.gather(
        *(store.put_ndarray(k, a, num_chunks=1 + i % 5) for i, (k, a) in enumerate(arrays.items()))
    )
    results = await asyncio.gather(*(store.get_ndarray(k) for k in arrays for _ in range(2)))
    for (_key, array), got in zip(
        [(k, a) for k, a in arrays.items() for _ in range(2)], results, strict=True
    ):
        _same(array, got)
    assert await store.list_balls() == sorted(arrays)


async def test_ping(store: ObjectStore) -> None:
    assert await store.ping() is True
    assert store.backend in ("local", "mictlanx", "nats")


async def test_large_objects_take_the_threaded_paths(store: ObjectStore) -> None:
    array = _array((1200, 1000), "float64")  # 9.6 MB: planned and hashed off the event loop
    await store.put_ndarray("large", array, num_chunks=3)
    _same(array, await store.get_ndarray("large"))
    await store.put_blob("largeblob", array)
    _same(array, await store.get_ndarray("largeblob"))
    items = [bytes([i]) * (1 << 20) for i in range(9)]
    await store.put_bytes_list("largelist", items, num_chunks=2)
    assert await store.get_bytes_list("largelist") == items
