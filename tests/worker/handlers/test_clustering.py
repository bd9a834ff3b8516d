"""End-to-end clustering over a real nats-server: KMeans, SKMeans, DBSKMeans, NNC, DBSNNC.

The data owner is simulated with the core's data-owner helpers and the store; every result is
compared with the core's in-process result (and with the plaintext reference where it is exact).
"""

from __future__ import annotations

import numpy as np
import pytest

from core import dataowner
from core.algorithms import nnc as core_nnc
from core.algorithms.kmeans import KMeans, l1_kmeans
from schemas import keys
from schemas.operations import Op
from tests.core.inprocess_owner import InProcessOwner
from tests.worker.handlers.owner import (
    COMPLETED,
    START,
    WIP,
    blobs,
    labels_of,
    mirror_secure_kmeans,
    run_secure_kmeans,
    secure_kmeans_round,
    upload_secure_kmeans,
)


# ------------------------------------------------------------------ KMeans
@pytest.mark.parametrize("blob", [True, False])
async def test_kmeans_matches_core_and_sklearn(rig, blob):
    data = blobs(40, 3, 3, seed=11)
    if blob:
        await rig.store.put_blob("km", data)
    else:
        await rig.store.put_ndarray("km", data, num_chunks=3)
    result = await rig.ok(Op.KMEANS, {"plaintext_matrix_id": "km", "k": 3})
    expected = KMeans(3).fit(data)
    assert result["label_vector"] == expected.labels_.tolist()
    assert result["iterations"] == expected.n_iter_
    sklearn = pytest.importorskip("sklearn.cluster")
    reference = sklearn.KMeans(n_clusters=3, init=data[:3], n_init=1).fit(data)
    assert result["label_vector"] == reference.labels_.tolist()


async def test_large_label_vector_is_stored(start_worker, nc, local_store, make_settings):
    from tests.worker.handlers.conftest import handler_registry
    from tests.worker.handlers.owner import Rig

    settings = make_settings(storage_path=str(local_store.root), max_message_bytes=1024)
    worker = await start_worker(registry=handler_registry(), store=local_store, settings=settings)
    rig = Rig(nc=nc, settings=settings, store=local_store, worker=worker)
    data = blobs(300, 2, 3, seed=5)
    await local_store.put_ndarray("big", data, num_chunks=2)
    result = await rig.ok(Op.KMEANS, {"plaintext_matrix_id": "big", "k": 3, "namespace": "j1"})
    assert result.get("label_vector") is None
    assert result["label_vector_id"] == keys.label_vector("big", "j1")
    assert await labels_of(local_store, result) == KMeans(3).fit(data).labels_.tolist()


# ------------------------------------------------------------------ SKMeans
@pytest.mark.parametrize("compact", [False, True])
async def test_skmeans_job_to_convergence(rig, compact, tmp_path):
    data = blobs(45, 2, 3, seed=3)
    job = await upload_secure_kmeans(rig.store, data, 3, "ds", compact=compact)
    labels, iterations, shifts = await run_secure_kmeans(rig, job)
    reference = l1_kmeans(data, 3, max_iter=10, tolerance=1e-6)
    assert reference.converged
    assert labels == reference.labels.tolist()
    assert iterations == reference.n_iter
    in_process = await InProcessOwner(tmp_path, liu_key=job.key).arun(Op.SKMEANS, data, 3, max_iterations=10)
    assert labels == in_process.labels.tolist() and iterations == in_process.n_iter
    # Round by round, the worker's labels are the core's labels on the same ciphertexts.
    rounds = mirror_secure_kmeans(job, shifts[:-1])
    assert labels == rounds[-1].tolist()
    # State objects live under Rory's names.
    for key in (
        keys.centroids_previous("ds"),
        keys.centroids_current("ds"),
        keys.encrypted_shift_matrix("ds"),
    ):
        assert await rig.store.exists(key)


async def test_skmeans_rory_counterexample(rig):
    """Reference 2.6: the original's UDM rule gives [0,1,2,1,0,0]; the corrected one [2,1,2,1,0,0] in 3."""
    data = np.array([[6.0], [15.0], [4.0], [13.0], [9.0], [10.0]])
    job = await upload_secure_kmeans(rig.store, data, 3, "cx")
    labels, iterations, _ = await run_secure_kmeans(rig, job)
    assert labels == [2, 1, 2, 1, 0, 0]
    assert iterations == 3


async def test_skmeans_v1_worker_side_convergence(rig):
    """Without is_zero, step 2 applies MRE(centi, centj) <= MIN_ERROR and reports COMPLETED itself."""
    data = blobs(30, 2, 3, seed=8)
    job = await upload_secure_kmeans(rig.store, data, 3, "v1")
    labels, iterations, _ = await run_secure_kmeans(rig, job, v1_convergence=True)
    reference = l1_kmeans(data, 3, max_iter=10, tolerance=1e-6)
    assert labels == reference.labels.tolist()
    assert iterations == reference.n_iter


async def test_skmeans_step2_is_zero_true_touches_nothing(rig):
    from tests.worker.handlers.owner import snapshot

    data = blobs(20, 2, 2, seed=4)
    job = await upload_secure_kmeans(rig.store, data, 2, "z")
    before = await snapshot(rig.store)
    result = await rig.ok(Op.SKMEANS, {**job.base(), "step_index": 2, "is_zero": True})
    assert result["clustering_status"] == COMPLETED
    assert await snapshot(rig.store) == before


async def test_skmeans_centroid_state_names(rig):
    """Step 1 stores the round's starting centroids in centi and the new ones in centj
    (docs/original-rory.md, row 7)."""
    data = blobs(24, 2, 3, seed=21)
    job = await upload_secure_kmeans(rig.store, data, 3, "st")
    await secure_kmeans_round(rig, job, START, 0)
    centj_1 = await rig.store.get_ndarray(keys.centroids_current("st"))
    np.testing.assert_array_equal(
        await rig.store.get_ndarray(keys.centroids_previous("st")), job.encrypted[:3]
    )
    await secure_kmeans_round(rig, job, WIP, 1)
    np.testing.assert_array_equal(await rig.store.get_ndarray(keys.centroids_previous("st")), centj_1)


# ------------------------------------------------------------------ DBSKMeans
async def test_dbskmeans_job_matches_core(rig):
    data = blobs(36, 2, 3, seed=9, spread=0.8)
    job = await upload_secure_kmeans(rig.store, data, 3, "dbs", double_blind=True)
    sent: list[np.ndarray] = []
    status, iterations, labels = START, 0, []
    for _ in range(10):
        r1, done, _plain = await secure_kmeans_round(rig, job, status, iterations)
        assert r1["n_iterations"] == iterations + 1  # every step 1 counts one iteration
        labels, iterations = r1["label_vector"], r1["n_iterations"]
        if done:
            break
        sent.append(await rig.store.get_ndarray(keys.shift_matrix("dbs")))
        status = WIP
    rounds = mirror_secure_kmeans(job, sent)
    assert labels == rounds[-1].tolist()
    assert len(rounds) == iterations
    # On well-separated blobs the double-blind labels coincide with L1 k-means.
    assert labels == l1_kmeans(data, 3, max_iter=10).labels.tolist()


async def test_dbskmeans_shift_matrix_ope_id_and_declared_udm_shape(rig):
    data = blobs(20, 2, 2, seed=13, spread=0.5)
    job = await upload_secure_kmeans(rig.store, data, 2, "ope", double_blind=True)
    base = {**job.base(), "encrypted_udm_shape": [20, 20, 2], "encrypted_udm_dtype": "float64"}
    r1 = await rig.ok(Op.DBSKMEANS, {**base, "step_index": 1})
    assert r1["n_iterations"] == 1
    from core.algorithms import skmeans as core_skmeans

    plain = core_skmeans.decrypt_shift(job.key, await rig.store.get_ndarray(r1["encrypted_shift_matrix_id"]))
    await rig.store.put_ndarray(keys.shift_matrix_ope("ope"), dataowner.encrypt_shift_ope(job.fkey, plain))
    r2 = await rig.ok(
        Op.DBSKMEANS,
        {**base, "step_index": 2, "is_zero": False, "shift_matrix_ope_id": keys.shift_matrix_ope("ope")},
    )
    assert r2["clustering_status"] == WIP
    assert r2["encrypted_udm_shape"] == [20, 2, 2]
    assert r2["encrypted_udm_dtype"] == "float64"


# ------------------------------------------------------------------ NNC / DBSNNC
@pytest.mark.parametrize("threshold", [-1.0, 4.0])
async def test_nnc_matches_core(rig, threshold):
    data = blobs(40, 2, 4, seed=17)
    dm = dataowner.distance_matrix(data)
    await rig.store.put_ndarray(keys.distance_matrix("nn"), dm, num_chunks=2)
    result = await rig.ok(Op.NNC, {"plaintext_matrix_id": "nn", "threshold": threshold})
    used = core_nnc.resolve_threshold(dm, threshold)
    assert result["label_vector"] == core_nnc.nnc(dm, used).tolist()
    assert result["threshold"] == pytest.approx(used)
    assert not await rig.store.exists("nn")  # the dataset itself is never needed


async def test_nnc_reference_example(rig):
    await rig.store.put_ndarray(
        keys.distance_matrix("ex"), np.array([[0, 3, 7], [3, 0, 4], [7, 4, 0]], float)
    )
    assert (await rig.ok(Op.NNC, {"plaintext_matrix_id": "ex", "threshold": 3.5}))["label_vector"] == [
        0,
        0,
        1,
    ]
    assert (await rig.ok(Op.NNC, {"plaintext_matrix_id": "ex", "threshold": -1}))["label_vector"] == [0, 0, 1]


async def test_dbsnnc_matches_plaintext_nnc(rig):
    data = blobs(40, 2, 4, seed=19)
    prep = dataowner.prepare_dbsnnc(data, rng=np.random.default_rng(3))
    await rig.store.put_ndarray(keys.encrypted_distance_matrix("db"), prep.encrypted_dm, num_chunks=4)
    result = await rig.ok(
        Op.DBSNNC, {"plaintext_matrix_id": "db", "encrypted_threshold": prep.encrypted_threshold}
    )
    assert result["label_vector"] == core_nnc.dbsnnc(prep.encrypted_dm, prep.encrypted_threshold).tolist()
    dm = dataowner.distance_matrix(data)
    assert result["label_vector"] == core_nnc.nnc(dm, prep.threshold).tolist()


async def test_skmeans_accepts_header_names_and_the_newest_clients_shape(rig):
    """Rory's header spelling, and ``encrypted_matrix_shape`` as (r, a) as the newest client sends it."""
    data = blobs(18, 2, 3, seed=23)
    job = await upload_secure_kmeans(rig.store, data, 3, "hdr")
    params = {
        "Plaintext-Matrix-Id": "hdr",
        "Step-Index": 1,
        "Clustering-Status": 1,
        "K": 3,
        "M": 3,
        "Num-Chunks": 2,
        "Encrypted-Matrix-Shape": [18, 2],
        "Encrypted-Matrix-Dtype": "float64",
        "Experiment-Id": "exp-1",
    }
    result = await rig.ok(Op.SKMEANS, params)
    expected = mirror_secure_kmeans(job, [])[0]
    assert result["label_vector"] == expected.tolist()
    assert result["n_iterations"] == 1
    assert (await rig.store.info(keys.encrypted_shift_matrix("hdr"))).num_chunks == 2
