"""End-to-end plaintext logistic regression over a real nats-server."""

from __future__ import annotations

import numpy as np

from schemas import keys
from schemas.operations import Op


def _reference_train(x: np.ndarray, y: np.ndarray, epochs: int, lr: float) -> tuple[np.ndarray, float]:
    """Rory's LogisticRegression baseline written out: its Taylor sigmoid (-0.02083 z^3), zero init."""
    w, b = np.zeros(x.shape[1]), 0.0
    for _ in range(epochs):
        z = x @ w + b
        e = 0.5 + 0.25 * z - 0.02083 * z**3 - y
        w = w - lr / len(y) * (x.T @ e)
        b = b - lr / len(y) * e.sum()
    return w, b


async def test_lr_train_then_predict(rig):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 3))
    y = (x @ np.array([1.0, -2.0, 0.5]) + 0.3 > 0).astype(np.float64)
    x_test = rng.normal(size=(20, 3))
    await rig.store.put_ndarray("trx", x, num_chunks=2)
    await rig.store.put_ndarray("try", y.reshape(-1, 1))
    await rig.store.put_ndarray("tex", x_test, num_chunks=2)

    train = await rig.ok(
        Op.LR_TRAIN,
        {
            "plaintext_matrix_train_id": "trx",
            "plaintext_label_vector_train_id": "try",
            "weights_id": "trxweights",
            "bias_id": "trxbias",
            "epochs": 30,
            "learning_rate": 0.2,
        },
    )
    assert train["algorithm"] == "LOGISTIC_REGRESSION_TRAIN"
    weights = await rig.store.get_ndarray("trxweights")
    bias_info = await rig.store.info("trxbias")
    assert (
        bias_info.kind == "blob" and bias_info.full_dtype == "float64" and tuple(bias_info.full_shape) == (1,)
    )
    bias = await rig.store.get_ndarray("trxbias")
    ref_w, ref_b = _reference_train(x, y, 30, 0.2)
    np.testing.assert_allclose(weights, ref_w, rtol=1e-9)
    np.testing.assert_allclose(bias[0], ref_b, rtol=1e-9)

    pred = await rig.ok(
        Op.LR_PREDICT,
        {
            "plaintext_matrix_test_id": "tex",
            "plaintext_matrix_train_id": "trx",
            "weights_id": "trxweights",
            "bias_id": "trxbias",
        },
    )
    assert pred["predictions_id"] == keys.predictions("tex")
    predictions = await rig.store.get_ndarray(pred["predictions_id"])
    np.testing.assert_array_equal(predictions, (x_test @ ref_w + ref_b >= 0).astype(np.int64))
    truth = (x_test @ np.array([1.0, -2.0, 0.5]) + 0.3 > 0).astype(np.int64)
    assert (predictions == truth).mean() >= 0.8


async def test_lr_train_refuses_model_ids_that_overwrite_its_inputs(rig):
    rng = np.random.default_rng(1)
    x = rng.normal(size=(10, 2))
    y = (x[:, 0] > 0).astype(np.float64)
    await rig.store.put_ndarray("ovx", x)
    await rig.store.put_ndarray("ovy", y)
    base = {"plaintext_matrix_train_id": "ovx", "plaintext_label_vector_train_id": "ovy"}
    for weights_id, bias_id in (("ovx", "ovb"), ("ovw", "ovy"), ("ovw", "ovw")):
        err = await rig.error(Op.LR_TRAIN, {**base, "weights_id": weights_id, "bias_id": bias_id})
        assert err["code"] == 400 and "four different objects" in err["message"]
    # The training data is intact (before the fix, weights_id="ovx" replaced X with the weights).
    np.testing.assert_array_equal(await rig.store.get_ndarray("ovx"), x)
    np.testing.assert_array_equal(await rig.store.get_ndarray("ovy"), y)
    assert not await rig.store.exists("ovw") and not await rig.store.exists("ovb")
