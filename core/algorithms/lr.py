"""Plaintext logistic regression: the worker's LR operation and the reference for PPLR (reference 7.1, 8).

Full-batch gradient descent from zero weights and zero bias, binary labels {0, 1}. The sigmoid is, by
default, the degree-3 Taylor polynomial σ̃(z) = 0.5 + 0.25 z − 0.02083 z³ that PPLR evaluates under
CKKS (so the two agree step for step); ``sigmoid="exact"`` uses 1/(1+e^−z). One step:

    z = X w + b,  e = σ(z) − y,  w ← w − (lr/n)·Xᵀe,  b ← b − (lr/n)·Σe

Defaults: 10 epochs, learning rate 0.1, threshold 0.5 (the library's); the worker's request defaults
(1 epoch, 0.01) are passed explicitly by its handler. σ̃ is only a good approximation for |z| ≲ 2.5:
scale the features accordingly (the polynomial turns back above |z| ≈ 2).

No leakage concerns: plaintext data (the worker's LR operation receives plaintext).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
from numpy.typing import ArrayLike

from core.errors import CoreError

__all__ = ["SIGMOID_COEFFICIENTS", "LogisticRegression", "gradient_step", "sigmoid"]

#: σ̃(z) = c0 + c1 z + c2 z² + c3 z³ (TenSEAL ``polyval`` order).
SIGMOID_COEFFICIENTS: tuple[float, float, float, float] = (0.5, 0.25, 0.0, -0.02083)

SigmoidKind = Literal["poly3", "exact"]


def sigmoid(z: ArrayLike, kind: SigmoidKind = "poly3") -> np.ndarray:
    x = np.asarray(z, dtype=np.float64)
    if kind == "poly3":
        c0, c1, _, c3 = SIGMOID_COEFFICIENTS
        return c0 + c1 * x + c3 * x**3
    if kind == "exact":
        return 0.5 * (1.0 + np.tanh(0.5 * x))  # overflow-free logistic
    raise CoreError(f"unknown sigmoid {kind!r}; use 'poly3' or 'exact'")


def _check_xy(X: ArrayLike, y: ArrayLike | None) -> tuple[np.ndarray, np.ndarray | None]:
    x = np.asarray(X, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] == 0 or x.shape[1] == 0:
        raise CoreError(f"X must be a non-empty 2-D array, got shape {x.shape}")
    if not np.all(np.isfinite(x)):
        raise CoreError("X contains NaN or infinity")
    if y is None:
        return x, None
    t = np.asarray(y, dtype=np.float64).reshape(-1)
    if t.shape[0] != x.shape[0]:
        raise CoreError(f"{t.shape[0]} labels for {x.shape[0]} samples")
    if not np.all((t == 0) | (t == 1)):
        raise CoreError("labels must be 0 or 1")
    return x, t


def gradient_step(X: ArrayLike, y: ArrayLike, weights: ArrayLike, bias: float, learning_rate: float,
                  kind: SigmoidKind = "poly3") -> tuple[np.ndarray, float]:
    """One full-batch step → (new weights, new bias); the plaintext twin of ``pplr.fit_step``."""
    x, t = _check_xy(X, y)
    assert t is not None
    w = np.asarray(weights, dtype=np.float64).reshape(-1)
    if w.shape[0] != x.shape[1]:
        raise CoreError(f"{w.shape[0]} weights for {x.shape[1]} features")
    e = sigmoid(x @ w + bias, kind) - t
    scale = learning_rate / x.shape[0]
    return w - scale * (x.T @ e), float(bias - scale * e.sum())


class LogisticRegression:
    """Estimator: ``fit(X, y)``, ``predict_proba(X)``, ``predict(X)``; ``weights_`` (d,), ``bias_`` float."""

    def __init__(self, epochs: int = 10, learning_rate: float = 0.1, threshold: float = 0.5,
                 sigmoid: SigmoidKind = "poly3") -> None:
        if epochs < 1:
            raise CoreError(f"epochs must be >= 1, got {epochs}")
        if not learning_rate > 0:
            raise CoreError(f"learning rate must be > 0, got {learning_rate}")
        self.epochs = epochs
        self.learning_rate = learning_rate
        self.threshold = threshold
        self.sigmoid = sigmoid

    def fit(self, X: ArrayLike, y: ArrayLike, weights: ArrayLike | None = None, bias: float = 0.0
            ) -> LogisticRegression:
        """Train from zero weights/bias (or the given ones, to continue training)."""
        x, t = _check_xy(X, y)
        w = np.zeros(x.shape[1]) if weights is None else np.asarray(weights, dtype=np.float64).copy()
        b = float(bias)
        with np.errstate(over="ignore", invalid="ignore"):
            for _ in range(self.epochs):
                w, b = gradient_step(x, t, w, b, self.learning_rate, self.sigmoid)  # type: ignore[arg-type]
        if not (np.all(np.isfinite(w)) and np.isfinite(b)):
            # The cubic sigmoid only approximates the logistic for small |z|: large steps blow up.
            raise CoreError("logistic regression diverged: lower learning_rate or scale X")
        self.weights_, self.bias_ = w, b
        return self

    def _fitted(self) -> tuple[np.ndarray, float]:
        if not hasattr(self, "weights_"):
            raise CoreError("the model is not trained (call fit first)")
        return self.weights_, self.bias_

    def predict_proba(self, X: ArrayLike) -> np.ndarray:
        w, b = self._fitted()
        x, _ = _check_xy(X, None)
        if x.shape[1] != w.shape[0]:
            raise CoreError(f"X has {x.shape[1]} features, the model {w.shape[0]}")
        return sigmoid(x @ w + b, self.sigmoid)

    def decision_function(self, X: ArrayLike) -> np.ndarray:
        """The margin x.w + b."""
        w, b = self._fitted()
        x, _ = _check_xy(X, None)
        if x.shape[1] != w.shape[0]:
            raise CoreError(f"X has {x.shape[1]} features, the model {w.shape[0]}")
        return x @ w + b

    def predict(self, X: ArrayLike) -> np.ndarray:
        """Classes decided on the margin, logit(threshold), as the true sigmoid would decide.

        The cubic polynomial turns back below 0.5 for z > sqrt(12), which would flip confident
        predictions if the decision were taken on its value.
        """
        cut = float(np.log(self.threshold / (1.0 - self.threshold)))
        return (self.decision_function(X) >= cut).astype(np.int64)

    @classmethod
    def from_weights(cls, weights: ArrayLike, bias: float, **kwargs: object) -> LogisticRegression:
        """Rebuild a trained model (the worker stores weights and bias separately)."""
        model = cls(**kwargs)  # type: ignore[arg-type]
        model.weights_ = np.asarray(weights, dtype=np.float64).reshape(-1)
        model.bias_ = float(bias)
        return model
