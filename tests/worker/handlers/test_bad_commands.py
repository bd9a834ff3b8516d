"""Bad commands for every operation: the right error code, and storage left exactly as it was.

One worker and one populated bucket serve every case (fast); each case snapshots every object's
content before and after the command.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from core.crypto import liu
from schemas import keys
from schemas.operations import Op
from tests.worker.handlers.owner import START, blobs, secure_kmeans_round, snapshot, upload_secure_kmeans

N, A, M, K = 24, 2, 3, 3


async def _populate(rig: Any) -> dict[str, Any]:
    store = rig.store
    data = blobs(N, A, K, seed=41)
    job = await upload_secure_kmeans(store, data, K, "p")
    await secure_kmeans_round(rig, job, START, 0)  # centi/centj/shift exist now
    dbs = await upload_secure_kmeans(store, data, K, "q", double_blind=True)
    # A UDM of the wrong size under its own namespace, a shift with the wrong attribute count.
    await store.put_ndarray(keys.udm("p", "badudm"), np.zeros((N - 1, N - 1, A)))
    await store.put_ndarray(keys.udm("p", "fresh"), job.udm)  # a job that never ran step 1
    await store.put_ndarray("badshift", np.zeros((K, A + 1)))
    await store.put_ndarray(keys.shift_matrix("p"), np.zeros((K, A)))
    # Clustering inputs.
    await store.put_ndarray("km", data)
    await store.put_ndarray("kmbool", np.zeros((N, A), dtype=bool))
    await store.put_ndarray(keys.distance_matrix("nn"), np.zeros((N, N)))
    await store.put_ndarray(keys.distance_matrix("rect"), np.zeros((N, N - 1)))
    await store.put_bytes_list(keys.encrypted("ct"), [b"not", b"an", b"ndarray"])
    await store.put_ndarray(keys.udm("ct"), np.zeros((3, 3, 1)))
    # Classification inputs.
    model, records = blobs(10, A, 2, seed=42), blobs(5, A, 2, seed=43)
    await store.put_ndarray("mdl", model)
    await store.put_ndarray(keys.labels("mdl"), np.arange(10).reshape(1, -1))
    await store.put_ndarray("rec", records)
    await store.put_ndarray("rec3", np.zeros((5, A + 1)))
    await store.put_ndarray("nolabels", model)
    await store.put_ndarray("fmdl", model)
    await store.put_ndarray(keys.labels("fmdl"), np.full((1, 10), 0.5))
    key = liu.generate_key(rng=np.random.default_rng(0))
    await store.put_ndarray(keys.encrypted("mdl"), liu.encrypt(key, model))
    await store.put_ndarray(keys.encrypted("rec"), liu.encrypt(key, records))
    await store.put_ndarray(keys.distances_index("rec"), np.array([[0], [1], [2], [3], [10]]))
    await store.put_ndarray(keys.distances_index("frec"), np.array([[0.5], [1.0]]))
    # Machine learning inputs.
    await store.put_ndarray("x", data)
    await store.put_ndarray("y", (np.arange(N) % 3).astype(float))
    await store.put_ndarray("w3", np.zeros(A + 1))
    await store.put_blob("b", np.zeros(1))
    return {"job": job, "dbs": dbs}


def _cases(job: Any, dbs: Any) -> list[tuple[str, str, dict[str, Any], int]]:
    s1 = {**job.base(), "step_index": 1}
    s1_wip = {**s1, "clustering_status": 2, "iterations": 1}
    s2 = {**job.base(), "step_index": 2, "is_zero": False}
    d1 = {**dbs.base(), "step_index": 1}
    knn = {"model_id": "mdl", "records_test_id": "rec"}
    sknn = {"model_id": "mdl", "records_test_id": "rec"}
    lr_predict = {"plaintext_matrix_test_id": "x", "weights_id": "w3", "bias_id": "b"}
    return [
        # ---- 404: a key the command needs is not in storage
        ("kmeans: no dataset", Op.KMEANS, {"plaintext_matrix_id": "nope"}, 404),
        ("skmeans s1: no dataset", Op.SKMEANS, {**s1, "encrypted_matrix_id": "nope"}, 404),
        ("skmeans s1: no dataset nor UDM", Op.SKMEANS, {**s1, "plaintext_matrix_id": "nope"}, 404),
        ("skmeans s1: no UDM in namespace", Op.SKMEANS, {**s1, "namespace": "ghost"}, 404),
        ("skmeans s1 WIP: no centroids", Op.SKMEANS, {**s1_wip, "namespace": "fresh"}, 404),
        ("skmeans s2: no shift", Op.SKMEANS, {**s2, "shift_matrix_id": "noshift"}, 404),
        ("dbskmeans s1: no encrypted UDM", Op.DBSKMEANS, {**s1, "plaintext_matrix_id": "p"}, 404),
        ("nnc: no dm", Op.NNC, {"plaintext_matrix_id": "zz", "threshold": 1.0}, 404),
        (
            "dbsnnc: no encrypted dm",
            Op.DBSNNC,
            {"plaintext_matrix_id": "zz", "encrypted_threshold": 1.0},
            404,
        ),
        ("knn: no labels", Op.KNN_PREDICT, {**knn, "model_id": "nolabels"}, 404),
        ("knn: no records", Op.KNN_PREDICT, {**knn, "records_test_id": "none"}, 404),
        ("sknn s1: no encrypted records", Op.SKNN_PREDICT, {**sknn, "records_test_id": "none"}, 404),
        ("sknn s2: no index", Op.SKNN_PREDICT, {**sknn, "records_test_id": "none", "step_index": 2}, 404),
        (
            "lr train: no y",
            Op.LR_TRAIN,
            {
                "plaintext_matrix_train_id": "x",
                "plaintext_label_vector_train_id": "none",
                "weights_id": "w",
                "bias_id": "bb",
            },
            404,
        ),
        ("lr predict: no weights", Op.LR_PREDICT, {**lr_predict, "weights_id": "none"}, 404),
        # ---- 422: shapes that disagree with the stored objects
        ("skmeans s1: declared shape", Op.SKMEANS, {**s1, "encrypted_matrix_shape": [N + 1, A, M]}, 422),
        ("skmeans s1: m", Op.SKMEANS, {**s1, "m": 4}, 422),
        ("skmeans s1: UDM of wrong size", Op.SKMEANS, {**s1, "namespace": "badudm"}, 422),
        ("skmeans s1 WIP: centroids for another k", Op.SKMEANS, {**s1_wip, "k": 2}, 422),
        ("skmeans s2: shift attributes", Op.SKMEANS, {**s2, "shift_matrix_id": "badshift"}, 422),
        ("skmeans s2: shift rows vs k", Op.SKMEANS, {**s2, "k": 2}, 422),
        ("skmeans s2: declared shape", Op.SKMEANS, {**s2, "encrypted_matrix_shape": [N, A + 1]}, 422),
        ("dbskmeans s1: declared UDM shape", Op.DBSKMEANS, {**d1, "encrypted_udm_shape": [N, K, A]}, 422),
        ("nnc: rectangular dm", Op.NNC, {"plaintext_matrix_id": "rect", "threshold": 1.0}, 422),
        ("knn: labels shape", Op.KNN_PREDICT, {**knn, "model_labels_shape": [1, 9]}, 422),
        ("knn: attributes differ", Op.KNN_PREDICT, {**knn, "records_test_id": "rec3"}, 422),
        (
            "sknn s1: declared model shape",
            Op.SKNN_PREDICT,
            {**sknn, "encrypted_model_shape": [11, A, M]},
            422,
        ),
        ("sknn s2: index out of range", Op.SKNN_PREDICT, {**sknn, "step_index": 2}, 422),
        ("lr predict: weights length", Op.LR_PREDICT, lr_predict, 422),
        # ---- 400: k larger than the number of records (and invalid parameters)
        ("kmeans: k > n", Op.KMEANS, {"plaintext_matrix_id": "km", "k": N + 1}, 400),
        ("skmeans s1: k > n", Op.SKMEANS, {**s1, "k": N + 1}, 400),
        ("skmeans: step 3", Op.SKMEANS, {**s1, "step_index": 3}, 400),
        ("knn: unknown metric", Op.KNN_PREDICT, {**knn, "distance": "COSINE"}, 400),
        # ---- 422: wrong dtypes
        ("skmeans s1: declared dtype", Op.SKMEANS, {**s1, "encrypted_matrix_dtype": "float32"}, 422),
        (
            "skmeans s1: bytes instead of ndarray",
            Op.SKMEANS,
            {"plaintext_matrix_id": "ct", "step_index": 1, "k": 1},
            422,
        ),
        ("kmeans: bool matrix", Op.KMEANS, {"plaintext_matrix_id": "kmbool"}, 422),
        ("knn: fractional labels", Op.KNN_PREDICT, {**knn, "model_id": "fmdl"}, 422),
        (
            "sknn s2: fractional index",
            Op.SKNN_PREDICT,
            {"model_id": "mdl", "records_test_id": "frec", "step_index": 2},
            422,
        ),
        (
            "lr train: labels not 0/1",
            Op.LR_TRAIN,
            {
                "plaintext_matrix_train_id": "x",
                "plaintext_label_vector_train_id": "y",
                "weights_id": "w",
                "bias_id": "bb",
            },
            422,
        ),
    ]


async def test_bad_commands_leave_storage_unchanged(rig):
    state = await _populate(rig)
    before = await snapshot(rig.store)
    problems = []
    for name, op, params, code in _cases(state["job"], state["dbs"]):
        reply = await rig.call(op, params)
        if reply["ok"] or reply["error"]["code"] != code:
            problems.append(f"{name}: expected {code}, got {reply.get('error') or reply.get('result')}")
        after = await snapshot(rig.store)
        if after != before:
            changed = sorted(set(after.items()) ^ set(before.items()))
            problems.append(f"{name}: storage changed: {changed}")
            before = after
    assert not problems, "\n".join(problems)
    assert rig.worker.inflight == 0
