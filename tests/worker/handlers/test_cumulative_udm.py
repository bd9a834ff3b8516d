"""SKMeans / DBSKMeans store the UDM in the cumulative form (worker/handlers/secure_kmeans.py).

The worker keeps the owner's upload ``<P>udm`` untouched and writes the k x a running sum of the
shifts to ``<P>udmshift``, bound to the UDM's version. These tests pin the stored form (what the data
owner reads back), the reset rules (START, a re-uploaded UDM, an older worker's in-place state), the
422 on a corrupt sum, and that small jobs skip the compute pool while larger ones still use it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
import pytest

from core import dataowner
from core.algorithms.kmeans import l1_kmeans
from core.algorithms.udm import update_udm
from schemas import keys
from tests.worker.handlers import owner
from worker.handlers import secure_kmeans
from worker.handlers.secure_kmeans import UDM_VERSION_TAG


def _shift_key(root: str, double_blind: bool = False, ns: str | None = None) -> str:
    return keys.state(f"{root}{'encryptedudmshift' if double_blind else 'udmshift'}", ns)


@pytest.mark.parametrize("double_blind", [False, True])
async def test_stored_form_is_the_upload_plus_the_sum_of_shifts(rig, double_blind):
    data = owner.blobs(40, 3, 3, seed=21)
    job = await owner.upload_secure_kmeans(
        rig.store, data, 3, "cu", namespace="j1", double_blind=double_blind
    )
    uploaded = await rig.store.info(job.udm_key)
    sent: list[np.ndarray] = []
    status, iterations = owner.START, 0
    for _ in range(4):
        r1, _, _ = await owner.secure_kmeans_round(rig, job, status, iterations, tolerance=-1.0)
        iterations, status = r1["n_iterations"], owner.WIP
        sent.append(await rig.store.get_ndarray(keys.shift_matrix("cu", "j1")))
    # The upload is never rewritten; the running sum is k x a, bound to that upload's version.
    assert (await rig.store.info(job.udm_key)).etag == uploaded.etag
    np.testing.assert_array_equal(await rig.store.get_ndarray(job.udm_key), job.udm)
    info = await rig.store.info(_shift_key("cu", double_blind, "j1"))
    assert info.full_shape == (3, 3) and info.full_dtype == "float64"
    assert info.tags[UDM_VERSION_TAG] == uploaded.etag
    total = await rig.store.get_ndarray(_shift_key("cu", double_blind, "j1"))
    np.testing.assert_allclose(total, np.sum(sent, axis=0), rtol=1e-12)
    # What the owner reads back: the same matrix the in-place update kept, up to rounding order.
    in_place = job.udm
    for s in sent:
        in_place = update_udm(in_place, s)
    np.testing.assert_allclose(update_udm(job.udm, total), in_place, rtol=1e-12, atol=1e-9)
    # And the labels of every round are those of the in-process core with the in-place update.
    r1, _, _ = await owner.secure_kmeans_round(rig, job, owner.WIP, iterations, tolerance=-1.0)
    assert await owner.labels_of(rig.store, r1) == owner.mirror_secure_kmeans(job, sent)[-1].tolist()


async def test_start_resets_the_sum_and_a_job_matches_l1_kmeans(rig):
    data = owner.blobs(36, 2, 3, seed=22)
    job = await owner.upload_secure_kmeans(rig.store, data, 3, "rs", compact=True)
    labels, iterations, _ = await owner.run_secure_kmeans(rig, job)
    reference = l1_kmeans(data, 3, 10)
    assert (labels, iterations) == (reference.labels.tolist(), reference.n_iter)
    assert np.any(await rig.store.get_ndarray(_shift_key("rs")) != 0)
    # A second job on the same upload starts from U0 again: START writes a zero sum.
    await rig.ok(job.op, {**job.base(), "step_index": 1, "clustering_status": owner.START})
    np.testing.assert_array_equal(await rig.store.get_ndarray(_shift_key("rs")), np.zeros((3, 2)))
    labels, iterations, _ = await owner.run_secure_kmeans(rig, job)
    assert (labels, iterations) == (reference.labels.tolist(), reference.n_iter)


@pytest.mark.parametrize("how", ["re-upload", "older-worker"])
async def test_a_new_udm_version_or_no_sum_counts_as_zero(rig, how):
    """An owner that uploads the current UDM itself (refresh_udm), or state an older worker left
    (the UDM updated in place, no sum), continues exactly as the in-place protocol would."""
    data = owner.blobs(30, 2, 3, seed=23)
    job = await owner.upload_secure_kmeans(rig.store, data, 3, "nv", compact=True)
    r1, _, _ = await owner.secure_kmeans_round(rig, job, owner.START, 0, tolerance=-1.0)
    sent = [await rig.store.get_ndarray(keys.shift_matrix("nv"))]
    current = update_udm(job.udm, sent[0])
    await rig.store.put_ndarray(job.udm_key, current)  # what the in-place protocol stores
    if how == "older-worker":
        await rig.store.delete(_shift_key("nv"))
    wip = {**job.base(), "step_index": 1, "clustering_status": owner.WIP, "iterations": r1["n_iterations"]}
    r = await rig.ok(job.op, wip)
    assert await owner.labels_of(rig.store, r) == owner.mirror_secure_kmeans(job, sent)[-1].tolist()


async def test_a_lost_sum_is_404_until_the_owner_uploads_the_current_udm(rig):
    """A delete-then-put write of the sum that failed (MictlanX) must not pass for a zero sum: the
    round's centroids were computed on this UDM version, so the worker refuses instead of guessing."""
    data = owner.blobs(30, 2, 3, seed=26)
    job = await owner.upload_secure_kmeans(rig.store, data, 3, "lost", compact=True)
    r1, _, _ = await owner.secure_kmeans_round(rig, job, owner.START, 0, tolerance=-1.0)
    sent = [await rig.store.get_ndarray(keys.shift_matrix("lost"))]
    await rig.store.delete(_shift_key("lost"))
    wip = {**job.base(), "step_index": 1, "clustering_status": owner.WIP, "iterations": r1["n_iterations"]}
    assert (await rig.error(job.op, wip))["code"] == 404
    assert (await rig.error(job.op, {**job.base(), "step_index": 2, "is_zero": False}))["code"] == 404
    await rig.store.put_ndarray(job.udm_key, update_udm(job.udm, sent[0]))  # U = D - c, current
    r = await rig.ok(job.op, wip)
    assert await owner.labels_of(rig.store, r) == owner.mirror_secure_kmeans(job, sent)[-1].tolist()


async def test_a_corrupt_sum_bound_to_the_udm_is_422(rig):
    data = owner.blobs(20, 2, 2, seed=24)
    job = await owner.upload_secure_kmeans(rig.store, data, 2, "bad", compact=True)
    r1, _, _ = await owner.secure_kmeans_round(rig, job, owner.START, 0, tolerance=-1.0)
    etag = (await rig.store.info(job.udm_key)).etag
    await rig.store.put_ndarray(_shift_key("bad"), np.zeros((3, 2)), tags={UDM_VERSION_TAG: etag})
    wip = {**job.base(), "step_index": 1, "clustering_status": owner.WIP, "iterations": r1["n_iterations"]}
    error = await rig.error(job.op, wip)
    assert error["code"] == 422 and "cumulative shift" in error["message"]
    error = await rig.error(job.op, {**job.base(), "step_index": 2, "is_zero": False})
    assert error["code"] == 422


@pytest.mark.parametrize("threshold", [secure_kmeans.INLINE_COMPUTE_BYTES, 0])
async def test_small_step1_runs_inline_larger_in_the_pool(rig, monkeypatch, threshold):
    calls: list[str] = []
    run = rig.worker.pool.run

    async def counting(fn: Any, /, *args: Any, **kwargs: Any) -> Any:
        calls.append(fn.__name__)
        return await run(fn, *args, **kwargs)

    monkeypatch.setattr(rig.worker.pool, "run", counting)
    monkeypatch.setattr(secure_kmeans, "INLINE_COMPUTE_BYTES", threshold)
    data = owner.blobs(40, 2, 3, seed=25)
    job = await owner.upload_secure_kmeans(rig.store, data, 3, f"in{threshold}", compact=True)
    labels, _, _ = await owner.run_secure_kmeans(rig, job)
    assert labels == l1_kmeans(data, 3, 10).labels.tolist()
    # Step 2 adds k x a numbers: never worth a process hop.
    assert calls == ([] if threshold else ["encrypted_phase"] * len(calls))
    assert bool(calls) == (threshold == 0)


async def test_dbskmeans_step1_accepts_the_shape_step2_reported(rig: owner.Rig) -> None:
    """A Manager that echoes step 2's ``encrypted_udm_shape`` (n x k x a) into the next step 1 is
    served, although storage keeps the n x n x a upload."""
    data = owner.blobs(40, 3, 3, seed=21)
    job = await owner.upload_secure_kmeans(rig.store, data, 3, "echo", double_blind=True)
    await rig.ok(job.op, {**job.base(), "step_index": 1, "clustering_status": owner.START, "iterations": 0})
    assert job.fkey is not None
    sent = dataowner.encrypt_shift_ope(job.fkey, np.full((3, 3), 0.5), job.rng)
    await rig.store.put_ndarray(keys.shift_matrix(job.root, job.namespace), sent)
    r2 = await rig.ok(job.op, {**job.base(), "step_index": 2, "is_zero": False})
    echo = {k: r2[k] for k in ("encrypted_udm_shape", "encrypted_udm_dtype")}
    assert echo["encrypted_udm_shape"] == [40, 3, 3]
    step1 = {**job.base(), **echo, "step_index": 1, "clustering_status": owner.WIP, "iterations": 1}
    r1 = await rig.ok(job.op, step1)
    assert r1["n_iterations"] == 2


async def test_a_udm_replaced_during_step1_is_a_conflict_not_mixed_labels(
    rig: owner.Rig, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The owner re-uploads the UDM between the worker's version check and its read: the step is
    refused (409) instead of scoring the new UDM with a shift bound to the old one."""
    data = owner.blobs(30, 2, 3, seed=8)
    job = await owner.upload_secure_kmeans(rig.store, data, 3, "race")
    read = rig.store.fetch_ndarray

    async def replaced_first(ball_id: str, **options: Any) -> Any:
        if ball_id == job.udm_key:
            await rig.store.put_ndarray(ball_id, job.udm + 1.0, num_chunks=3)  # a new version
        return await read(ball_id, **options)

    monkeypatch.setattr(rig.store, "fetch_ndarray", replaced_first)
    step1 = {**job.base(), "step_index": 1, "clustering_status": owner.START, "iterations": 0}
    error = await rig.error(job.op, step1)
    assert error["type"] == "CONFLICT" and job.udm_key in error["message"]


@pytest.fixture(params=["local", "nats"])
async def any_rig(request, rig, nats_url, nc, tmp_path):
    """The handler rig on the local store, or a worker and owner sharing a JetStream object store
    (a backend that names a version by its content)."""
    if request.param == "local":
        yield rig
        return
    from tests.conftest import settings_for
    from tests.worker.handlers.conftest import handler_registry
    from tests.worker.storage.conftest import nats_store
    from worker.runtime.service import WorkerService

    store = nats_store(nc)
    settings = settings_for(nats_url, tmp_path, storage_backend="nats", nats_object_bucket=store.bucket)
    worker = WorkerService(settings, handler_registry())
    await worker.start()
    try:
        await worker.pool.wait_ready(timeout=60)
        yield owner.Rig(nc=nc, settings=settings, store=store, worker=worker)
    finally:
        await worker.stop(grace=2.0)
        await store.aclose()
        await nc.jetstream().delete_object_store(store.bucket)


async def test_the_same_udm_uploaded_again_restarts_from_it_on_every_backend(any_rig):
    """Uploading the UDM replaces the state even when its bytes are those of the first upload: the
    running sum of the earlier rounds does not carry over, although MictlanX and NATS give identical
    bytes the same etag (the write time tells the uploads apart)."""
    data = owner.blobs(40, 2, 3, seed=27)
    job = await owner.upload_secure_kmeans(any_rig.store, data, 3, "again", compact=True)
    r1, _, _ = await owner.secure_kmeans_round(any_rig, job, owner.START, 0, tolerance=-1.0)
    sent = await any_rig.store.get_ndarray(keys.shift_matrix("again"))
    restarted = owner.mirror_secure_kmeans(job, [np.zeros_like(sent)])[-1].tolist()
    continued = owner.mirror_secure_kmeans(job, [sent])[-1].tolist()
    assert restarted != continued  # the data tells the two apart
    await asyncio.sleep(0.005)  # a later write time (milliseconds)
    await any_rig.store.put_ndarray(job.udm_key, job.udm, num_chunks=3)  # byte for byte the first
    wip = {**job.base(), "step_index": 1, "clustering_status": owner.WIP, "iterations": r1["n_iterations"]}
    r = await any_rig.ok(job.op, wip)
    assert await owner.labels_of(any_rig.store, r) == restarted


def test_a_sum_from_before_write_times_were_recorded_still_applies():
    """Upgrading keeps running jobs right: a sum tagged with the UDM's etag alone (as workers wrote it
    before recording write times) applies to that UDM, whatever its write time."""
    from worker.storage.base import BallInfo

    udm = BallInfo("u", "ndarray", 1, (4, 2, 2), "float64", 128, None, etag="chunks-sha256:e", written="1700")

    def shift(**tags: str) -> tuple[np.ndarray, BallInfo]:
        info = BallInfo("c", "ndarray", 1, (2, 2), "float64", 32, None, tags=tags, etag="x")
        return np.ones((2, 2)), info

    current = secure_kmeans.current_udm_shift
    assert current(shift(rory_udm_version="chunks-sha256:e"), udm, 2, 2, None) is not None
    bound = {"rory_udm_version": "chunks-sha256:e", secure_kmeans.UDM_WRITTEN_TAG: "1700"}
    assert current(shift(**bound), udm, 2, 2, None) is not None
    earlier = {**bound, secure_kmeans.UDM_WRITTEN_TAG: "1600"}  # the same bytes, uploaded before
    assert current(shift(**earlier), udm, 2, 2, None) is None
