"""SKMeans and SKNN end to end through the MictlanX backend (fake router over real HTTP)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from core import dataowner
from core.algorithms.kmeans import l1_kmeans
from core.crypto import liu
from schemas import keys
from schemas.operations import Op
from tests.fakes.mictlanx_router import FakeRouter
from tests.worker.handlers.conftest import handler_registry
from tests.worker.handlers.owner import Rig, blobs, run_secure_kmeans, upload_secure_kmeans
from worker.storage import open_store


@pytest.fixture
async def mx_rig(start_worker: Any, nc: Any, make_settings: Any) -> AsyncIterator[Rig]:
    async with FakeRouter() as router:
        settings = make_settings(
            storage_backend="mictlanx", mictlanx_uri=router.uri, mictlanx_delay=0.05, mictlanx_max_retries=3
        )
        worker_store = open_store(settings)
        owner_store = open_store(settings)  # the data owner's own client on the same bucket
        worker = await start_worker(registry=handler_registry(), store=worker_store, settings=settings)
        rig = Rig(nc=nc, settings=settings, store=owner_store, worker=worker)
        rig.router = router  # type: ignore[attr-defined]
        yield rig
        await worker.stop(grace=2.0)
        await worker_store.aclose()
        await owner_store.aclose()


async def test_skmeans_job_over_mictlanx(mx_rig):
    data = blobs(30, 2, 3, seed=51)
    job = await upload_secure_kmeans(mx_rig.store, data, 3, "mxds", namespace="mx1", chunks=4)
    labels, iterations, _ = await run_secure_kmeans(mx_rig, job)
    reference = l1_kmeans(data, 3, 10)
    assert (labels, iterations) == (reference.labels.tolist(), reference.n_iter)
    router_keys = mx_rig.router.keys()
    # Rory's chunk naming on the router: <ball>_<i>.
    assert f"{keys.udm('mxds', 'mx1')}_0" in router_keys
    assert f"{keys.centroids_current('mxds', 'mx1')}_0" in router_keys


async def test_sknn_over_mictlanx(mx_rig):
    rng = np.random.default_rng(9)
    key = liu.generate_key(rng=rng)
    model, records = blobs(20, 3, 2, seed=52), blobs(8, 3, 2, seed=53)
    labels = rng.integers(0, 3, size=20)
    await mx_rig.store.put_ndarray(keys.encrypted("mxm"), liu.encrypt(key, model, rng), num_chunks=2)
    await mx_rig.store.put_ndarray(keys.encrypted("mxr"), liu.encrypt(key, records, rng), num_chunks=2)
    await mx_rig.store.put_ndarray(keys.labels("mxm"), labels.reshape(1, -1))
    base = {"model_id": "mxm", "records_test_id": "mxr", "distance": "EUCLIDEAN"}
    r1 = await mx_rig.ok(Op.SKNN_PREDICT, {**base, "step_index": 1, "num_chunks": 3})
    distances = await mx_rig.store.get_ndarray(r1["distances_id"])
    assert (await mx_rig.store.info(r1["distances_id"])).num_chunks == 3
    nearest = np.argmin(dataowner.decrypt_distances(key, distances), axis=1)
    await mx_rig.store.put_ndarray(keys.distances_index("mxr"), nearest.reshape(-1, 1))
    r2 = await mx_rig.ok(Op.SKNN_PREDICT, {**base, "step_index": 2})
    diff = records[:, None, :] - model[None, :, :]
    assert r2["label_vector"] == labels[np.argmin((diff**2).sum(-1), axis=1)].tolist()
