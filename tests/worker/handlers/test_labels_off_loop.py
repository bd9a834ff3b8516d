"""Label vectors and the event loop (issue 14): a large vector is planned in a worker thread, a small
one on the loop, and either way the result is exactly what the on-loop planning gave.

No timing is asserted (the machine is shared): the tests check *which thread* ran the work and
that payloads and stored labels are unchanged.
"""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

from core.algorithms.kmeans import l1_kmeans
from schemas import keys
from tests.worker.handlers.owner import Rig, blobs, labels_of, run_secure_kmeans, upload_secure_kmeans
from worker.handlers import common
from worker.handlers.common import (
    LABELS_OFF_LOOP_BYTES,
    _encoded_size,
    labels_payload,
    plan_labels,
    plan_labels_off_loop,
)
from worker.settings import Settings
from worker.storage.local import LocalStore


def _ctx(store: Any = None, **settings: Any) -> SimpleNamespace:
    return SimpleNamespace(settings=Settings(**settings), store=store, op="test.op")


def _planned_threads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Record the thread of every label planning (``common._plan_labels``)."""
    threads: list[int] = []
    plan = common._plan_labels

    def recording(*args: Any) -> Any:
        threads.append(threading.get_ident())
        return plan(*args)

    monkeypatch.setattr(common, "_plan_labels", recording)
    return threads


@pytest.mark.parametrize(
    "values",
    [
        np.array([], dtype=np.int64),
        np.array([0, 1, 2]),
        np.arange(40) % 3,
        np.array([-(2**63), 2**63 - 1, -1, 0, 9, 10, 99, 100]),
        np.array([0.0, 1.0, 2.4, 2.6, -3.5]),  # rounded to the nearest integer
        np.arange(-500, 500, dtype=np.int32),
    ],
)
def test_the_decision_is_the_encoded_size_rule(values):
    """The O(1) bound (9 n + 5 bytes) only skips counting when the vector cannot fit anyway: for
    every limit around the vector's size, inline exactly when the counted size fits."""
    array = common._labels_array(values)
    size = _encoded_size(array)
    for limit in sorted({0, 1, 5, size - 1, size, size + 1, 9 * array.size + 4, 9 * array.size + 5}):
        payload, write = common._plan_labels(values, "lv", max(limit, 0))
        if size <= limit:
            assert payload == {"label_vector": array.tolist()} and write is None
        else:
            assert payload == {"label_vector_id": "lv"} and write is not None
            assert write.value.dtype == np.int64 and write.key == "lv"
            np.testing.assert_array_equal(write.value, array)
            assert not np.shares_memory(write.value, values)  # a private copy, as before


def test_a_vector_that_cannot_fit_is_not_counted(monkeypatch):
    def counted(values: np.ndarray) -> int:
        raise AssertionError("counted the digits of a vector over the msgpack bound")

    monkeypatch.setattr(common, "_encoded_size", counted)
    ctx = _ctx(max_message_bytes=4096)  # inline limit 1024 bytes: 9 * 200 + 5 is over it
    payload, write = plan_labels(ctx, np.arange(200) % 5, "lv")
    assert payload == {"label_vector_id": "lv"} and write is not None


async def test_a_large_vector_is_planned_off_the_loop(monkeypatch):
    threads = _planned_threads(monkeypatch)
    labels = np.arange(LABELS_OFF_LOOP_BYTES // 8 + 1, dtype=np.int64) % 5  # just over the threshold
    ctx = _ctx()
    payload, write = await plan_labels_off_loop(ctx, labels, "lv")
    assert threads and threads[0] != threading.get_ident()
    assert (payload, write is not None) == ({"label_vector_id": "lv"}, True)
    assert write is not None
    np.testing.assert_array_equal(write.value, labels)
    expected_payload, expected_write = plan_labels(ctx, labels, "lv")
    assert payload == expected_payload and expected_write is not None


async def test_a_long_narrow_vector_is_planned_off_the_loop_too(monkeypatch):
    """The work grows with the number of labels (each becomes an int64), not with their dtype."""
    threads = _planned_threads(monkeypatch)
    labels = (np.arange(LABELS_OFF_LOOP_BYTES // 8 + 1) % 5).astype(np.int8)  # well under 1 MiB
    _, write = await plan_labels_off_loop(_ctx(), labels, "lv")
    assert threads and threads[0] != threading.get_ident()
    assert write is not None and write.value.dtype == np.int64
    np.testing.assert_array_equal(write.value, labels)


async def test_a_small_vector_is_planned_on_the_loop(monkeypatch):
    threads = _planned_threads(monkeypatch)
    payload, write = await plan_labels_off_loop(_ctx(), np.array([2, 0, 1]), "lv")
    assert threads == [threading.get_ident()]
    assert payload == {"label_vector": [2, 0, 1]} and write is None


async def test_labels_payload_stores_a_large_vector_from_a_thread(tmp_path, monkeypatch):
    threads = _planned_threads(monkeypatch)
    store = LocalStore(tmp_path / "css")
    try:
        labels = (np.arange(LABELS_OFF_LOOP_BYTES // 4) % 7).astype(np.float64)  # float labels, 2 MiB
        payload = await labels_payload(_ctx(store), labels, "lv")
        assert payload == {"label_vector_id": "lv"}
        assert threads and threads[0] != threading.get_ident()
        stored = await store.get_ndarray("lv")
        assert stored.dtype == np.int64
        np.testing.assert_array_equal(stored, labels.astype(np.int64))
    finally:
        await store.aclose()


async def test_skmeans_step1_plans_its_labels_off_the_loop(
    start_worker, nc, local_store, make_settings, monkeypatch
):
    """A whole SKMeans job whose label vector is stored (small messages) and, with the threshold at
    0, planned in a thread every round: the labels are the reference's."""
    from tests.worker.handlers.conftest import handler_registry

    threads = _planned_threads(monkeypatch)
    monkeypatch.setattr(common, "LABELS_OFF_LOOP_BYTES", 0)
    settings = make_settings(storage_path=str(local_store.root), max_message_bytes=1024)
    worker = await start_worker(registry=handler_registry(), store=local_store, settings=settings)
    await worker.pool.wait_ready(timeout=60)
    rig = Rig(nc=nc, settings=settings, store=local_store, worker=worker)
    data = blobs(45, 2, 3, seed=3)
    job = await upload_secure_kmeans(rig.store, data, 3, "off", compact=True)
    labels, iterations, _ = await run_secure_kmeans(rig, job)
    reference = l1_kmeans(data, 3, max_iter=10, tolerance=1e-6)
    assert labels == reference.labels.tolist() and iterations == reference.n_iter
    assert len(threads) >= iterations and threading.get_ident() not in threads
    stored = await labels_of(rig.store, {"label_vector_id": keys.label_vector("off")})
    assert stored == labels
