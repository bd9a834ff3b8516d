"""A storage failure in the middle of a step: the reply says 503, and retrying the step is exact.

The worker's store is wrapped so that writes of chosen keys fail the way an exhausted MictlanX write
does: the old object is deleted first (delete-then-put), then the put fails.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.algorithms.kmeans import l1_kmeans
from schemas import keys
from tests.worker.handlers.conftest import handler_registry
from tests.worker.handlers.owner import (
    START,
    WIP,
    Rig,
    blobs,
    labels_of,
    secure_kmeans_round,
    snapshot,
    upload_secure_kmeans,
)
from worker.errors import StorageUnavailable
from worker.storage.local import LocalStore


class DeleteThenFail:
    """Delegates to a real store; ``put_ndarray`` of a key in ``fail`` deletes it, then raises 503."""

    def __init__(self, store: LocalStore) -> None:
        self._store = store
        self.fail: set[str] = set()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def put_ndarray(self, ball_id: str, array: np.ndarray, **kwargs: Any) -> Any:
        if ball_id in self.fail:
            await self._store.delete(ball_id)
            raise StorageUnavailable(f"injected: router gave up writing {ball_id}")
        return await self._store.put_ndarray(ball_id, array, **kwargs)


async def _rig(start_worker: Any, nc: Any, make_settings: Any, tmp_path: Any) -> tuple[Rig, DeleteThenFail]:
    owner_store = LocalStore(tmp_path / "css")
    failing = DeleteThenFail(LocalStore(tmp_path / "css"))
    settings = make_settings(storage_path=str(tmp_path / "css"))
    worker = await start_worker(registry=handler_registry(), store=failing, settings=settings)
    return Rig(nc=nc, settings=settings, store=owner_store, worker=worker), failing


async def test_failed_first_step_leaves_no_new_objects(start_worker, nc, make_settings, tmp_path):
    rig, failing = await _rig(start_worker, nc, make_settings, tmp_path)
    data = blobs(24, 2, 3, seed=61)
    job = await upload_secure_kmeans(rig.store, data, 3, "f1")
    before = await snapshot(rig.store)
    failing.fail = {keys.encrypted_shift_matrix("f1")}
    error = await rig.error(job.op, {**job.base(), "step_index": 1})
    assert error["code"] == 503 and error["retryable"]
    assert await snapshot(rig.store) == before  # centi/centj written concurrently were removed


async def test_retrying_a_failed_step_is_exact(start_worker, nc, make_settings, tmp_path):
    rig, failing = await _rig(start_worker, nc, make_settings, tmp_path)
    data = blobs(30, 2, 3, seed=62)
    job = await upload_secure_kmeans(rig.store, data, 3, "f2")
    r1, done, _ = await secure_kmeans_round(rig, job, START, 0)
    assert not done
    iterations = r1["n_iterations"]
    wip = {**job.base(), "step_index": 1, "clustering_status": WIP, "iterations": iterations}

    # Round 2, step 1 fails on its last write: centj is gone, centi holds the round's start.
    centj_before = await rig.store.get_ndarray(keys.centroids_current("f2"))
    failing.fail = {keys.centroids_current("f2")}
    assert (await rig.error(job.op, wip))["code"] == 503
    assert not await rig.store.exists(keys.centroids_current("f2"))
    np.testing.assert_array_equal(await rig.store.get_ndarray(keys.centroids_previous("f2")), centj_before)

    # ... and once more on the shift matrix while resuming.
    failing.fail = {keys.encrypted_shift_matrix("f2")}
    assert (await rig.error(job.op, wip))["code"] == 503

    failing.fail = set()
    status, labels = WIP, await labels_of(rig.store, r1)
    for _ in range(10):
        r, done, _ = await secure_kmeans_round(rig, job, status, iterations)
        labels, iterations = await labels_of(rig.store, r), r["n_iterations"]
        if done:
            break
    reference = l1_kmeans(data, 3, 10)
    assert (labels, iterations) == (reference.labels.tolist(), reference.n_iter)
