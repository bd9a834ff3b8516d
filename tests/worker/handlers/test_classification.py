"""End-to-end KNN and SKNN over a real nats-server; results equal brute force / the core in process."""

from __future__ import annotations

import numpy as np
import pytest

from core import dataowner
from core.algorithms import knn as core_knn
from core.algorithms import sknn as core_sknn
from core.crypto import liu
from schemas import keys
from schemas.operations import Op
from tests.worker.handlers.owner import blobs


def _brute_force(model: np.ndarray, labels: np.ndarray, records: np.ndarray, metric: str) -> list[int]:
    diff = records[:, None, :] - model[None, :, :]
    dist = np.abs(diff).sum(-1) if metric == "manhattan" else (diff**2).sum(-1)
    return labels[np.argmin(dist, axis=1)].tolist()


def _classification_data(seed: int = 2) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    model = blobs(30, 3, 3, seed=seed)
    labels = rng.integers(0, 4, size=30)
    records = blobs(12, 3, 3, seed=seed + 1)
    return model, labels, records


@pytest.mark.parametrize("distance", [None, "MANHATTAN", "EUCLIDEAN"])
async def test_knn_equals_brute_force(rig, distance):
    model, labels, records = _classification_data()
    await rig.store.put_ndarray("mdl", model, num_chunks=2)
    await rig.store.put_ndarray(keys.labels("mdl"), labels.reshape(1, -1))
    await rig.store.put_ndarray("rec", records, num_chunks=2)
    params = {
        "model_id": "mdl",
        "records_test_id": "rec",
        "model_labels_shape": [1, 30],
        "distance": distance,
    }
    result = await rig.ok(Op.KNN_PREDICT, params)
    metric = "euclidean" if distance == "EUCLIDEAN" else "manhattan"  # default DISTANCE is MANHATHAN
    assert result["label_vector"] == _brute_force(model, labels, records, metric)
    assert result["label_vector"] == core_knn.knn_predict(model, labels, records, metric).tolist()


async def test_knn_reference_example(rig):
    await rig.store.put_ndarray("m0", np.array([[0.0, 0.0], [5.0, 5.0]]))
    await rig.store.put_ndarray(keys.labels("m0"), np.array([[7, 9]]))
    await rig.store.put_ndarray("r0", np.array([[1.0, 0.0], [4.0, 6.0]]))
    result = await rig.ok(Op.KNN_PREDICT, {"model_id": "m0", "records_test_id": "r0"})
    assert result["label_vector"] == [7, 9]


async def _upload_sknn(store, model, labels, records, key, rng, namespace=None):
    enc_model = liu.encrypt(key, model, rng)
    enc_records = liu.encrypt(key, records, rng)
    await store.put_ndarray(keys.encrypted("smdl"), enc_model, num_chunks=3)
    await store.put_ndarray(keys.encrypted("srec"), enc_records, num_chunks=2)
    await store.put_ndarray(keys.labels("smdl"), labels.reshape(1, -1))
    return enc_model, enc_records


async def run_sknn(rig, key, distance, namespace=None, m=3):
    """Step 1 over NATS, owner decrypts + argmin, step 2 over NATS; returns (step-1 result, labels)."""
    base = {
        "model_id": "smdl",
        "records_test_id": "srec",
        "distance": distance,
        "namespace": namespace,
        "m": m,
    }
    r1 = await rig.ok(Op.SKNN_PREDICT, {**base, "step_index": 1})
    assert r1["distances_id"] == keys.distances("srec", namespace)
    stored = await rig.store.get_ndarray(r1["distances_id"])
    assert list(stored.shape) == r1["distances_shape"]
    assert str(stored.dtype) == r1["distances_dtype"]
    nearest = np.argmin(dataowner.decrypt_distances(key, stored), axis=1)
    await rig.store.put_ndarray(keys.distances_index("srec", namespace), nearest.reshape(-1, 1))
    r2 = await rig.ok(Op.SKNN_PREDICT, {**base, "step_index": 2, "model_labels_shape": [1, 30]})
    return r1, r2["label_vector"]


async def test_sknn_euclidean_is_exact(rig):
    model, labels, records = _classification_data(4)
    rng = np.random.default_rng(1)
    key = liu.generate_key(rng=rng)
    enc_model, enc_records = await _upload_sknn(rig.store, model, labels, records, key, rng)
    r1, predicted = await run_sknn(rig, key, "EUCLIDEAN")
    assert r1["exact"] is True
    assert r1["distances_shape"] == [12, 30, 9]  # m^2 components: a Liu product
    assert r1["distances_dtype"] == "float64"
    decrypted = dataowner.decrypt_distances(key, await rig.store.get_ndarray(r1["distances_id"]))
    np.testing.assert_allclose(decrypted, core_knn.pairwise_distances(records, model, "euclidean"), rtol=1e-6)
    assert predicted == _brute_force(model, labels, records, "euclidean")
    in_process = core_sknn.encrypted_distances(enc_records, enc_model, "euclidean")
    assert (
        predicted
        == core_sknn.labels_from_indices(core_sknn.nearest_from_distances(key, in_process), labels).tolist()
    )


async def test_sknn_manhattan_default_is_flagged_approximate(rig):
    model, labels, records = _classification_data(6)
    rng = np.random.default_rng(2)
    key = liu.generate_key(rng=rng)
    enc_model, enc_records = await _upload_sknn(rig.store, model, labels, records, key, rng)
    r1, predicted = await run_sknn(rig, key, None, namespace="job7")
    assert r1["exact"] is False
    assert r1["distances_shape"] == [12, 30, 3]
    in_process = core_sknn.encrypted_distances(enc_records, enc_model, "manhattan")
    expected = core_sknn.labels_from_indices(core_sknn.nearest_from_distances(key, in_process), labels)
    assert predicted == expected.tolist()
    assert not await rig.store.exists(keys.distances("srec"))  # namespaced state only


async def test_sknn_distances_over_the_memory_budget_are_refused_before_computing(
    start_worker, nc, local_store, make_settings
):
    """Inputs that each fit MAX_OBJECT_BYTES can still multiply into a distance array that does not."""
    from tests.worker.handlers.conftest import handler_registry
    from tests.worker.handlers.owner import Rig, snapshot

    settings = make_settings(storage_path=str(local_store.root), max_object_bytes=20_000)
    worker = await start_worker(registry=handler_registry(), store=local_store, settings=settings)
    rig = Rig(nc=nc, settings=settings, store=local_store, worker=worker)
    model, labels, records = _classification_data(4)
    rng = np.random.default_rng(1)
    key = liu.generate_key(rng=rng)
    await _upload_sknn(rig.store, model, labels, records, key, rng)  # 2 KB each; distances 26 KB
    before = await snapshot(rig.store)
    params = {"model_id": "smdl", "records_test_id": "srec", "distance": "EUCLIDEAN", "step_index": 1}
    error = await rig.error(Op.SKNN_PREDICT, params)
    assert (error["code"], error["type"]) == (400, "PAYLOAD_TOO_LARGE")
    assert "[12, 30, 9]" in error["message"]
    assert await snapshot(rig.store) == before
