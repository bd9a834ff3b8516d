"""Three labelled Gaussian blobs, the small dataset the data-owner tests run every algorithm on.

One generator for tests/dataowner/test_client_e2e.py and tests/dataowner/test_drivers.py; each keeps
its own spread, noise and rounding (their expected results were chosen with them), so what differs is
an argument and what is the same is written once.
"""

from __future__ import annotations

import numpy as np


def labelled_blobs(
    seed: int, n_per: int, a: int = 3, *, spread: float, sigma: float, decimals: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """``n_per`` records around each of three centres ``spread`` apart (noise ``sigma``), shuffled,
    with their blob labels; ``decimals`` rounds the records (None: full precision)."""
    rng = np.random.default_rng(seed)
    centres = np.array([[0.0] * a, [spread] * a, [-spread, spread, 0.0][:a] + [0.0] * max(0, a - 3)])
    x = np.concatenate([rng.normal(c, sigma, size=(n_per, a)) for c in centres])
    y = np.repeat(np.arange(3), n_per)
    order = rng.permutation(x.shape[0])
    x = x[order]
    return (x if decimals is None else np.round(x, decimals)), y[order]
