"""Classification handlers: KNN (plaintext 1-NN) and SKNN over Liu ciphertexts (two steps).

SKNN round, as the data owner drives it:

* step 1 reads ``encrypted<M>`` and ``encrypted<R>`` and stores, under ``distances<R>``, one encrypted
  distance per (record, model row). EUCLIDEAN is computed homomorphically (Liu ciphertext product,
  n_rec x n_model x m^2) and decrypts to the true squared distance; MANHATHAN is the original's
  component-wise |.| (n_rec x n_model x m), an approximation flagged ``exact: false``. The reply names
  the real dtype of what was stored (the original always said float32: docs/original-rory.md);
* the owner decrypts, takes the argmin per record and stores ``distancesindex<R>``;
* step 2 maps those indices to the model labels ``<M>labels``.

Metric: the command's ``distance`` or the DISTANCE setting (default MANHATHAN, as the original).
"""

from __future__ import annotations

import asyncio
import math

from schemas import keys
from schemas.operations import DistancesResult, KnnParams, LabelsResult, Op, SknnParams
from worker.errors import ValidationFailed
from worker.handlers import jobs
from worker.handlers.common import (
    Write,
    check_allocation,
    check_integral,
    check_numeric,
    check_shape,
    fetch_arrays,
    labels_payload,
    put_all,
    result_chunks,
    shape_of,
    with_claims_checked,
)
from worker.handlers.contract import serve
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation
from worker.storage.base import BallInfo

__all__ = ["OPERATIONS", "knn", "sknn"]


def _metric(ctx: JobContext, p: KnnParams | SknnParams) -> str:
    return str((p.distance or ctx.settings.distance).value)


def _check_labels_info(info: BallInfo, n_model: int, declared: list[int] | None) -> None:
    """Model labels: n numbers stored as 1 x n (Rory) or n; a declared shape must match modulo 1s."""
    check_numeric(info, info.ball_id, ndim=(1, 2))
    stored = shape_of(info)
    if math.prod(stored) != n_model:
        raise ValidationFailed(f"{info.ball_id}: {math.prod(stored)} labels for {n_model} model rows")
    if declared is not None and [d for d in declared if d != 1] != [d for d in stored if d != 1]:
        raise ValidationFailed(
            f"{info.ball_id}: declared shape {list(declared)} but storage holds {list(stored)}"
        )


# ------------------------------------------------------------------ KNN
async def knn(ctx: JobContext, p: KnnParams) -> LabelsResult:
    """Plaintext 1-NN: each record of ``R`` takes the label of its nearest row of the model ``M``."""
    labels_key = keys.labels(p.model_id)
    model_info, labels_info, records_info = await asyncio.gather(
        ctx.store.info(p.model_id), ctx.store.info(labels_key), ctx.store.info(p.records_test_id)
    )
    check_numeric(model_info, p.model_id, ndim=2)
    check_numeric(records_info, p.records_test_id, ndim=2)
    if shape_of(model_info)[1] != shape_of(records_info)[1]:
        raise ValidationFailed(
            f"records have {shape_of(records_info)[1]} attributes, the model {shape_of(model_info)[1]}"
        )
    _check_labels_info(labels_info, shape_of(model_info)[0], p.model_labels_shape)
    model, labels, records = await fetch_arrays(ctx, p.model_id, labels_key, p.records_test_id)
    labels = check_integral(labels.reshape(-1), labels_key)
    predicted = await ctx.compute(jobs.knn_predict, model, labels, records, _metric(ctx, p))
    payload = await labels_payload(ctx, predicted, keys.label_vector(p.records_test_id, p.namespace))
    return LabelsResult(**payload)


# ------------------------------------------------------------------ SKNN
def _check_ciphertexts(info: BallInfo, p: SknnParams) -> tuple[int, int, int]:
    check_numeric(info, info.ball_id, ndim=3)
    n, a, m = shape_of(info)
    if "m" in p.model_fields_set and m != p.m:
        raise ValidationFailed(f"{info.ball_id}: m={p.m} but the stored ciphertexts have {m} components")
    return n, a, m


async def _sknn_distances(ctx: JobContext, p: SknnParams) -> DistancesResult:
    model_key = p.encrypted_model_id or keys.encrypted(p.model_id)
    records_key = p.encrypted_records_id or keys.encrypted(p.records_test_id)
    model_info, records_info = await asyncio.gather(
        check_shape(ctx, model_key, p.encrypted_model_shape, allow_prefix=True),
        check_shape(ctx, records_key, p.encrypted_records_shape, allow_prefix=True),
    )
    _, model_a, model_m = _check_ciphertexts(model_info, p)
    n_records, records_a, records_m = _check_ciphertexts(records_info, p)
    if (model_a, model_m) != (records_a, records_m):
        raise ValidationFailed(
            f"records {list(shape_of(records_info))} and model {list(shape_of(model_info))} "
            "must agree on attributes and ciphertext size"
        )
    metric = _metric(ctx, p)
    n_model = int(shape_of(model_info)[0])
    width = model_m * model_m if metric == "EUCLIDEAN" else model_m  # Liu products have m^2 components
    check_allocation(ctx, (n_records, n_model, width), 8, "SKNN distances")
    model, records = await fetch_arrays(ctx, model_key, records_key)
    values, exact = await ctx.compute(jobs.sknn_distances, records, model, metric)
    distances_key = keys.distances(p.records_test_id, p.namespace)
    chunks = min(result_chunks(ctx, p), max(1, n_records))
    await put_all(ctx, [Write(distances_key, values, num_chunks=chunks)])
    return DistancesResult(
        distances_id=distances_key,
        distances_shape=[int(d) for d in values.shape],
        distances_dtype=str(values.dtype),
        exact=exact,
        distance=metric,
    )


async def _sknn_labels(ctx: JobContext, p: SknnParams) -> LabelsResult:
    labels_key = keys.labels(p.model_id)
    index_key = keys.distances_index(p.records_test_id, p.namespace)
    labels_info, index_info = await asyncio.gather(ctx.store.info(labels_key), ctx.store.info(index_key))
    n_model = math.prod(shape_of(labels_info))
    _check_labels_info(labels_info, n_model, p.model_labels_shape)
    check_numeric(index_info, index_key, ndim=(1, 2))
    labels, index = await fetch_arrays(ctx, labels_key, index_key)
    labels = check_integral(labels.reshape(-1), labels_key)
    index = check_integral(index.reshape(-1), index_key)
    if index.size and (index.min() < 0 or index.max() >= n_model):
        raise ValidationFailed(f"{index_key}: indices must lie in [0, {n_model}) (the model rows)")
    # A gather of n ints: cheaper than a trip to the compute pool.
    payload = await labels_payload(ctx, labels[index], keys.label_vector(p.records_test_id, p.namespace))
    return LabelsResult(**payload)


async def sknn(ctx: JobContext, p: SknnParams) -> DistancesResult | LabelsResult:
    """SKNN step 1 (encrypted distances) or step 2 (nearest indices -> labels)."""
    if p.step_index == 1:
        return await _sknn_distances(ctx, p)
    return await _sknn_labels(ctx, p)


# Names, params models and descriptions come from the contract's specs (worker/handlers/contract.py).
OPERATIONS: list[Operation] = with_claims_checked([
    serve(Op.KNN_PREDICT, knn),
    serve(Op.SKNN_PREDICT, sknn, steps="2", scheme="liu"),
])
