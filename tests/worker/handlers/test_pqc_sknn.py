"""classification.pqc.sknn.predict end to end over NATS, both ciphertext layouts."""

from __future__ import annotations

from collections.abc import AsyncIterator

import numpy as np
import pytest

from core.algorithms import pqc_sknn
from core.crypto import ckks
from core.pqc_dataowner import encrypt_dataset, encrypt_dataset_columns, run_pqc_sknn
from schemas import keys
from tests.worker.handlers import pqc_support
from worker.handlers import pqc, pqc_common

OP = "classification.pqc.sknn.predict"


@pytest.fixture(scope="module")
async def worker(
    nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[pqc_support.PqcWorker]:
    w = await pqc_support.start_pqc_worker(
        nats_url,
        tmp_path_factory.mktemp("pqcsknn"),
        keys_ctx=pqc_support.owner_context(),
        num_chunks=3,
        capacity=2,
    )
    yield w
    await pqc_support.stop_pqc_worker(w)


def _data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    model = pqc_support.blobs(9, 3, 3, seed=2)
    labels = np.array([7, 9, 4, 7, 9, 4, 7, 9, 4])
    records = model[[1, 4, 8, 0]] + np.random.default_rng(1).normal(0, 0.05, size=(4, 3))
    return model, labels, records


async def _upload(
    worker: pqc_support.PqcWorker,
    model: np.ndarray,
    labels: np.ndarray,
    records: np.ndarray,
    layout: str,
    mid: str,
    rid: str,
) -> int:
    """Returns the model block size (packed) or 0 (rows)."""
    owner = pqc_support.owner_context()
    await worker.store.put_ndarray(keys.labels(mid), labels.reshape(1, -1))
    if layout == "rows":
        await worker.put_ciphertexts(keys.encrypted(mid), encrypt_dataset(owner, model), list(model.shape))
        await worker.put_ciphertexts(
            keys.encrypted(rid), encrypt_dataset(owner, records), list(records.shape)
        )
        return 0
    cols = encrypt_dataset_columns(owner, model)
    size = ckks.column_block_size(model.shape[0], ckks.slot_count(owner))
    await worker.put_ciphertexts(
        keys.encrypted(mid), [v for b in cols for v in b], [len(cols), model.shape[1]]
    )
    queries = [v for row in records for v in ckks.encrypt_replicated(owner, row, size)]
    await worker.put_ciphertexts(keys.encrypted(rid), queries, list(records.shape))
    return size


@pytest.mark.parametrize("layout", ["rows", "packed"])
async def test_predictions_match_plaintext_and_in_process(worker: pqc_support.PqcWorker, layout: str) -> None:
    owner = pqc_support.owner_context()
    model, labels, records = _data()
    mid, rid = f"model{layout}", f"records{layout}"
    await _upload(worker, model, labels, records, layout, mid, rid)
    params = {
        "model_id": mid,
        "records_test_id": rid,
        "layout": layout,
        "distance": "EUCLIDEAN",
        "encrypted_records_shape": list(records.shape),
    }
    if layout == "rows":
        params["encrypted_model_shape"] = list(model.shape)
    r1 = await worker.ok(OP, {**params, "step_index": 1})
    blocks = 1
    assert r1["distances_id"] == keys.distances(rid) and r1["exact"] is False
    assert r1["distances_shape"] == ([4, 9] if layout == "rows" else [4, blocks])
    assert r1["block_size"] == (None if layout == "rows" else 9) and r1["layout"] == layout
    flat = await worker.get_ciphertexts(owner, r1["distances_id"])
    plain = ((records[:, None, :] - model[None, :, :]) ** 2).sum(axis=2)
    if layout == "rows":
        grid = [flat[t * 9 : (t + 1) * 9] for t in range(4)]
        decrypted = np.stack([ckks.decrypt_vectors(owner, row, width=3).sum(axis=1) for row in grid])
        index = pqc_sknn.nearest_from_pairs(owner, grid, 3)
    else:
        grid = [flat[t : t + 1] for t in range(4)]
        decrypted = np.stack([ckks.decrypt_vector(owner, row[0])[:9] for row in grid])
        index = pqc_sknn.nearest_from_packed(owner, grid, 9)
    assert pqc_support.close(decrypted, plain, 1e-3)
    assert index.tolist() == np.argmin(plain, axis=1).tolist() == [1, 4, 8, 0]
    await worker.store.put_ndarray(keys.distances_index(rid), index.reshape(1, -1))
    r2 = await worker.ok(OP, {**params, "step_index": 2, "model_labels_shape": [1, 9]})
    inproc, _ = run_pqc_sknn(model, labels, records, layout=layout, ctx=owner)
    assert r2["label_vector"] == inproc.tolist() == labels[[1, 4, 8, 0]].tolist()


async def test_manhattan_is_refused_and_euclidean_is_the_default(worker: pqc_support.PqcWorker) -> None:
    model, labels, records = _data()
    await _upload(worker, model, labels, records, "rows", "mm", "mr")
    for spelling in ("MANHATHAN", "manhattan"):
        err = await worker.error(OP, {"model_id": "mm", "records_test_id": "mr", "distance": spelling})
        assert (err["code"], err["type"]) == (400, "UNSUPPORTED_OPERATION")
        assert "EUCLIDEAN" in err["message"] and "CKKS" in err["message"]
    assert not await worker.store.exists(keys.distances("mr"))
    r1 = await worker.ok(OP, {"model_id": "mm", "records_test_id": "mr"})  # no distance: Euclidean
    assert r1["distances_shape"] == [4, 9] and r1["distance"] == "EUCLIDEAN"


async def test_loop_bounds_come_from_storage_not_from_declared_shapes(worker: pqc_support.PqcWorker) -> None:
    model, labels, records = _data()
    await _upload(worker, model, labels, records, "rows", "bm", "br")
    err = await worker.error(
        OP, {"model_id": "bm", "records_test_id": "br", "encrypted_model_shape": [1000, 3]}
    )
    assert err["code"] == 422 and "1000" in err["message"]
    err = await worker.error(OP, {"model_id": "bm", "records_test_id": "br", "layout": "packed"})
    assert err["code"] == 422  # rows-packed records with a packed layout: shapes do not fit
    await worker.store.put_ndarray(keys.distances_index("br"), np.array([[0, 9, 1, 2]]))
    err = await worker.error(OP, {"model_id": "bm", "records_test_id": "br", "step_index": 2})
    assert err["code"] == 422 and "indices" in err["message"]


@pytest.mark.parametrize("layout", ["rows", "packed"])
async def test_work_split_over_the_pool_gives_the_same_distances(
    worker: pqc_support.PqcWorker, layout: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    owner = pqc_support.owner_context()
    model, labels, records = _data()
    mid, rid = f"splitm{layout}", f"splitr{layout}"
    await _upload(worker, model, labels, records, layout, mid, rid)
    params = {"model_id": mid, "records_test_id": rid, "layout": layout}
    whole = await worker.get_ciphertexts(owner, (await worker.ok(OP, params))["distances_id"])
    monkeypatch.setattr(pqc_common, "MIN_PART_WORK", 1)
    assert pqc.spans(4, 9, 2) == [(0, 2), (2, 4)]
    pids_before = set(worker.service.pool.pids())
    split = await worker.get_ciphertexts(owner, (await worker.ok(OP, params))["distances_id"])
    assert len(split) == len(whole) and len(pids_before) == 2
    for a, b in zip(whole, split, strict=True):
        assert pqc_support.close(ckks.decrypt_vector(owner, a), ckks.decrypt_vector(owner, b), 1e-6)
