"""Whole SKMeans jobs over NATS: concurrency, namespaces, and a worker restarted mid-job."""

from __future__ import annotations

import asyncio

from core.algorithms.kmeans import l1_kmeans
from schemas import keys
from tests.worker.handlers.conftest import handler_registry
from tests.worker.handlers.owner import (
    START,
    WIP,
    Rig,
    blobs,
    labels_of,
    run_secure_kmeans,
    secure_kmeans_round,
    upload_secure_kmeans,
)
from worker.storage.local import LocalStore


async def test_two_concurrent_jobs_on_different_datasets(rig):
    data_a, data_b = blobs(40, 2, 3, seed=31), blobs(36, 3, 4, seed=32)
    job_a = await upload_secure_kmeans(rig.store, data_a, 3, "dsa", seed=1)
    job_b = await upload_secure_kmeans(rig.store, data_b, 4, "dsb", seed=2, compact=True)
    (labels_a, it_a, _), (labels_b, it_b, _) = await asyncio.gather(
        run_secure_kmeans(rig, job_a), run_secure_kmeans(rig, job_b)
    )
    ref_a, ref_b = l1_kmeans(data_a, 3, 10), l1_kmeans(data_b, 4, 10)
    assert (labels_a, it_a) == (ref_a.labels.tolist(), ref_a.n_iter)
    assert (labels_b, it_b) == (ref_b.labels.tolist(), ref_b.n_iter)


async def test_two_concurrent_jobs_on_one_dataset_with_namespaces(rig):
    """Same encrypted dataset, different k: without namespaces their UDM/centroids would collide."""
    data = blobs(42, 2, 4, seed=33)
    job_2 = await upload_secure_kmeans(rig.store, data, 2, "shared", namespace="jobk2", seed=5)
    # The second job reuses the uploaded dataset (same key, same ciphertexts) with its own state.
    job_4 = await upload_secure_kmeans(
        rig.store, data, 4, "shared", namespace="jobk4", seed=5, upload_dataset=False
    )
    (labels_2, it_2, _), (labels_4, it_4, _) = await asyncio.gather(
        run_secure_kmeans(rig, job_2), run_secure_kmeans(rig, job_4)
    )
    ref_2, ref_4 = l1_kmeans(data, 2, 10), l1_kmeans(data, 4, 10)
    assert (labels_2, it_2) == (ref_2.labels.tolist(), ref_2.n_iter)
    assert (labels_4, it_4) == (ref_4.labels.tolist(), ref_4.n_iter)
    balls = await rig.store.list_balls()
    assert keys.udm("shared", "jobk2") in balls and keys.udm("shared", "jobk4") in balls
    assert keys.centroids_current("shared") not in balls  # nothing written under the shared names


async def test_worker_restarted_between_rounds(start_worker, nc, make_settings, tmp_path):
    """State lives in storage: a new worker process (new store object, same bucket) continues the job."""
    root = tmp_path / "shared-css"
    settings = make_settings(storage_path=str(root))
    data = blobs(30, 2, 3, seed=35)

    store_1 = LocalStore(root)
    worker_1 = await start_worker(registry=handler_registry(), store=store_1, settings=settings)
    rig_1 = Rig(nc=nc, settings=settings, store=store_1, worker=worker_1)
    job = await upload_secure_kmeans(store_1, data, 3, "rs")
    r1, done, _ = await secure_kmeans_round(rig_1, job, START, 0)
    assert not done
    await worker_1.stop(grace=2.0)
    await store_1.aclose()

    store_2 = LocalStore(root)
    try:
        worker_2 = await start_worker(registry=handler_registry(), store=store_2, settings=settings)
        assert worker_2.instance_id != worker_1.instance_id
        rig_2 = Rig(nc=nc, settings=settings, store=store_2, worker=worker_2)
        status, iterations, labels = WIP, r1["n_iterations"], await labels_of(store_2, r1)
        for _ in range(10):
            r, done, _ = await secure_kmeans_round(rig_2, job, status, iterations)
            labels, iterations = await labels_of(store_2, r), r["n_iterations"]
            if done:
                break
        reference = l1_kmeans(data, 3, 10)
        assert (labels, iterations) == (reference.labels.tolist(), reference.n_iter)
        assert {reply["node_id"] for reply in rig_2.replies} == {settings.node_id}
    finally:
        await store_2.aclose()
