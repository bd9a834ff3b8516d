"""Plaintext logistic regression with the polynomial sigmoid (reference 7.1, 8)."""

from __future__ import annotations

import numpy as np
import pytest

from core.algorithms.lr import LogisticRegression, gradient_step, sigmoid
from core.errors import CoreError

X = np.array([[1.0, 2.0], [0.5, -1.0], [-1.5, 0.3]])
Y = np.array([1, 0, 1])


def test_polynomial_sigmoid_values() -> None:
    assert sigmoid(-0.25) == pytest.approx(0.437825, abs=1e-6)
    assert sigmoid(0.0) == 0.5
    assert sigmoid(0.0, "exact") == 0.5
    assert sigmoid(2.0, "exact") == pytest.approx(1 / (1 + np.exp(-2.0)))
    with pytest.raises(CoreError):
        sigmoid(0.0, "tanh")  # type: ignore[arg-type]


def test_reference_step() -> None:
    w, b = gradient_step(X, Y, [0.1, -0.2], 0.05, 0.1)
    np.testing.assert_allclose(w, [0.08217, -0.13797], atol=5e-6)
    assert b == pytest.approx(0.06759, abs=5e-6)


def test_fit_from_zeros_equals_manual_loop() -> None:
    model = LogisticRegression(epochs=5, learning_rate=0.1).fit(X, Y)
    w, b = np.zeros(2), 0.0
    for _ in range(5):
        z = X @ w + b
        e = 0.5 + 0.25 * z - 0.02083 * z**3 - Y
        w, b = w - 0.1 / 3 * (X.T @ e), b - 0.1 / 3 * e.sum()
    np.testing.assert_allclose(model.weights_, w)
    assert model.bias_ == pytest.approx(b)


def test_learns_separable_data() -> None:
    rng = np.random.default_rng(0)
    Xs = np.concatenate([rng.normal(-1, 0.3, size=(50, 2)), rng.normal(1, 0.3, size=(50, 2))])
    ys = np.r_[np.zeros(50), np.ones(50)]
    model = LogisticRegression(epochs=20, learning_rate=0.1).fit(Xs, ys)  # keep |z| small for σ̃
    assert (model.predict(Xs) == ys).mean() >= 0.97
    proba = model.predict_proba(Xs)
    assert proba.shape == (100,)
    exact = LogisticRegression(epochs=50, learning_rate=0.5, sigmoid="exact").fit(Xs, ys)
    assert (exact.predict(Xs) == ys).mean() >= 0.97


def test_continue_training_and_from_weights() -> None:
    a = LogisticRegression(epochs=2, learning_rate=0.1).fit(X, Y)
    b = LogisticRegression(epochs=1, learning_rate=0.1).fit(X, Y)
    b = LogisticRegression(epochs=1, learning_rate=0.1).fit(X, Y, weights=b.weights_, bias=b.bias_)
    np.testing.assert_allclose(a.weights_, b.weights_)
    restored = LogisticRegression.from_weights(a.weights_, a.bias_)
    np.testing.assert_array_equal(restored.predict(X), a.predict(X))


def test_errors() -> None:
    with pytest.raises(CoreError):
        LogisticRegression(epochs=0)
    with pytest.raises(CoreError):
        LogisticRegression(learning_rate=0)
    with pytest.raises(CoreError, match="0 or 1"):
        LogisticRegression().fit(X, [0, 2, 1])
    with pytest.raises(CoreError):
        LogisticRegression().fit(X, [0, 1])
    with pytest.raises(CoreError, match="not trained"):
        LogisticRegression().predict(X)
    with pytest.raises(CoreError):
        LogisticRegression().fit(X, Y).predict(np.zeros((2, 3)))
