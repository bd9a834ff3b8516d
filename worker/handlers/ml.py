"""Plaintext logistic regression: train (writes weights and bias) and predict (writes predictions).

Storage, as Rory's client expects it: X and y are ndarrays (chunked or single blob); the weights are a
chunked ndarray of shape (a,) under ``weights_id``; the bias is a single blob holding one float64
under ``bias_id``; predictions (int64 classes 0/1) go to ``<test_id>predictions`` (namespaced when the
command carries a namespace). ``weights_id`` and ``bias_id`` are the client's own names and are used
as given, but may only name objects this operation wrote (409 CONFLICT otherwise). The model is
Rory's: Taylor sigmoid, zero initialisation, full-batch gradient descent.
"""

from __future__ import annotations

import asyncio
import math
import time

import numpy as np

from schemas import keys
from schemas.operations import LrPredictParams, LrPredictResult, LrTrainParams, Op, TrainResult
from worker.errors import BadRequest, ValidationFailed
from worker.handlers import jobs
from worker.handlers.common import (
    Write,
    check_numeric,
    check_owned_outputs,
    fetch_arrays,
    put_all,
    result_chunks,
    shape_of,
    with_claims_checked,
)
from worker.handlers.contract import serve
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation

__all__ = ["OPERATIONS", "lr_predict", "lr_train"]


async def lr_train(ctx: JobContext, p: LrTrainParams) -> TrainResult:
    """Train on X (n x a) and y (n labels in {0, 1}); store weights and bias."""
    x_key, y_key = p.plaintext_matrix_train_id, p.plaintext_label_vector_train_id
    if len({x_key, y_key, p.weights_id, p.bias_id}) != 4:
        # The model is written over weights_id and bias_id: naming an input there destroys it.
        raise BadRequest(
            "weights_id, bias_id, plaintext_matrix_train_id and plaintext_label_vector_train_id "
            "must name four different objects"
        )
    x_info, y_info = await asyncio.gather(ctx.store.info(x_key), ctx.store.info(y_key))
    # The model ids are the caller's free choice: they may only name this operation's own earlier
    # outputs (a retry, further training), never a dataset or another operation's result (409).
    await check_owned_outputs(ctx, p.weights_id, p.bias_id)
    check_numeric(x_info, x_key, ndim=2)
    check_numeric(y_info, y_key, ndim=(1, 2))
    n, a = shape_of(x_info)
    if math.prod(shape_of(y_info)) != n or n == 0:
        raise ValidationFailed(f"{y_key}: {math.prod(shape_of(y_info))} labels for {n} samples")
    x, y = await fetch_arrays(ctx, x_key, y_key)
    y = y.reshape(-1)
    if not np.all(np.isin(y, (0, 1))):
        raise ValidationFailed(f"{y_key}: logistic regression needs labels in {{0, 1}}")
    compute_started = time.perf_counter()
    weights, bias = await ctx.compute(jobs.lr_train, x, y, p.epochs, p.learning_rate)
    train_time = time.perf_counter() - compute_started
    chunks = min(result_chunks(ctx, p), max(1, a))
    await put_all(
        ctx,
        [
            Write(p.weights_id, weights, num_chunks=chunks),
            Write(p.bias_id, np.asarray(bias, dtype=np.float64).reshape(1), kind="blob"),
        ],
    )
    return TrainResult(
        train_time=train_time,
        algorithm="LOGISTIC_REGRESSION_TRAIN",
    )


async def lr_predict(ctx: JobContext, p: LrPredictParams) -> LrPredictResult:
    """Predict classes for X_test with stored weights and bias; store them under ``<test>predictions``."""
    x_key = p.plaintext_matrix_test_id
    x_info, w_info, b_info = await asyncio.gather(
        ctx.store.info(x_key), ctx.store.info(p.weights_id), ctx.store.info(p.bias_id)
    )
    check_numeric(x_info, x_key, ndim=2)
    check_numeric(w_info, p.weights_id, ndim=(1, 2))
    check_numeric(b_info, p.bias_id)
    n, a = shape_of(x_info)
    if math.prod(shape_of(w_info)) != a:
        raise ValidationFailed(f"{p.weights_id}: {math.prod(shape_of(w_info))} weights for {a} attributes")
    if math.prod(shape_of(b_info)) != 1:
        raise ValidationFailed(
            f"{p.bias_id}: the bias must hold one value, storage holds {list(shape_of(b_info))}"
        )
    x, weights, bias = await fetch_arrays(ctx, x_key, p.weights_id, p.bias_id)
    compute_started = time.perf_counter()
    predictions = await ctx.compute(jobs.lr_predict, x, weights, float(bias.reshape(-1)[0]))
    predict_time = time.perf_counter() - compute_started
    predictions_key = keys.predictions(x_key, p.namespace)
    chunks = min(result_chunks(ctx, p), max(1, n))
    await put_all(ctx, [Write(predictions_key, predictions, num_chunks=chunks)])
    return LrPredictResult(
        predictions_id=predictions_key,
        predict_time=predict_time,
    )


# Names, params models and descriptions come from the contract's specs (worker/handlers/contract.py).
OPERATIONS: list[Operation] = with_claims_checked([
    serve(Op.LR_TRAIN, lr_train),
    serve(Op.LR_PREDICT, lr_predict),
])
