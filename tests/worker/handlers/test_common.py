"""Unit tests of the handler helpers against a real local store (no NATS needed)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from worker.errors import BadRequest, Conflict, NotFound, StorageUnavailable, ValidationFailed
from worker.handlers.common import (
    WRITE_TOKEN_TAG,
    WRITER_TAG,
    Write,
    check_integral,
    check_k,
    check_numeric,
    check_owned_outputs,
    check_shape,
    labels_payload,
    put_all,
    result_chunks,
)
from worker.settings import Settings
from worker.storage.local import LocalStore


class FailingStore:
    """Delegates to a real store but fails the puts of chosen keys (a storage outage mid-step)."""

    def __init__(self, store: LocalStore, fail: set[str]) -> None:
        self._store = store
        self.fail = fail

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **kwargs: Any) -> Any:
        if ball_id in self.fail:
            raise StorageUnavailable(f"injected failure writing {ball_id}")
        return await self._store.put_ndarray(ball_id, array, **kwargs)


@pytest.fixture
async def store(tmp_path):
    s = LocalStore(tmp_path / "css")
    yield s
    await s.aclose()


def _ctx(store: Any, op: str = "test.op", **settings: Any) -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(**settings), store=store, op=op)


async def _snapshot(store: LocalStore) -> dict[str, bytes]:
    return {ball: (await store.get_ndarray(ball)).tobytes() for ball in await store.list_balls()}


async def test_result_chunks_prefers_the_command():
    ctx = _ctx(None, num_chunks=4)
    assert result_chunks(ctx, SimpleNamespace(num_chunks=None)) == 4
    assert result_chunks(ctx, SimpleNamespace(num_chunks=2)) == 2
    assert result_chunks(ctx, SimpleNamespace()) == 4


async def test_labels_inline_and_stored(store):
    ctx = _ctx(store, max_message_bytes=4096)
    small = await labels_payload(ctx, np.array([0, 1, 2]), "lv")
    assert small == {"label_vector": [0, 1, 2]}
    assert not await store.exists("lv")
    big = np.arange(2000) % 7
    payload = await labels_payload(ctx, big, "lv")
    assert payload == {"label_vector_id": "lv"}
    np.testing.assert_array_equal(await store.get_ndarray("lv"), big)


async def test_check_shape(store):
    await store.put_ndarray("e", np.zeros((5, 2, 3)), num_chunks=2)
    ctx = _ctx(store)
    info = await check_shape(ctx, "e", None)
    assert tuple(info.full_shape) == (5, 2, 3)
    await check_shape(ctx, "e", [5, 2, 3])
    await check_shape(ctx, "e", [5, 2], allow_prefix=True)
    with pytest.raises(ValidationFailed):
        await check_shape(ctx, "e", [5, 2])
    with pytest.raises(ValidationFailed):
        await check_shape(ctx, "e", [6, 2, 3])
    with pytest.raises(NotFound):
        await check_shape(ctx, "missing", [1])


def test_check_k_and_types():
    check_k(3, 3)
    with pytest.raises(BadRequest):
        check_k(4, 3)
    with pytest.raises(ValidationFailed):
        check_numeric(np.array(["a"]), "x")
    with pytest.raises(ValidationFailed):
        check_numeric(np.zeros((2, 2)), "x", ndim=3)
    with pytest.raises(ValidationFailed):
        check_integral(np.array([0.5]), "x")
    assert check_integral(np.array([1.0, 2.0]), "x").dtype == np.int64


async def test_put_all_new_keys_are_removed_when_one_fails(store):
    await store.put_ndarray("old", np.ones(3))
    before = await _snapshot(store)
    ctx = _ctx(FailingStore(store, {"b"}))
    writes = [Write("a", np.zeros(4)), Write("b", np.zeros(4)), Write("old", np.zeros(3))]
    with pytest.raises(StorageUnavailable):
        await put_all(ctx, writes)
    assert await _snapshot(store) == before


async def test_put_all_overwrites_in_order_and_keeps_later_ones(store):
    await store.put_ndarray("first", np.ones(3))
    await store.put_ndarray("last", np.ones(3))
    ctx = _ctx(FailingStore(store, {"last"}))
    with pytest.raises(StorageUnavailable):
        await put_all(
            ctx, [Write("new", np.zeros(2)), Write("first", np.zeros(3)), Write("last", np.zeros(3))]
        )
    # The new object is gone, "first" was overwritten (documented), "last" (the step's input) is intact.
    assert not await store.exists("new")
    np.testing.assert_array_equal(await store.get_ndarray("first"), np.zeros(3))
    np.testing.assert_array_equal(await store.get_ndarray("last"), np.ones(3))


class Recording(FailingStore):
    """Records when each put starts and ends; ``atomic`` is the overwrite the store declares."""

    def __init__(self, store: LocalStore, atomic: bool) -> None:
        super().__init__(store, set())
        self.atomic = atomic
        self.events: list[tuple[str, str]] = []

    @property
    def atomic_overwrite(self) -> bool:
        return self.atomic

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **kwargs: Any) -> Any:
        self.events.append(("start", ball_id))
        try:
            return await self._store.put_ndarray(ball_id, array, **kwargs)
        finally:
            self.events.append(("end", ball_id))


@pytest.mark.parametrize("atomic", [True, False])
async def test_put_all_overwrites_the_last_key_after_all_the_others(store, atomic):
    """The step's own input (last) is replaced only once every other write has landed; on a store
    whose overwrite is atomic the others go together, elsewhere (delete-then-put) one at a time."""
    for key in "abc":
        await store.put_ndarray(key, np.ones(3))
    recording = Recording(store, atomic)
    await put_all(_ctx(recording), [Write(key, np.zeros(3)) for key in "abc"])
    events = recording.events
    assert events.index(("start", "c")) > max(events.index(("end", "a")), events.index(("end", "b")))
    if atomic:
        assert events[:2] == [("start", "a"), ("start", "b")]
    else:
        assert events == [(edge, key) for key in "abc" for edge in ("start", "end")]
    for key in "abc":
        np.testing.assert_array_equal(await store.get_ndarray(key), np.zeros(3))


async def test_put_all_success(store):
    ctx = _ctx(store)
    await put_all(
        ctx, [Write("a", np.arange(6).reshape(3, 2), num_chunks=2), Write("b", np.ones(1), kind="blob")]
    )
    np.testing.assert_array_equal(await store.get_ndarray("a"), np.arange(6).reshape(3, 2))
    assert (await store.info("b")).kind == "blob"


async def test_put_all_tags_every_object_with_its_writer_and_one_token(store):
    ctx = _ctx(store, op="ml.lr.train")
    await put_all(ctx, [Write("a", np.zeros(2)), Write("b", np.ones(1), kind="blob")])
    a, b = await store.info("a"), await store.info("b")
    assert a.tags[WRITER_TAG] == b.tags[WRITER_TAG] == "ml.lr.train"
    assert a.tags[WRITE_TOKEN_TAG] == b.tags[WRITE_TOKEN_TAG]
    await put_all(_ctx(store, op="ml.lr.train"), [Write("a", np.zeros(2), tags={"role": "w"})])
    again = await store.info("a")
    assert again.tags["role"] == "w" and again.tags[WRITE_TOKEN_TAG] != a.tags[WRITE_TOKEN_TAG]


async def test_check_owned_outputs(store):
    await store.put_ndarray("owner", np.ones(2))  # uploaded by the data owner: no writer tag
    await put_all(_ctx(store, op="ml.lr.predict"), [Write("other", np.ones(2))])
    await put_all(_ctx(store, op="ml.lr.train"), [Write("mine", np.ones(2))])
    ctx = _ctx(store, op="ml.lr.train")
    await check_owned_outputs(ctx, "mine", "absent")
    for name in ("owner", "other"):
        with pytest.raises(Conflict, match=name):
            await check_owned_outputs(ctx, "mine", name)


class RacingStore(FailingStore):
    """Fails the put of ``key`` right after another job committed that same key (its own tags)."""

    def __init__(self, store: LocalStore, key: str) -> None:
        super().__init__(store, set())
        self.key = key

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **kwargs: Any) -> Any:
        if ball_id == self.key:
            await self._store.put_ndarray(ball_id, np.full(3, 7.0), tags={WRITE_TOKEN_TAG: "other-job"})
            raise StorageUnavailable(f"injected failure writing {ball_id}")
        return await self._store.put_ndarray(ball_id, array, **kwargs)


async def test_put_all_cleanup_keeps_what_another_job_committed(store):
    ctx = _ctx(RacingStore(store, "b"))
    with pytest.raises(StorageUnavailable):
        await put_all(ctx, [Write("a", np.zeros(4)), Write("b", np.zeros(4))])
    assert not await store.exists("a")  # ours: removed
    np.testing.assert_array_equal(await store.get_ndarray("b"), np.full(3, 7.0))  # theirs: kept
