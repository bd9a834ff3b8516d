"""clustering.pqc.skmeans and clustering.pqc.dbskmeans end to end over NATS.

The raw commands here follow the data-owner driver's rounds (row-packed CKKS data, UDM, ``initsm``;
per round step 1, decrypt the shift, stop when max |S| <= tol, else store S (DBS: OPE(S)) and call
step 2) with the variants a V1 client sends, and the worker's results are compared with that driver
run over the in-process worker (tests/core/inprocess_owner.py).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import numpy as np
import pytest

from core.algorithms import pqc_dbskmeans, udm
from core.algorithms.convergence import is_converged
from core.pqc_dataowner import (
    decrypt_centroids,
    decrypt_shift,
    encrypt_dataset,
    init_shift_matrix,
)
from schemas import keys
from schemas.operations import Op
from tests.core.inprocess_owner import InProcessOwner
from tests.worker.handlers.pqc_support import (
    PqcWorker,
    blobs,
    close,
    owner_context,
    start_pqc_worker,
    stop_pqc_worker,
)

SK, DBS = "clustering.pqc.skmeans", "clustering.pqc.dbskmeans"


@pytest.fixture(scope="module")
async def worker(nats_url: str, tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[PqcWorker]:
    w = await start_pqc_worker(
        nats_url, tmp_path_factory.mktemp("pqcsk"), keys_ctx=owner_context(), num_chunks=4
    )
    yield w
    await stop_pqc_worker(w)


@pytest.fixture(scope="module")
def inproc(tmp_path_factory: pytest.TempPathFactory) -> InProcessOwner:
    """The data-owner driver over the in-process worker, with the same owner context."""
    return InProcessOwner(tmp_path_factory.mktemp("pqcsk-owner"), ctx=owner_context())


async def _prepare(
    worker: PqcWorker, x: np.ndarray, k: int, root: str, udm_key: str, worker_udm: np.ndarray
) -> None:
    owner = owner_context()
    n, a = x.shape
    await worker.put_ciphertexts(keys.encrypted(root), encrypt_dataset(owner, x), [n, a], num_chunks=3)
    await worker.put_ciphertexts(keys.init_shift_matrix(root), init_shift_matrix(owner, k, a), [k])
    await worker.store.put_ndarray(udm_key, worker_udm, num_chunks=2)


async def _drive(
    worker: PqcWorker,
    op: str,
    x: np.ndarray,
    k: int,
    root: str,
    *,
    tol: float,
    max_iterations: int = 10,
    reencrypt: Any = None,
    shift_key: str | None = None,
    extra: dict[str, Any] | None = None,
) -> tuple[np.ndarray, list[np.ndarray], int]:
    owner = owner_context()
    a = x.shape[1]
    status, labels, shifts = 1, np.zeros(0), []
    common = {"plaintext_matrix_id": root, "k": k, "encrypted_matrix_shape": list(x.shape), **(extra or {})}
    for it in range(max_iterations):
        r1 = await worker.ok(op, {**common, "step_index": 1, "clustering_status": status, "iterations": it})
        assert r1["n_iterations"] == it + 1 and r1[
            "encrypted_shift_matrix_id"
        ] == keys.encrypted_shift_matrix(root)
        labels = np.asarray(r1["label_vector"])
        s = decrypt_shift(owner, await worker.get_ciphertexts(owner, r1["encrypted_shift_matrix_id"]), a)
        shifts.append(s)
        if is_converged(s, tol):
            # the converged round: step 2 with is_zero answers COMPLETED and touches nothing
            r2 = await worker.ok(op, {**common, "step_index": 2, "is_zero": True})
            assert r2["clustering_status"] == 0
            return labels, shifts, it + 1
        wire = reencrypt(s) if reencrypt else s
        await worker.store.put_ndarray(shift_key or keys.shift_matrix(root), wire)
        r2 = await worker.ok(op, {**common, "step_index": 2, "is_zero": False})
        assert r2["clustering_status"] == 2
        status = 2
    return labels, shifts, max_iterations


async def test_skmeans_pqc_reference_example(worker: PqcWorker, inproc: InProcessOwner) -> None:
    """Reference 6.3: labels [0,1,1,1] → [0,0,1,1], S¹ = [[0,0],[-4.6667,-4.3]], S³ = 0."""
    x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    await _prepare(worker, x, 2, "ref", keys.udm("ref"), x[:, None, :] - x[None, :, :])  # full n×n×a UDM
    labels, shifts, rounds = await _drive(worker, SK, x, 2, "ref", tol=1e-4)
    assert labels.tolist() == [0, 0, 1, 1] and rounds == 3
    assert close(shifts[0], [[0, 0], [-14 / 3 + 1e-9, -4.3]], 1e-5)
    assert close(shifts[-1], np.zeros((2, 2)), 1e-5)
    run = await inproc.arun(Op.PQC_SKMEANS, x, 2, tolerance=1e-4)
    assert np.array_equal(labels, run.labels) and rounds == run.n_iter
    for mine, theirs in zip(shifts, run.shifts, strict=True):
        assert close(mine, theirs, 1e-5)
    # the stored centroids decrypt to the in-process ones
    centj = await worker.get_ciphertexts(owner_context(), keys.centroids_current("ref"))
    assert close(decrypt_centroids(owner_context(), centj, 2), run.centroids, 1e-5)
    info = await worker.store.info(keys.centroids_current("ref"))
    assert info.kind == "bytes_list" and info.num_chunks == 2 and list(info.full_shape) == [2]  # clamped to k


async def test_skmeans_pqc_blobs_match_in_process_driver(worker: PqcWorker, inproc: InProcessOwner) -> None:
    x, k = blobs(24, 3, 3, seed=11), 3
    await _prepare(worker, x, k, "sb", keys.udm("sb"), udm.build_udm(x, k))  # compact n×k×a UDM
    labels, shifts, rounds = await _drive(worker, SK, x, k, "sb", tol=1e-4)
    run = await inproc.arun(Op.PQC_SKMEANS, x, k, tolerance=1e-4)
    assert np.array_equal(labels, run.labels) and rounds == run.n_iter
    assert all(close(m, t, 1e-5) for m, t in zip(shifts, run.shifts, strict=True))
    # Step 2 wrote k x a numbers per round: the upload is as it was, the sum of the shifts beside it.
    assert np.array_equal(await worker.store.get_ndarray(keys.udm("sb")), udm.build_udm(x, k))
    c = await worker.store.get_ndarray(keys.udm_shift("sb"))
    assert c.shape == (k, 3) and close(c, np.sum(shifts[:-1], axis=0), 1e-9)


async def test_step2_without_is_zero_uses_min_error_on_the_decrypted_shift(worker: PqcWorker) -> None:
    x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    await worker.store.put_ndarray(keys.udm("mz"), x[:, None, :] - x[None, :2, :])
    await worker.store.put_ndarray(keys.shift_matrix("mz"), np.full((2, 2), 0.001))  # below MIN_ERROR
    r = await worker.ok(SK, {"step_index": 2, "plaintext_matrix_id": "mz", "k": 2})
    assert r["clustering_status"] == 0
    await worker.store.put_ndarray(keys.shift_matrix("mz"), np.full((2, 2), 0.5))
    r = await worker.ok(SK, {"step_index": 2, "plaintext_matrix_id": "mz", "k": 2})
    assert r["clustering_status"] == 2 and r["udm_shape"] == [4, 2, 2]
    # Stored in the cumulative form (docs/privacy.md): the upload as it was, plus C = the shifts' sum;
    # the current UDM, as the owner reads it, is update_udm(U0, C).
    u0 = await worker.store.get_ndarray(keys.udm("mz"))
    assert close(u0, x[:, None, :] - x[None, :2, :], 0.0)
    c = await worker.store.get_ndarray(keys.udm_shift("mz"))
    assert close(udm.update_udm(u0, c), x[:, None, :] - x[None, :2, :] + 0.5, 1e-12)
    err = await worker.error(DBS, {"step_index": 2, "plaintext_matrix_id": "mz", "k": 2})
    assert err["code"] == 400 and "is_zero" in err["message"]


async def test_dbskmeans_pqc_with_the_v1_shift_key_matches_in_process_driver(
    worker: PqcWorker, inproc: InProcessOwner
) -> None:
    """Bug 9 fixed: step 2 reads the OPE shift the V1 client writes (``<P>shiftmatrixope``)."""
    x, k, seed = blobs(20, 2, 2, seed=4), 2, 21
    rng = np.random.default_rng(seed)
    plain = udm.build_udm(x, k)
    key = pqc_dbskmeans.generate_udm_key(plain, rng=rng)
    ope = pqc_dbskmeans.encrypt_udm(key, plain, rng)
    await _prepare(worker, x, k, "db", keys.encrypted_udm("db"), ope)
    info = await worker.store.info(keys.encrypted_udm("db"))
    labels, shifts, rounds = await _drive(
        worker,
        DBS,
        x,
        k,
        "db",
        tol=1e-4,
        reencrypt=lambda s: pqc_dbskmeans.encrypt_shift(key, s, rng),
        shift_key=keys.shift_matrix_ope("db"),
        extra={"encrypted_udm_shape": list(info.full_shape), "encrypted_udm_dtype": "float64"},
    )
    run = await inproc.arun(Op.PQC_DBSKMEANS, x, k, tolerance=1e-4, rng=np.random.default_rng(seed))
    assert np.array_equal(labels, run.labels) and rounds == run.n_iter >= 2
    assert all(close(m, t, 1e-5) for m, t in zip(shifts, run.shifts, strict=True))
    stored = await worker.store.info(keys.encrypted_udm("db"))
    assert list(stored.full_shape) == [20, 2, 2] and stored.etag == info.etag  # never rewritten
    assert (await worker.store.info(keys.encrypted_udm_shift("db"))).full_shape == (2, 2)


async def test_invalid_inputs_are_rejected(worker: PqcWorker) -> None:
    x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    await _prepare(worker, x, 2, "bad", keys.udm("bad"), x[:, None, :] - x[None, :, :])
    base = {"plaintext_matrix_id": "bad", "step_index": 1, "k": 2}
    err = await worker.error(SK, {**base, "k": 5})
    assert err["code"] == 400 and "k=5" in err["message"]
    err = await worker.error(SK, {**base, "encrypted_matrix_shape": [5, 2]})
    assert err["code"] == 422
    err = await worker.error(SK, {**base, "clustering_status": 2})  # no <P>centj yet
    assert err["code"] == 404
    await worker.store.put_ndarray(keys.udm("bad"), np.zeros((5, 5, 2)))  # UDM for another dataset
    err = await worker.error(SK, {**base})
    assert err["code"] == 422 and "records" in err["message"]
    await worker.store.put_ndarray(keys.udm("bad"), np.zeros((4, 4, 3)))  # wrong attribute count
    err = await worker.error(SK, {**base})
    assert err["code"] == 422
    err = await worker.error(DBS, {**base, "encrypted_udm_shape": [4, 4, 2]})  # no <P>encryptedudm
    assert err["code"] == 404
    assert not await worker.store.exists(keys.centroids_current("bad"))


async def test_step1_retry_resumes_from_centi_when_centj_was_lost(worker: PqcWorker) -> None:
    """A MictlanX overwrite is delete-then-put: a step 1 whose last write (``centj``) failed leaves
    ``centj`` gone and ``centi`` holding the centroids that step started from. The retry must
    recompute the same round from ``centi`` (as the Liu variant does), not answer 404."""
    owner = owner_context()
    x = np.array([[1, 2], [1.5, 1.8], [8, 8], [9, 8.5]])
    await _prepare(worker, x, 2, "lost", keys.udm("lost"), x[:, None, :] - x[None, :, :])
    base = {"plaintext_matrix_id": "lost", "k": 2}
    r1 = await worker.ok(SK, {**base, "step_index": 1, "clustering_status": 1})
    s = decrypt_shift(owner, await worker.get_ciphertexts(owner, r1["encrypted_shift_matrix_id"]), 2)
    await worker.store.put_ndarray(keys.shift_matrix("lost"), s)
    await worker.ok(SK, {**base, "step_index": 2, "is_zero": False})
    first = await worker.ok(SK, {**base, "step_index": 1, "clustering_status": 2, "iterations": 1})
    shift_key, centj_key = keys.encrypted_shift_matrix("lost"), keys.centroids_current("lost")
    first_shift = decrypt_shift(owner, await worker.get_ciphertexts(owner, shift_key), 2)
    new_centroids = decrypt_centroids(owner, await worker.get_ciphertexts(owner, centj_key), 2)
    await worker.store.delete(centj_key)  # the failed last write

    again = await worker.ok(SK, {**base, "step_index": 1, "clustering_status": 2, "iterations": 1})
    assert again["label_vector"] == first["label_vector"]
    retry_shift = decrypt_shift(owner, await worker.get_ciphertexts(owner, shift_key), 2)
    assert close(retry_shift, first_shift, 1e-5)
    centj = await worker.get_ciphertexts(owner, centj_key)
    assert close(decrypt_centroids(owner, centj, 2), new_centroids, 1e-5)


async def test_a_manager_echoing_step2s_udm_shape_and_dtype_is_served(worker: PqcWorker) -> None:
    """The original protocol echoes step 2's ``encrypted_udm_shape``/``encrypted_udm_dtype`` into the
    next step 1. Storage keeps a float32 upload and step 2 reports the current (float64, n x k x a)
    matrix: both the echo and the stored values are accepted, anything else is a 422."""
    owner = owner_context()
    x, k = blobs(20, 2, 2, seed=4), 2
    rng = np.random.default_rng(21)
    plain = udm.build_udm(x, k)
    key = pqc_dbskmeans.generate_udm_key(plain, rng=rng)
    sealed = pqc_dbskmeans.encrypt_udm(key, plain, rng).astype(np.float32)  # compact: n x k x a
    await _prepare(worker, x, k, "f32", keys.encrypted_udm("f32"), sealed)
    common = {"plaintext_matrix_id": "f32", "k": k}
    r1 = await worker.ok(DBS, {**common, "step_index": 1, "clustering_status": 1, "iterations": 0})
    assert r1["encrypted_udm_dtype"] == "float32"
    s = decrypt_shift(owner, await worker.get_ciphertexts(owner, r1["encrypted_shift_matrix_id"]), 2)
    await worker.store.put_ndarray(keys.shift_matrix("f32"), pqc_dbskmeans.encrypt_shift(key, s, rng))
    r2 = await worker.ok(DBS, {**common, "step_index": 2, "is_zero": False})
    echo = {name: r2[name] for name in ("encrypted_udm_shape", "encrypted_udm_dtype")}
    assert echo == {"encrypted_udm_shape": [20, 2, 2], "encrypted_udm_dtype": "float64"}
    nxt = {**common, "step_index": 1, "clustering_status": 2, "iterations": 1}
    assert (await worker.ok(DBS, {**nxt, **echo}))["n_iterations"] == 2
    stored = {"encrypted_udm_shape": [20, 2, 2], "encrypted_udm_dtype": "float32"}
    assert (await worker.ok(DBS, {**nxt, **stored}))["n_iterations"] == 2
    for wrong in ({"encrypted_udm_dtype": "int64"}, {"encrypted_udm_shape": [20, 3, 2]}):
        err = await worker.error(DBS, {**nxt, **wrong})
        assert err["code"] == 422 and str(next(iter(wrong.values()))) in err["message"]
