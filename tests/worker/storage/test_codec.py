"""The chunk format: names, tag parsing (never evaluated), row splitting, layout validation."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from worker.errors import BadRequest, CorruptObject, InvalidName
from worker.storage.codec import (
    ChunkMeta,
    format_shape,
    parse_dtype,
    parse_shape,
    plan_blob,
    plan_bytes_list,
    plan_ndarray,
    read_layout,
    split_rows,
    unpack_bytes_list,
)
from worker.storage.names import check_ball_id, check_bucket_id, sanitize


@pytest.mark.parametrize(
    ("raw", "clean"),
    [
        ("a__b", "a-b"),
        ("a.b", "ab"),
        ("_x", ""),
        ("x_", ""),
        ("a--", "a"),
        ("ñandú", "and"),
        ("ball_0", "ball_0"),
        ("a-b_c", "a-b_c"),
        ("-a", "a"),
        ("", ""),
    ],
)
def test_sanitize_matches_the_router(raw: str, clean: str) -> None:
    assert sanitize(raw) == clean


def test_name_checks() -> None:
    assert check_ball_id("x1encryptedudm") == "x1encryptedudm"
    for bad in ("a__b", "x_", "", None, 3, "a" * 201):
        with pytest.raises(InvalidName):
            check_ball_id(bad)
    with pytest.raises(InvalidName):
        check_bucket_id("data")  # shadowed by /buckets/data/{task}/chunked


@pytest.mark.parametrize(
    ("text", "shape"),
    [
        ("(3, 4)", (3, 4)),
        ("(5,)", (5,)),
        ("()", ()),
        ("[3, 4]", (3, 4)),
        ("(0, 3)", (0, 3)),
        (" ( 2 ,3 , ) ", (2, 3)),
        ("[7]", (7,)),
    ],
)
def test_parse_shape(text: str, shape: tuple[int, ...]) -> None:
    assert parse_shape(text) == shape


@pytest.mark.parametrize(
    "text",
    [
        "3",
        "(3, 4]",
        "(-1, 2)",
        "(3.0,)",
        "(3,,)",
        "(,)",
        "__import__('os').system('x')",
        "(1, 2) + (3,)",
        "(" + ", ".join(["1"] * 33) + ")",
        "(" * 600,
        None,
        5,
    ],
)
def test_parse_shape_rejects(text: object) -> None:
    with pytest.raises(CorruptObject):
        parse_shape(text)


def test_format_shape_is_python_repr() -> None:
    assert [format_shape(s) for s in [(3, 4), (5,), (), (2, 3, 4)]] == ["(3, 4)", "(5,)", "()", "(2, 3, 4)"]


def test_parse_dtype_allow_list() -> None:
    for name in ("bool", "int8", "int64", "uint16", "float16", "float32", "float64"):
        assert parse_dtype(name) == np.dtype(name)
    for bad in ("object", "O", "<U10", "float128", "complex128", "V8", ">f8", "np.float64", "", None):
        with pytest.raises(CorruptObject):
            parse_dtype(bad)


@pytest.mark.parametrize(
    ("rows", "k", "sizes"),
    [
        (10, 3, [3, 3, 4]),
        (10, 4, [2, 2, 2, 4]),
        (10, 6, [1, 1, 1, 1, 1, 5]),
        (2, 4, [1, 1]),
        (5, 2, [2, 3]),
        (0, 4, [0]),
        (1, 64, [1]),
        (64, 64, [1] * 64),
    ],
)
def test_split_rows(rows: int, k: int, sizes: list[int]) -> None:
    bounds = split_rows(rows, k)
    assert [stop - start for start, stop in bounds] == sizes
    assert bounds[0][0] == 0 and bounds[-1][1] == rows


def test_split_rows_never_loops_on_huge_counts() -> None:
    assert len(split_rows(3, 10**12)) == 3
    for bad in (0, -2, 1.5, True, "2"):
        with pytest.raises(BadRequest):
            split_rows(3, bad)  # type: ignore[arg-type]


def _metas(plan_chunks: list) -> list[ChunkMeta]:  # type: ignore[type-arg]
    return [ChunkMeta(c.key, c.size, None, dict(c.tags)) for c in plan_chunks]


@settings(max_examples=60, deadline=None)
@given(
    rows=st.integers(0, 40),
    tail=st.lists(st.integers(1, 4), max_size=2),
    k=st.integers(1, 50),
    dtype=st.sampled_from(["float32", "float64", "int64", "uint8", "bool"]),
)
def test_plan_then_layout_round_trip(rows: int, tail: list[int], k: int, dtype: str) -> None:
    array = np.arange(rows * int(np.prod(tail or [1]))).reshape(rows, *tail).astype(dtype)
    plan = plan_ndarray("b", array, k, None)
    assert len(plan.chunks) == max(1, min(k, rows))
    layout = read_layout("b", _metas(plan.chunks))
    assert layout.kind == "ndarray" and layout.full_shape == array.shape and layout.dtype == array.dtype
    out, flat = layout.allocate()
    for chunk, offset in zip(plan.chunks, layout.offsets, strict=True):
        flat[offset : offset + chunk.size] = np.frombuffer(chunk.data, np.uint8)
    np.testing.assert_array_equal(out, array)


def test_layout_rejects_inconsistent_chunks() -> None:
    plan = plan_ndarray("b", np.zeros((6, 2)), 3, None)
    metas = _metas(plan.chunks)
    cases = {
        "size": [metas[0], ChunkMeta(metas[1].key, 8, None, metas[1].tags), metas[2]],
        "num_chunks": [
            metas[0],
            ChunkMeta(metas[1].key, 32, None, {**metas[1].tags, "num_chunks": "4"}),
            metas[2],
        ],
        "dtype": [metas[0], ChunkMeta(metas[1].key, 32, None, {**metas[1].tags, "dtype": "int64"}), metas[2]],
        "stack": [
            metas[0],
            ChunkMeta(metas[1].key, 32, None, {**metas[1].tags, "shape": "(1, 4)"}),
            metas[2],
        ],
        "index": [metas[0], ChunkMeta(metas[1].key, 32, None, {**metas[1].tags, "index": "2"}), metas[2]],
        "key": [metas[0], ChunkMeta("other_1", 32, None, metas[1].tags), metas[2]],
        "kind": [
            metas[0],
            ChunkMeta(metas[1].key, 32, None, {**metas[1].tags, "rory_kind": "blob"}),
            metas[2],
        ],
        "full_shape": [ChunkMeta(m.key, m.size, None, {**m.tags, "full_shape": "(7, 2)"}) for m in metas],
        "checksum": [metas[0], ChunkMeta(metas[1].key, 32, "nothex", metas[1].tags), metas[2]],
    }
    for name, broken in cases.items():
        with pytest.raises(CorruptObject):
            read_layout("b", broken)
            pytest.fail(f"{name} accepted")


def test_blob_and_bytes_list_layouts() -> None:
    array = np.arange(100, dtype=np.float64).reshape(25, 4)
    blob = plan_blob("bb", array, None, piece_size=300)
    assert len(blob.chunks) == 3 and sum(c.size for c in blob.chunks) == array.nbytes
    layout = read_layout("bb", _metas(blob.chunks))
    assert layout.kind == "blob" and layout.full_shape == (25, 4)
    items = [b"\x00" * 5, b"", b"abc"]
    lst = plan_bytes_list("bl", items, 2, (3,), None)
    layout = read_layout("bl", _metas(lst.chunks))
    assert layout.kind == "bytes_list" and layout.full_shape == (3,) and layout.dtype is None
    decoded = [i for c in lst.chunks for i in unpack_bytes_list(c.key, c.data, c.tags)]
    assert decoded == items
    with pytest.raises(BadRequest):
        layout.allocate()


def test_unpack_bytes_list_is_strict() -> None:
    import msgpack

    for payload in (msgpack.packb({"a": 1}), msgpack.packb([1, 2]), msgpack.packb(["text"]), b"\x80\x04junk"):
        with pytest.raises(CorruptObject):
            unpack_bytes_list("k", payload, {})
    with pytest.raises(CorruptObject):
        unpack_bytes_list("k", msgpack.packb([b"a"]), {"records": "2"})
