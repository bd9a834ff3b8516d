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
