"""SKNN-PQC: secure 1-NN over CKKS (squared Euclidean), step 1 encrypted distances, step 2 labels.

Why two steps: the worker holds no secret key, so the data owner decrypts the distances and sends back
the index of each record's nearest model row; step 2 (no key material) maps indices to model labels.
Both ciphertext layouts are served (``PqcSknnParams`` in ``schemas/classification.py``): ``rows`` (the
original's, one ciphertext per pair) and ``packed`` (column-packed model, one ciphertext per record
and block).
"""

from __future__ import annotations

import math
import time

from schemas import keys
from schemas.operations import (
    DistanceName,
    LabelsResult,
    Op,
    PqcDistancesResult,
    PqcSknnParams,
)
from worker.errors import UnsupportedOperation, ValidationFailed
from worker.handlers import pqc_jobs
from worker.handlers.common import (
    check_allocation,
    check_integral,
    check_numeric,
    labels_payload,
    put_all,
    result_chunks,
)
from worker.handlers.pqc_common import (
    CIPHERTEXT_DTYPE,
    check_declared_rows,
    check_grid,
    check_rows,
    ciphertext_info,
    ciphertext_write,
    elapsed,
    fan_out,
    infos,
    lists,
    public_material,
    spans,
    stored_shape,
    together,
)
from worker.runtime.context import JobContext

__all__ = [
    "pqc_sknn",
]


def _check_metric(p: PqcSknnParams) -> None:
    if p.distance is not None and p.distance is not DistanceName.EUCLIDEAN:
        raise UnsupportedOperation(
            "classification.pqc.sknn.predict supports only (squared) EUCLIDEAN distance: MANHATHAN needs "
            "|x - y|, which CKKS cannot evaluate (it only adds and multiplies; the original silently "
            "computed a signed, cancelling sum). Send distance=EUCLIDEAN or use classification.sknn.predict."
        )


async def _sknn_distances(ctx: JobContext, p: PqcSknnParams) -> PqcDistancesResult:
    started = time.perf_counter()
    _check_metric(p)
    material = await public_material(ctx, Op.PQC_SKNN_PREDICT.value, relin=True)
    model_key = p.encrypted_model_id or keys.encrypted(p.model_id)
    records_key = p.encrypted_records_id or keys.encrypted(p.records_test_id)
    model_info, records_info = await infos(ctx, model_key, records_key)
    packed = p.layout == "packed"
    what = " (layout packed)" if packed else ""
    model_shape = ciphertext_info(model_info, ndim=2 if packed else None, what=what)
    records_shape = ciphertext_info(records_info, ndim=2 if packed else None, what=what)
    if packed:
        assert model_shape is not None and records_shape is not None
        if model_shape[1] != records_shape[1]:
            raise ValidationFailed(
                f"{model_key} holds {model_shape[1]} attributes per block, {records_key} {records_shape[1]}"
            )
        check_declared_rows(records_key, p.encrypted_records_shape, records_shape[0])
    else:
        check_declared_rows(model_key, p.encrypted_model_shape, (model_shape or (None,))[0])
        check_declared_rows(records_key, p.encrypted_records_shape, (records_shape or (None,))[0])

    model, records = await lists(ctx, model_key, records_key)
    if packed:
        assert model_shape is not None and records_shape is not None
        check_grid(model_key, model, model_shape)
        check_grid(records_key, records, records_shape)
        blocks, a = model_shape
        n_rec = records_shape[0]
        # one output ciphertext per record and block, each about the size of an input ciphertext
        check_allocation(ctx, (n_rec, blocks), max(map(len, model[:1]), default=0), "SKNN-PQC distances")
        ranges = spans(n_rec, blocks * a, ctx.settings.worker_capacity)
        parts = await fan_out(ctx, material, pqc_jobs.sknn_packed, ranges,
                               lambda lo, hi: (model, blocks, records[lo * a : hi * a], a))
        values, block_size = [v for part, _ in parts for v in part], parts[0][1]
        out_shape = [n_rec, blocks]
    else:
        n_model = check_rows(model_key, model, model_shape)
        n_rec = check_rows(records_key, records, records_shape)
        check_declared_rows(model_key, p.encrypted_model_shape, n_model)
        check_declared_rows(records_key, p.encrypted_records_shape, n_rec)
        check_allocation(ctx, (n_rec, n_model), max(map(len, model[:1]), default=0), "SKNN-PQC distances")
        ranges = spans(n_rec, n_model, ctx.settings.worker_capacity)
        parts = await fan_out(
            ctx, material, pqc_jobs.sknn_pairs, ranges, lambda lo, hi: (records[lo:hi], model)
        )
        values = [v for part in parts for v in part]
        out_shape, block_size = [n_rec, n_model], None
    if len(values) != math.prod(out_shape):
        raise ValidationFailed(f"computed {len(values)} distance ciphertexts, expected {out_shape}")

    distances_key = keys.distances(p.records_test_id, p.namespace)
    await put_all(ctx, [ciphertext_write(distances_key, values, result_chunks(ctx, p), out_shape)])
    return PqcDistancesResult(
        distances_id=distances_key,
        distances_shape=out_shape,
        distances_dtype=CIPHERTEXT_DTYPE,
        exact=False,
        layout=p.layout,
        n_model=0 if packed else out_shape[1],
        block_size=block_size,
        distance=DistanceName.EUCLIDEAN.value,
        service_time=elapsed(started),
    )


async def _sknn_labels(ctx: JobContext, p: PqcSknnParams) -> LabelsResult:
    """Step 2 (no key material): the data owner's nearest-row indices → model labels."""
    started = time.perf_counter()
    labels_key = keys.labels(p.model_id)
    index_key = keys.distances_index(p.records_test_id, p.namespace)
    labels_info, index_info = await together(ctx.store.info(labels_key), ctx.store.info(index_key))
    check_numeric(labels_info, labels_key)
    check_numeric(index_info, index_key)
    stored = list(stored_shape(labels_info) or ())
    declared = p.model_labels_shape
    if declared is not None and math.prod(declared) != math.prod(stored):
        raise ValidationFailed(f"{labels_key}: declared shape {list(declared)} but storage holds {stored}")
    model_labels, index = await together(
        ctx.store.get_ndarray(labels_key), ctx.store.get_ndarray(index_key)
    )
    flat_labels = model_labels.reshape(-1)
    idx = check_integral(index, index_key).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= flat_labels.size):
        raise ValidationFailed(f"{index_key}: indices must lie in 0..{flat_labels.size - 1}")
    payload = await labels_payload(ctx, flat_labels[idx], keys.label_vector(p.records_test_id, p.namespace))
    return LabelsResult(**payload, service_time=elapsed(started))


async def pqc_sknn(ctx: JobContext, p: PqcSknnParams) -> PqcDistancesResult | LabelsResult:
    """SKNN-PQC step 1 (encrypted squared distances) or step 2 (indices → labels)."""
    if p.step_index == 1:
        return await _sknn_distances(ctx, p)
    return await _sknn_labels(ctx, p)
