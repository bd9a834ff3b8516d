"""ml.pplr.train / ml.pplr.predict end to end over NATS: row layout (Galois keys, small 6-level context)
and packed layout (the pplr-128 profile, no Galois keys)."""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator

import numpy as np
import pytest
import tenseal as ts

from core.algorithms import lr, pplr
from core.crypto import ckks
from core.pqc_dataowner import (
    decrypt_model,
    decrypt_predictions,
    encrypt_dataset,
    encrypt_labels,
    encrypt_labels_packed,
    encrypt_model,
    run_pplr,
)
from schemas import keys
from tests.worker.handlers.pqc_support import (
    PqcWorker,
    close,
    pplr_context,
    start_pqc_worker,
    stop_pqc_worker,
)
from worker.handlers.pqc import COMMAND_TAG

TRAIN, PREDICT = "ml.pplr.train", "ml.pplr.predict"
X = np.array([[1, 2], [0.5, -1], [-1.5, 0.3], [0.2, 0.4], [-0.7, -1.1], [1.3, -0.2]])
Y = np.array([1, 0, 1, 1, 0, 1])
W0, B0, LR = np.array([0.1, -0.2]), 0.05, 0.1
PARAMS = {
    "encrypted_matrix_train_id": "encryptedtx",
    "encrypted_label_vector_train_id": "encryptedty",
    "encrypted_weights_id": "txencryptedweights",
    "encrypted_bias_id": "txencryptedbias",
    "learning_rate": LR,
}


@pytest.fixture(scope="module")
async def worker(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PqcWorker]:
    w = await start_pqc_worker(
        nats_url, tmp_path_factory.mktemp("pplr"), keys_ctx=pplr_context(), galois=True
    )
    owner = pplr_context()
    await w.put_ciphertexts(PARAMS["encrypted_matrix_train_id"], encrypt_dataset(owner, X), list(X.shape))
    await w.put_ciphertexts(PARAMS["encrypted_label_vector_train_id"], encrypt_labels(owner, Y), [len(Y)])
    yield w
    await stop_pqc_worker(w)


async def _put_model(worker: PqcWorker, weights: np.ndarray, bias: float) -> tuple[bytes, bytes]:
    wv, bv = encrypt_model(pplr_context(), weights, bias)
    await worker.put_ciphertexts(PARAMS["encrypted_weights_id"], [wv], [1], num_chunks=1)
    await worker.put_ciphertexts(PARAMS["encrypted_bias_id"], [bv], [1], num_chunks=1)
    return wv.serialize(), bv.serialize()


async def _get_model(worker: PqcWorker) -> tuple[np.ndarray, float]:
    owner = pplr_context()
    (w,) = await worker.get_ciphertexts(owner, PARAMS["encrypted_weights_id"])
    (b,) = await worker.get_ciphertexts(owner, PARAMS["encrypted_bias_id"])
    return decrypt_model(owner, w, b, threshold=0.0)


async def _inputs(worker: PqcWorker, *names: str) -> list[list[ts.CKKSVector]]:
    return [await worker.get_ciphertexts(pplr_context(), name) for name in names]


async def test_two_epochs_match_the_core_on_the_same_ciphertexts_and_plaintext(worker: PqcWorker) -> None:
    owner = pplr_context()
    x_rows, y = await _inputs(
        worker, PARAMS["encrypted_matrix_train_id"], PARAMS["encrypted_label_vector_train_id"]
    )
    w, b = W0, B0
    pw, pb = W0, B0
    for _ in range(2):  # the data owner refreshes (decrypts, re-encrypts) between epochs
        w_bytes, b_bytes = await _put_model(worker, w, b)
        result = await worker.ok(TRAIN, {**PARAMS, "n_samples": 6, "n_features": 2})
        assert result["algorithm"] == "PPLR_TRAIN" and result["n_samples"] == 6 and not result["recovered"]
        assert result["train_time"] > 0
        w, b = await _get_model(worker)
        assert not await worker.store.exists(keys.staged(PARAMS["encrypted_weights_id"]))
        # the core, in process, on exactly the ciphertexts the worker read
        cw, cb = pplr.fit_step(x_rows, y, *ckks.deserialize(owner, [w_bytes, b_bytes]), LR)
        core_w, core_b = decrypt_model(owner, cw, cb, threshold=0.0)
        # (TenSEAL's polyval re-randomises, so "same" means within the noise of this 2^26 scale)
        assert close(w, core_w, 5e-4) and abs(b - core_b) < 5e-4
        pw, pb = lr.gradient_step(X, Y, pw, pb, LR)
        assert close(w, pw, 1e-2) and abs(b - pb) < 1e-2  # CKKS at a 2^26 scale vs plaintext
    inproc_w, inproc_b, _ = run_pplr(X, Y, epochs=2, learning_rate=LR, ctx=owner, weights=W0, bias=B0)
    assert close(w, inproc_w, 1e-2) and abs(b - inproc_b) < 1e-2


async def test_predict_matches_the_core_and_plaintext(worker: PqcWorker) -> None:
    owner = pplr_context()
    await worker.put_ciphertexts("encryptedtestx", encrypt_dataset(owner, X[:4]), [4, 2])
    w_bytes, b_bytes = await _put_model(worker, W0, B0)
    result = await worker.ok(
        PREDICT,
        {
            "encrypted_matrix_test_id": "encryptedtestx",
            "encrypted_weights_id": PARAMS["encrypted_weights_id"],
            "encrypted_bias_id": PARAMS["encrypted_bias_id"],
        },
    )
    assert result["encrypted_predictions_id"] == keys.encrypted_predictions("encryptedtestx")
    assert result["n_records"] == 4 and result["algorithm"] == "PPLR_PREDICT"
    predictions = decrypt_predictions(
        owner, await worker.get_ciphertexts(owner, result["encrypted_predictions_id"])
    )
    (x_rows,) = await _inputs(worker, "encryptedtestx")
    core = decrypt_predictions(owner, pplr.predict(x_rows, *ckks.deserialize(owner, [w_bytes, b_bytes])))
    assert close(predictions, core, 5e-4)
    assert close(predictions, lr.sigmoid(X[:4] @ W0 + B0), 1e-2)


async def test_retry_of_the_same_command_does_not_train_twice(worker: PqcWorker) -> None:
    await _put_model(worker, W0, B0)
    first = await worker.ok(TRAIN, PARAMS, id="pplr-retry-1")
    after_first = await _get_model(worker)
    again = await worker.ok(TRAIN, PARAMS, id="pplr-retry-1")  # e.g. the reply was lost
    assert again == first and not first["recovered"]  # answered from the first run
    after_retry = await _get_model(worker)
    assert close(after_retry[0], after_first[0], 1e-9) and after_retry[1] == after_first[1]
    info = await worker.store.info(PARAMS["encrypted_weights_id"])
    assert info.tags[COMMAND_TAG] == "pplr-retry-1"


async def test_a_command_another_instance_finished_is_recognised_by_its_tags(worker: PqcWorker) -> None:
    """This worker never saw the id (a restart, or a retry routed to another node): the tags on both
    targets say the update was made, so it answers without training again."""
    wv, bv = encrypt_model(pplr_context(), W0, B0)
    tag = {COMMAND_TAG: "pplr-done-elsewhere"}
    for key, vector in ((PARAMS["encrypted_weights_id"], wv), (PARAMS["encrypted_bias_id"], bv)):
        await worker.store.put_bytes_list(key, [vector.serialize()], shape=[1], tags=tag)
    result = await worker.ok(TRAIN, PARAMS, id="pplr-done-elsewhere")
    assert result["recovered"] and result["train_time"] == 0.0
    w, b = await _get_model(worker)
    assert close(w, W0, 1e-3) and abs(b - B0) < 1e-3


async def test_interrupted_write_is_completed_from_the_staged_copies(worker: PqcWorker) -> None:
    """Simulate a failure between overwriting the weights and the bias: the staged pair is complete,
    the targets are half old. The retry (same id) completes the update instead of training again."""
    owner = pplr_context()
    new_w, new_b = np.array([0.5, 0.25]), -0.125
    await _put_model(worker, np.array([0.5, 0.25]), B0)  # weights already overwritten, bias still old
    tag = {COMMAND_TAG: "pplr-crashed"}
    wv, bv = encrypt_model(owner, new_w, new_b)
    await worker.store.put_bytes_list(
        keys.staged(PARAMS["encrypted_weights_id"]), [wv.serialize()], shape=[1], tags=tag
    )
    await worker.store.put_bytes_list(
        keys.staged(PARAMS["encrypted_bias_id"]), [bv.serialize()], shape=[1], tags=tag
    )
    result = await worker.ok(TRAIN, PARAMS, id="pplr-crashed")
    assert result["recovered"]
    w, b = await _get_model(worker)
    assert close(w, new_w, 1e-3) and abs(b - new_b) < 1e-3
    assert not await worker.store.exists(keys.staged(PARAMS["encrypted_bias_id"]))

    # a lone staged copy (staging itself failed) is discarded; the command trains normally
    await worker.store.put_bytes_list(
        keys.staged(PARAMS["encrypted_weights_id"]), [wv.serialize()], shape=[1], tags=tag
    )
    result = await worker.ok(TRAIN, PARAMS)
    assert not result["recovered"]
    w2, b2 = await _get_model(worker)
    pw, pb = lr.gradient_step(X, Y, new_w, new_b, LR)
    assert close(w2, pw, 1e-2) and abs(b2 - pb) < 1e-2
    assert not await worker.store.exists(keys.staged(PARAMS["encrypted_weights_id"]))


async def test_too_many_epochs_for_the_context_and_bad_inputs(worker: PqcWorker) -> None:
    await _put_model(worker, W0, B0)
    err = await worker.error(TRAIN, {**PARAMS, "epochs": 2})
    assert err["code"] == 422 and "levels" in err["message"]
    err = await worker.error(TRAIN, {**PARAMS, "n_samples": 7})
    assert err["code"] == 422
    err = await worker.error(TRAIN, {**PARAMS, "n_features": 3})
    assert err["code"] == 422 and "n_features" in err["message"]
    err = await worker.error(TRAIN, {**PARAMS, "encrypted_bias_id": PARAMS["encrypted_weights_id"]})
    assert err["code"] == 400
    # the failed calls left the model untouched
    w, b = await _get_model(worker)
    assert close(w, W0, 1e-3) and abs(b - B0) < 1e-3
    assert ckks.slot_count(pplr_context()) == 4096


# ------------------------------------------------------------------ packed layout (no Galois keys)
PACKED = {
    "encrypted_matrix_train_id": "encryptedpx",
    "encrypted_label_vector_train_id": "encryptedpy",
    "encrypted_weights_id": "pxencryptedweights",
    "encrypted_bias_id": "pxencryptedbias",
    "learning_rate": LR,
    "layout": "packed",
}
TOL = 2e-4


@functools.cache
def packed_owner() -> ts.Context:
    """The pplr-128 profile itself: N=8192, 4 levels, no Galois keys."""
    return ckks.create_context("pplr-128")


@pytest.fixture(scope="module")
async def packed_worker(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PqcWorker]:
    w = await start_pqc_worker(nats_url, tmp_path_factory.mktemp("pplr-packed"), keys_ctx=packed_owner(),
                               capacity=2)
    yield w
    await stop_pqc_worker(w)


async def _put_packed(worker: PqcWorker, x: np.ndarray, y: np.ndarray, slots: int | None = None) -> int:
    """Column-pack X and y (blocks of ``slots``); returns the block size."""
    owner = packed_owner()
    cols = ckks.encrypt_columns(owner, x, slots)
    await worker.put_ciphertexts(PACKED["encrypted_matrix_train_id"], [v for b in cols for v in b],
                                 [len(cols), x.shape[1]])
    await worker.put_ciphertexts(PACKED["encrypted_label_vector_train_id"],
                                 encrypt_labels_packed(owner, y, slots), [len(cols)])
    return cols[0][0].size()


async def _packed_epoch(
    worker: PqcWorker, w: np.ndarray, b: float, size: int, n: int
) -> tuple[np.ndarray, float]:
    owner = packed_owner()
    wb, bb = pplr.packed_model_blobs(owner, w, b, size)
    await worker.store.put_bytes_list(PACKED["encrypted_weights_id"], wb, shape=[len(wb)])
    await worker.store.put_bytes_list(PACKED["encrypted_bias_id"], [bb], shape=[1])
    result = await worker.ok(TRAIN, {**PACKED, "n_samples": n})
    assert result["encrypted_gradients_id"] == keys.pplr_gradients(PACKED["encrypted_weights_id"])
    assert result["epochs"] == 1 and result["n_samples"] == n and not result["recovered"]
    assert await worker.store.get_bytes_list(PACKED["encrypted_weights_id"]) == wb  # the owner updates
    grads = await worker.get_ciphertexts(owner, result["encrypted_gradients_id"])
    return pplr.update_from_packed(owner, grads, w, b, LR, n, threshold=0.0)


async def test_packed_epochs_match_plaintext_without_galois_keys(packed_worker: PqcWorker) -> None:
    size = await _put_packed(packed_worker, X, Y)
    assert size == len(Y)
    w, b, pw, pb = W0, B0, W0, B0
    for _ in range(2):
        w, b = await _packed_epoch(packed_worker, w, b, size, len(Y))
        pw, pb = lr.gradient_step(X, Y, pw, pb, LR)
        # pplr-128's 32-bit primes lie ~2^-18 off the 2^32 scale TenSEAL assumes: ~1e-5 relative error
        assert close(w, pw, TOL) and abs(b - pb) < TOL
    # the rows layout needs the rotation keys this worker does not have
    err = await packed_worker.error(TRAIN, {**PACKED, "layout": "rows", "n_samples": len(Y)})
    assert err["code"] == 422, err


async def test_packed_blocks_split_over_the_pool_and_padding_is_masked(packed_worker: PqcWorker) -> None:
    rng = np.random.default_rng(5)
    x = rng.normal(size=(78, 2))
    y = (x @ np.array([1.0, -0.5]) > 0).astype(float)
    size = await _put_packed(packed_worker, x, y, slots=4)  # 20 blocks, the last one half padding
    owner = packed_owner()
    wb, bb = pplr.packed_model_blobs(owner, W0, B0, size)
    await packed_worker.store.put_bytes_list(PACKED["encrypted_weights_id"], wb, shape=[2])
    await packed_worker.store.put_bytes_list(PACKED["encrypted_bias_id"], [bb], shape=[1])
    result = await packed_worker.ok(TRAIN, {**PACKED, "n_samples": 78, "n_features": 2})
    grads = await packed_worker.get_ciphertexts(owner, result["encrypted_gradients_id"])
    assert len(grads) == 2 * 3  # two pool parts, each (g_w0, g_w1, g_b)
    info = await packed_worker.store.info(result["encrypted_gradients_id"])
    assert list(info.full_shape or []) == [2, 3]
    w, b = pplr.update_from_packed(owner, grads, W0, B0, LR, 78, threshold=0.0)
    pw, pb = lr.gradient_step(x, y, W0, B0, LR)
    assert close(w, pw, TOL) and abs(b - pb) < TOL


async def test_packed_predict(packed_worker: PqcWorker) -> None:
    owner = packed_owner()
    blobs_x, shape, _, size = pplr.encrypt_training_packed(owner, X[:4])
    await packed_worker.store.put_bytes_list("encryptedpackedtest", blobs_x, shape=shape)
    wb, bb = pplr.packed_model_blobs(owner, W0, B0, size)
    await packed_worker.store.put_bytes_list(PACKED["encrypted_weights_id"], wb, shape=[2])
    await packed_worker.store.put_bytes_list(PACKED["encrypted_bias_id"], [bb], shape=[1])
    model = {k: PACKED[k] for k in ("encrypted_weights_id", "encrypted_bias_id")}
    result = await packed_worker.ok(
        PREDICT,
        {"encrypted_matrix_test_id": "encryptedpackedtest", "layout": "packed", "n_features": 2, **model},
    )
    assert result["n_records"] == 4
    vectors = await packed_worker.get_ciphertexts(owner, result["encrypted_predictions_id"])
    proba = decrypt_predictions(owner, vectors, 4)
    assert close(proba, lr.sigmoid(X[:4] @ W0 + B0), TOL)


async def test_packed_bad_requests(packed_worker: PqcWorker) -> None:
    size = await _put_packed(packed_worker, X, Y)
    owner = packed_owner()
    wb, bb = pplr.packed_model_blobs(owner, W0, B0, size)
    await packed_worker.store.put_bytes_list(PACKED["encrypted_weights_id"], wb, shape=[2])
    await packed_worker.store.put_bytes_list(PACKED["encrypted_bias_id"], [bb], shape=[1])
    ok = {**PACKED, "n_samples": len(Y)}
    for params, code, words in (
        ({**ok, "epochs": 2}, 400, "one epoch"),
        ({**PACKED}, 400, "n_samples"),
        ({**ok, "n_samples": 7}, 422, "n="),
        ({**ok, "n_features": 3}, 422, "n_features"),
        ({**ok, "encrypted_bias_id": PACKED["encrypted_weights_id"]}, 400, "different"),
    ):
        err = await packed_worker.error(TRAIN, params)
        assert err["code"] == code and words in err["message"], err
    await packed_worker.store.put_bytes_list(PACKED["encrypted_weights_id"], wb[:1], shape=[1])
    err = await packed_worker.error(TRAIN, ok)
    assert err["code"] == 422 and "weight ciphertexts" in err["message"]
    # weights replicated over the wrong number of slots
    wb3, _ = pplr.packed_model_blobs(owner, W0, B0, size + 1)
    await packed_worker.store.put_bytes_list(PACKED["encrypted_weights_id"], wb3, shape=[2])
    err = await packed_worker.error(TRAIN, ok)
    assert err["code"] == 422 and "slots" in err["message"]
