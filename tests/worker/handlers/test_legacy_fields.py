"""Legacy fields end to end: a Manager that sends the original client's complete requests
is served by a real worker (every Rory operation registered, real local store, real nats-server),
a misspelt field is a 400, and a legacy shape or dtype that disagrees with storage is a 422 naming
both, before anything is written.

The requests are tests/schemas/legacy_requests.py. The CKKS operations run without key material
here: their commands must get past parameter validation (no 400), which is what this file is about;
tests/worker/handlers/test_pqc_*.py run them with keys.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schemas import keys
from schemas.operations import Op
from tests.schemas.legacy_requests import (
    MISSPELT,
    MODEL,
    ORIGINAL_REQUESTS,
    RECORDS,
    ROOT,
    A,
    K,
    M,
    N,
    misspelt,
)
from tests.worker.handlers.owner import Rig, blobs, snapshot, upload_secure_kmeans
from worker.handlers import register_all
from worker.runtime.registry import Registry
from worker.settings import Settings
from worker.storage.local import LocalStore

#: Operations that need CKKS key material, which this worker does not have.
CKKS = {Op.PQC_SKMEANS, Op.PQC_DBSKMEANS, Op.PQC_KMEANS, Op.PQC_SKNN_PREDICT, Op.PPLR_TRAIN, Op.PPLR_PREDICT}


async def _upload(store: LocalStore) -> None:
    """The objects the original requests name (tests/schemas/legacy_requests.py), with matching shapes."""
    rng = np.random.default_rng(5)
    data = blobs(N, A, K, seed=3)
    await store.put_ndarray(ROOT, data)
    job = await upload_secure_kmeans(store, data, K, ROOT)  # encrypted<P> (N, A, M) and <P>udm
    assert job.encrypted.shape == (N, A, M) and job.udm.shape == (N, N, A)
    await store.put_ndarray(keys.encrypted_udm(ROOT), job.udm)  # DBSKMeans reads the same layout
    distances = np.abs(data[:, None, :] - data[None, :, :]).sum(axis=2)
    await store.put_ndarray(keys.distance_matrix(ROOT), distances)
    await store.put_ndarray(keys.encrypted_distance_matrix(ROOT), distances * 3.0 + 1.0)
    await store.put_ndarray(MODEL, data)
    await store.put_ndarray(keys.labels(MODEL), rng.integers(0, K, size=(1, N)).astype(np.int64))
    await store.put_ndarray(RECORDS, data[:4] + 0.1)
    await store.put_ndarray(keys.encrypted(MODEL), job.encrypted)
    await store.put_ndarray(keys.encrypted(RECORDS), job.encrypted[:4])
    await store.put_ndarray("train_x", data)
    await store.put_ndarray("train_y", (data[:, 0] > data[:, 0].mean()).astype(np.float64))
    await store.put_ndarray("test_x", data[:4])


@pytest.fixture
async def legacy_rig(
    start_worker: Any,
    nc: Any,
    local_store: LocalStore,
    make_settings: Callable[..., Settings],
    tmp_path: Path,
) -> Rig:
    """A worker serving all 15 operations (worker.handlers.register_all) on a store holding the inputs."""
    await _upload(local_store)
    registry = Registry()
    register_all(registry)
    settings = make_settings(storage_path=str(local_store.root), keys_path=str(tmp_path / "no-keys"))
    worker = await start_worker(registry=registry, store=local_store, settings=settings)
    await worker.pool.wait_ready(timeout=60)
    return Rig(nc=nc, settings=settings, store=local_store, worker=worker)


async def test_the_original_clients_requests_are_served(legacy_rig: Rig) -> None:
    failures: dict[str, Any] = {}
    for op in Op:  # in Op order: ml.lr.train writes the model ml.lr.predict reads
        reply = await legacy_rig.call(op.value, ORIGINAL_REQUESTS[op])
        error = reply.get("error")
        if op in CKKS:
            # Accepted: the command got past validation and only then missed its CKKS keys.
            if reply["ok"] or error["type"] != "MISSING_KEYS":
                failures[op.value] = error or "ran without keys"
        elif not reply["ok"]:
            failures[op.value] = error
    assert not failures, failures


async def test_a_misspelt_field_is_a_400_naming_it(legacy_rig: Rig) -> None:
    before = await snapshot(legacy_rig.store)
    for op in Op:
        error = await legacy_rig.error(op.value, misspelt(op))
        wrong = MISSPELT[op][1]
        assert (error["code"], error["type"]) == (400, "BAD_REQUEST"), (op, error)
        assert f"params.{wrong}: Extra inputs are not permitted" in error["message"], (op, error)
    assert await snapshot(legacy_rig.store) == before


CHECKS: list[tuple[Op, dict[str, Any], int, tuple[str, ...]]] = [
    (Op.NNC, {"dm_shape": [N, N - 1]}, 422, ("params.dm_shape", f"[{N}, {N - 1}]", f"[{N}, {N}]")),
    (Op.NNC, {"plaintext_matrix_shape": [N + 1, A]}, 422, ("params.plaintext_matrix_shape", f"[{N}, {A}]")),
    (
        Op.NNC,
        {"plaintext_matrix_dtype": "float32"},
        422,
        ("params.plaintext_matrix_dtype", "float32", "float64"),
    ),
    (Op.NNC, {"dm_dtype": "int64"}, 422, ("params.dm_dtype", "int64", "float64")),
    (Op.NNC, {"dm_id": "absent"}, 404, ("absent",)),
    (
        Op.DBSNNC,
        {"encrypted_matrix_shape": [N, A + 1]},
        422,
        ("params.encrypted_matrix_shape", f"[{N}, {A}, {M}]"),
    ),
    (Op.DBSNNC, {"encrypted_matrix_dtype": "float32"}, 422, ("params.encrypted_matrix_dtype", "float32")),
    (Op.DBSNNC, {"encrypted_dm_shape": [N]}, 422, ("params.encrypted_dm_shape", f"[{N}, {N}]")),
    (Op.DBSNNC, {"encrypted_dm_dtype": "float16"}, 422, ("params.encrypted_dm_dtype", "float16")),
    (Op.DBSNNC, {"encrypted_matrix_id": "absent"}, 404, ("absent",)),
    (Op.SKNN_PREDICT, {"encrypted_model_dtype": "int32"}, 422, ("params.encrypted_model_dtype", "int32")),
    (Op.SKNN_PREDICT, {"encrypted_records_dtype": "uint8"}, 422, ("params.encrypted_records_dtype", "uint8")),
]


async def test_a_legacy_field_that_disagrees_with_storage_is_refused_before_any_write(
    legacy_rig: Rig,
) -> None:
    before = await snapshot(legacy_rig.store)
    for op, change, code, mentions in CHECKS:
        error = await legacy_rig.error(op.value, {**ORIGINAL_REQUESTS[op], **change})
        assert error["code"] == code, (op, change, error)
        for text in mentions:
            assert text in error["message"], (op, change, error)
        assert await snapshot(legacy_rig.store) == before, (op, change)
    # A declared prefix of a Liu matrix's shape is what Rory's newest client sends: accepted.
    result = await legacy_rig.ok(
        Op.DBSNNC.value, {**ORIGINAL_REQUESTS[Op.DBSNNC], "encrypted_matrix_shape": [N, A]}
    )
    assert len(result["label_vector"]) == N
