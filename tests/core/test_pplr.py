"""PPLR over CKKS: the reference's worked step (rows and packed layouts), predict, epochs, key checks."""

from __future__ import annotations

import numpy as np
import pytest
import tenseal as ts

from core import pqc_dataowner as do
from core.algorithms import pplr
from core.algorithms.lr import LogisticRegression, gradient_step
from core.crypto import ckks
from core.errors import CoreError

X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]])
Y = np.array([1, 0, 1])
W0, B0, LR = [0.1, -0.2], 0.05, 0.1
W1, B1 = [0.08217, -0.13797], 0.06759  # reference 7.3


@pytest.fixture(scope="module")
def owner() -> ts.Context:
    return ckks.create_context("ml-128")


@pytest.fixture(scope="module")
def rows_public(owner: ts.Context) -> bytes:
    """Public context with only the rotation keys PPLR needs for d=2 (≈ 63 MB instead of 415 MB)."""
    return ckks.public_context_bytes(owner, galois=True, rotation_steps=pplr.rotation_steps(2))


@pytest.fixture(scope="module")
def rows_worker(rows_public: bytes) -> ts.Context:
    return ckks.cached_public_context(rows_public)


def test_rows_reference_step(owner: ts.Context, rows_worker: ts.Context) -> None:
    xs, ys = do.encrypt_dataset(rows_worker, X), do.encrypt_labels(rows_worker, Y)
    w, b = do.encrypt_model(rows_worker, W0, B0)
    nw, nb = pplr.fit_step(xs, ys, w, b, LR)
    w1, b1 = do.decrypt_model(owner, nw, nb)
    np.testing.assert_allclose(w1, W1, atol=1e-5)
    assert b1 == pytest.approx(B1, abs=1e-5)
    pw, pb = gradient_step(X, Y, W0, B0, LR)
    np.testing.assert_allclose(w1, pw, atol=1e-5)
    assert b1 == pytest.approx(pb, abs=1e-5)


def test_rows_single_sample_sigmoid(owner: ts.Context, rows_worker: ts.Context) -> None:
    w, b = do.encrypt_model(rows_worker, W0, B0)
    (p,) = pplr.predict(do.encrypt_dataset(rows_worker, X[:1]), w, b)
    assert ckks.decrypt_vector(owner, p)[0] == pytest.approx(0.437825, abs=1e-4)


def test_rows_driver_two_epochs(owner: ts.Context) -> None:
    w, b, stats = do.run_pplr(X, Y, epochs=2, learning_rate=LR, layout="rows", ctx=owner)
    ref = LogisticRegression(epochs=2, learning_rate=LR).fit(X, Y)
    np.testing.assert_allclose(w, ref.weights_, atol=1e-4)
    assert b == pytest.approx(ref.bias_, abs=1e-4)
    assert stats.iterations == 2 and len(stats.rounds) == 2


def test_packed_reference_step_over_blocks(owner: ts.Context) -> None:
    cols = ckks.encrypt_columns(owner, X, slots=2)  # 2 blocks, the last padded: exercises the mask
    y_blocks = do.encrypt_labels_packed(owner, Y, slots=2)
    w, b = do.encrypt_model_packed(owner, W0, B0, 2)
    gw, gb = pplr.gradient_packed(cols, y_blocks, w, b, n=3)
    w1, b1 = pplr.apply_packed_gradients(owner, gw, gb, np.array(W0), B0, LR, 3)
    np.testing.assert_allclose(w1, W1, atol=1e-5)
    assert b1 == pytest.approx(B1, abs=1e-5)


def test_packed_driver_matches_plaintext(owner: ts.Context) -> None:
    rng = np.random.default_rng(2)
    Xs = np.concatenate([rng.normal(-0.5, 0.3, size=(20, 3)), rng.normal(0.5, 0.3, size=(20, 3))])
    ys = np.r_[np.zeros(20), np.ones(20)]
    w, b, stats = do.run_pplr(Xs, ys, epochs=3, learning_rate=0.1, layout="packed", ctx=owner)
    ref = LogisticRegression(epochs=3, learning_rate=0.1).fit(Xs, ys)
    np.testing.assert_allclose(w, ref.weights_, atol=1e-4)
    assert b == pytest.approx(ref.bias_, abs=1e-4)
    assert stats.bytes_to_worker < 60_000_000  # no Galois keys in the packed layout
    proba = do.run_pplr_predict(Xs, w, b, layout="packed", ctx=owner)
    np.testing.assert_allclose(proba, ref.predict_proba(Xs), atol=1e-4)


def test_rows_predict(owner: ts.Context, rows_public: bytes, rows_worker: ts.Context) -> None:
    w, b = do.encrypt_model(rows_worker, W1, B1)
    blobs = pplr.predict_bytes(rows_public, ckks.serialize(do.encrypt_dataset(rows_worker, X)), w.serialize(),
                               b.serialize())
    proba = do.decrypt_predictions(owner, ckks.deserialize(owner, blobs))
    ref = LogisticRegression.from_weights(W1, B1).predict_proba(X)
    np.testing.assert_allclose(proba, ref, atol=1e-4)


def test_rotation_steps() -> None:
    assert pplr.rotation_steps(1) == [1]
    assert pplr.rotation_steps(2) == [1, 2, -1]
    assert pplr.rotation_steps(5) == [1, 2, 4, -1, -2, -4]
    with pytest.raises(CoreError):
        pplr.rotation_steps(0)


def test_rows_needs_galois_keys(owner: ts.Context) -> None:
    worker = ckks.load_public_context(ckks.public_context_bytes(owner))
    w, b = do.encrypt_model(worker, W0, B0)
    with pytest.raises(ckks.MissingKeyMaterial, match="Galois"):
        pplr.fit_step(do.encrypt_dataset(worker, X), do.encrypt_labels(worker, Y), w, b, LR)


def test_shallow_profile_is_refused_early() -> None:
    ctx = ckks.create_context("default-128", galois=False)
    gw_ctx = ckks.load_public_context(ckks.public_context_bytes(ctx, galois=True, rotation_steps=[1, 2, -1]))
    w, b = do.encrypt_model(gw_ctx, W0, B0)
    with pytest.raises(CoreError, match="levels"):
        pplr.fit_step(do.encrypt_dataset(gw_ctx, X), do.encrypt_labels(gw_ctx, Y), w, b, LR)


def test_shape_errors(rows_worker: ts.Context) -> None:
    w, b = do.encrypt_model(rows_worker, W0, B0)
    with pytest.raises(CoreError):
        pplr.fit_step(do.encrypt_dataset(rows_worker, X), do.encrypt_labels(rows_worker, Y[:2]), w, b, LR)
    with pytest.raises(CoreError):
        xs3 = do.encrypt_dataset(rows_worker, np.zeros((3, 3)))
        pplr.fit_step(xs3, do.encrypt_labels(rows_worker, Y), w, b, LR)
    with pytest.raises(CoreError):
        do.run_pplr(X, Y, layout="diagonal")


# --------------------------------------------------------------------------------------------------
# packed layout with the pplr-128 profile (N=8192, 4 levels, no Galois keys) and the owner helpers


@pytest.fixture(scope="module")
def packed_owner() -> ts.Context:
    return ckks.create_context("pplr-128")


def test_pplr_profile_is_128_bit_and_deep_enough(packed_owner: ts.Context) -> None:
    p = ckks.get_profile("pplr")
    assert p.name == "pplr-128" and p.poly_modulus_degree == 8192 and p.depth == pplr.PACKED_DEPTH
    assert p.total_bits <= 218  # HE standard, N=8192, 128-bit security
    assert not packed_owner.has_galois_keys()


def test_packed_owner_helpers_match_plaintext_steps(packed_owner: ts.Context) -> None:
    rng = np.random.default_rng(3)
    Xs = rng.normal(size=(40, 4))
    ys = (Xs @ np.array([1.0, -1.0, 0.5, 0.0]) > 0).astype(float)
    pub = ckks.load_public_context(ckks.public_context_bytes(packed_owner))
    x_blobs, shape, y_blobs, size = pplr.encrypt_training_packed(pub, Xs, ys)
    assert shape == [1, 4] and len(x_blobs) == 4 and len(y_blobs) == 1 and size == 40
    w, b = np.zeros(4), 0.0
    ref = LogisticRegression(epochs=3, learning_rate=0.1).fit(Xs, ys)
    for _ in range(3):
        # fresh ciphertexts every epoch, as the worker reads them: TenSEAL mod-switches operands in place
        cols = [ckks.deserialize(pub, x_blobs)]
        wb, bb = pplr.packed_model_blobs(pub, w, b, size)
        gw, gb = pplr.gradient_packed(cols, ckks.deserialize(pub, y_blobs), ckks.deserialize(pub, wb),
                                      ckks.deserialize(pub, [bb])[0], 40)
        w, b = pplr.update_from_packed(packed_owner, [*gw, gb], w, b, 0.1, 40, threshold=0.0)
    np.testing.assert_allclose(w, ref.weights_, atol=1e-4)
    assert b == pytest.approx(ref.bias_, abs=1e-4)
    wb, bb = pplr.packed_model_blobs(pub, w, b, size)
    cols = [ckks.deserialize(pub, x_blobs)]
    (p,) = pplr.predict_packed(cols, ckks.deserialize(pub, wb), ckks.deserialize(pub, [bb])[0])
    np.testing.assert_allclose(ckks.decrypt_vector(packed_owner, p), ref.predict_proba(Xs), atol=1e-4)


def test_update_from_packed_sums_parts_and_checks_counts(packed_owner: ts.Context) -> None:
    part = [ts.ckks_vector(packed_owner, [1.0, 2.0]), ts.ckks_vector(packed_owner, [0.5, 0.5])]  # d=1
    w, b = pplr.update_from_packed(packed_owner, part + part, np.array([1.0]), 1.0, 0.5, 2, threshold=0.0)
    assert w[0] == pytest.approx(1.0 - 0.25 * 6, abs=1e-4) and b == pytest.approx(1.0 - 0.25 * 2, abs=1e-4)
    with pytest.raises(CoreError, match="multiple"):
        pplr.update_from_packed(packed_owner, part[:1], np.array([1.0]), 0.0, 0.1, 2)
    with pytest.raises(CoreError, match="labels"):
        pplr.encrypt_training_packed(packed_owner, X, Y[:2])


def test_packed_refuses_model_of_another_block_size(packed_owner: ts.Context) -> None:
    x_blobs, _, y_blobs, size = pplr.encrypt_training_packed(packed_owner, X, Y)
    wb, bb = pplr.packed_model_blobs(packed_owner, W0, B0, size + 1)
    cols = [ckks.deserialize(packed_owner, x_blobs)]
    ys, ws, (bs,) = (ckks.deserialize(packed_owner, v) for v in (y_blobs, wb, [bb]))
    with pytest.raises(CoreError, match="slots"):
        pplr.gradient_packed(cols, ys, ws, bs, 3)
