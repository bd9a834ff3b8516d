"""PPLR: privacy-preserving logistic regression over CKKS, training and prediction.

Why the staging in the rows layout: training overwrites the weights and the bias under the same ids,
two objects that must change together; a retry must neither train twice nor leave a mixed pair
(:func:`pplr_train`). The packed layout writes only fresh keys (the data owner applies each step), so
a retry simply recomputes. What the worker learns is documented in ``docs/privacy.md``.
"""

from __future__ import annotations

import logging
import math
import time

from schemas import keys
from schemas.operations import (
    Op,
    PplrPredictParams,
    PplrPredictResult,
    PplrTrainParams,
    PplrTrainResult,
)
from worker.errors import BadRequest, CorruptObject, ValidationFailed
from worker.handlers import pqc_jobs
from worker.handlers.common import (
    put_all,
    result_chunks,
)
from worker.handlers.pqc_common import (
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
    together,
)
from worker.keys import compute_with_keys
from worker.runtime.context import JobContext

__all__ = [
    "COMMAND_TAG",
    "pplr_predict",
    "pplr_train",
]

log = logging.getLogger(__name__)

#: Tag on objects a PPLR train call wrote, naming the command (makes a retry of it idempotent).
COMMAND_TAG = "rory_command"


async def _single_ciphertexts(ctx: JobContext, *names: str) -> None:
    for info in await infos(ctx, *names):
        shape = ciphertext_info(info)
        if shape is not None and math.prod(shape) != 1:
            raise ValidationFailed(f"{info.ball_id}: expected 1 ciphertext, storage holds {list(shape)}")


async def _tags(ctx: JobContext, name: str) -> dict[str, str] | None:
    """The caller tags of ``name``, or None when it does not exist."""
    if not await ctx.store.exists(name):
        return None
    return dict((await ctx.store.info(name)).tags)


async def _commit_model(
    ctx: JobContext, p: PplrTrainParams, weights: bytes, bias: bytes, tag: dict[str, str]
) -> None:
    """Overwrite the weights and the bias, then drop the staged copies (their job is done)."""
    await put_all(ctx, [
        ciphertext_write(p.encrypted_weights_id, [weights], 1, [1], tag),
        ciphertext_write(p.encrypted_bias_id, [bias], 1, [1], tag),
    ])
    for name in (keys.staged(p.encrypted_weights_id), keys.staged(p.encrypted_bias_id)):
        try:
            await ctx.store.delete(name)
        except Exception as error:  # a leftover staged copy is harmless: the next call discards it
            log.warning("could not remove %s: %s", name, error)


async def _recover_staged(ctx: JobContext, p: PplrTrainParams) -> str | None:
    """Finish an interrupted update of weights and bias; return the command id it belonged to.

    Staged copies are written (both, or neither survives) before either target is touched, so a
    complete pair tagged with one command means that command's result was ready: rolling it forward
    restores a consistent (weights, bias) pair. A lone staged copy means staging itself failed, the
    targets were never touched: it is discarded.
    """
    staged_w, staged_b = keys.staged(p.encrypted_weights_id), keys.staged(p.encrypted_bias_id)
    tags_w, tags_b = await together(_tags(ctx, staged_w), _tags(ctx, staged_b))
    if tags_w is None and tags_b is None:
        return None
    owner = (tags_w or {}).get(COMMAND_TAG)
    if tags_w is None or tags_b is None or owner is None or owner != tags_b.get(COMMAND_TAG):
        for name, tags in ((staged_w, tags_w), (staged_b, tags_b)):
            if tags is not None:
                await ctx.store.delete(name)
        return None
    weights, bias = await lists(ctx, staged_w, staged_b)
    if len(weights) != 1 or len(bias) != 1:
        raise CorruptObject(f"{staged_w}/{staged_b}: expected one ciphertext each")
    await _commit_model(ctx, p, weights[0], bias[0], {COMMAND_TAG: owner})
    log.warning("completed the interrupted PPLR update of %s/%s from command %s",
                p.encrypted_weights_id, p.encrypted_bias_id, owner)
    return owner


async def _packed_model(
    ctx: JobContext, w_key: str, b_key: str, d: int, x_key: str
) -> tuple[list[bytes], bytes]:
    """The packed model: d weight ciphertexts and one bias ciphertext (each replicated over the block)."""
    weights, bias = await lists(ctx, w_key, b_key)
    if len(weights) != d or len(bias) != 1:
        raise ValidationFailed(
            f"{w_key}/{b_key}: expected {d} weight ciphertexts (d of {x_key}) and 1 bias ciphertext, "
            f"storage holds {len(weights)} and {len(bias)}"
        )
    return weights, bias[0]


async def _packed_dataset(ctx: JobContext, key: str, n_features: int) -> tuple[list[bytes], int, int]:
    """A column-packed X ``[blocks, d]`` → (flat ciphertexts, blocks, d)."""
    shape = ciphertext_info(await ctx.store.info(key), ndim=2, what=" (column-packed X [blocks, d])")
    assert shape is not None
    blocks, d = shape
    if n_features and n_features != d:
        raise ValidationFailed(f"{key}: n_features={n_features} but storage holds {d} columns")
    (columns,) = await lists(ctx, key)
    check_grid(key, columns, (blocks, d))
    return columns, blocks, d


async def _pplr_train_packed(ctx: JobContext, p: PplrTrainParams, started: float) -> PplrTrainResult:
    """One epoch, rotation-free: per-slot gradients for the data owner, who applies the step.

    Nothing is overwritten (the gradients go to a fresh key), so a retry simply recomputes: no
    staging. Blocks are split over the pool; each part's d+1 ciphertexts are one row of the result.
    """
    material = await public_material(ctx, Op.PPLR_TRAIN.value, relin=True)
    x_key, y_key = p.encrypted_matrix_train_id, p.encrypted_label_vector_train_id
    w_key, b_key = p.encrypted_weights_id, p.encrypted_bias_id
    if len({x_key, y_key, w_key, b_key}) != 4:
        raise BadRequest("the four PPLR ids must be different objects")
    if p.epochs != 1:
        raise BadRequest("layout 'packed' runs one epoch per call (the data owner applies each gradient)")
    if not p.n_samples:
        raise BadRequest("layout 'packed' needs n_samples (the padding of the last block is masked out)")
    columns, blocks, d = await _packed_dataset(ctx, x_key, p.n_features)
    y_info = await ctx.store.info(y_key)
    ciphertext_info(y_info)
    (y,) = await lists(ctx, y_key)
    check_grid(y_key, y, (blocks,))
    weights, bias = await _packed_model(ctx, w_key, b_key, d, x_key)

    train_started = time.perf_counter()
    ranges = spans(blocks, 2 * d + 4, ctx.settings.worker_capacity)  # x⊙w, σ̃, e⊙x per block
    parts = await fan_out(
        ctx, material, pqc_jobs.pplr_gradient_packed, ranges,
        lambda lo, hi: (columns[lo * d : hi * d], d, y[lo:hi], weights, bias, lo, p.n_samples,
                        hi == blocks),
    )
    train_time = elapsed(train_started)
    out_key = keys.pplr_gradients(w_key, p.namespace)
    await put_all(ctx, [ciphertext_write(out_key, [g for part in parts for g in part], result_chunks(ctx, p),
                                          [len(parts), d + 1])])
    return PplrTrainResult(
        encrypted_weights_id=w_key, encrypted_bias_id=b_key, epochs=1, n_samples=p.n_samples,
        train_time=train_time, encrypted_gradients_id=out_key, service_time=elapsed(started),
    )


async def _pplr_predict_packed(ctx: JobContext, p: PplrPredictParams, started: float) -> PplrPredictResult:
    material = await public_material(ctx, Op.PPLR_PREDICT.value, relin=True)
    x_key, w_key, b_key = p.encrypted_matrix_test_id, p.encrypted_weights_id, p.encrypted_bias_id
    columns, blocks, d = await _packed_dataset(ctx, x_key, p.n_features)
    weights, bias = await _packed_model(ctx, w_key, b_key, d, x_key)
    predict_started = time.perf_counter()
    ranges = spans(blocks, d + 3, ctx.settings.worker_capacity)
    parts = await fan_out(ctx, material, pqc_jobs.pplr_predict_packed, ranges,
                           lambda lo, hi: (columns[lo * d : hi * d], d, weights, bias))
    predictions, size = [v for part, _ in parts for v in part], parts[0][1]
    predict_time = elapsed(predict_started)
    out_key = keys.encrypted_predictions(x_key, p.namespace)
    await put_all(ctx, [ciphertext_write(out_key, predictions, result_chunks(ctx, p), [blocks])])
    return PplrPredictResult(encrypted_predictions_id=out_key, predict_time=predict_time,
                             n_records=blocks * size, service_time=elapsed(started))


async def pplr_train(ctx: JobContext, p: PplrTrainParams) -> PplrTrainResult:
    """``epochs`` encrypted gradient steps; new weights/bias written over the same ids, safely:

    1. stage both new ciphertexts under ``<id>staged`` (fresh keys: all or nothing);
    2. overwrite weights, then bias (tagged with the command id);
    3. delete the staged copies.

    A retry of the same command (same ``id``) after a failure in 2 completes the update from the staged
    copies, and after a lost reply finds its tag on both targets: either way it does not train twice.
    A different command finding a complete staged pair first completes that update (the only way back
    to a consistent weights/bias pair), then trains on it. Two commands training the same ids at the
    same time are not supported (the data owner drives one epoch at a time).
    """
    started = time.perf_counter()
    if p.layout == "packed":
        return await _pplr_train_packed(ctx, p, started)
    material = await public_material(ctx, Op.PPLR_TRAIN.value, relin=True, galois=True)
    command_id = ctx.command.id
    result = {"encrypted_weights_id": p.encrypted_weights_id, "encrypted_bias_id": p.encrypted_bias_id,
              "epochs": p.epochs}

    x_key, y_key = p.encrypted_matrix_train_id, p.encrypted_label_vector_train_id
    w_key, b_key = p.encrypted_weights_id, p.encrypted_bias_id
    if len({x_key, y_key, w_key, b_key, keys.staged(w_key), keys.staged(b_key)}) != 6:
        raise BadRequest("the four PPLR ids (and their staged copies <id>staged) must be different objects")
    recovered_from = await _recover_staged(ctx, p)
    x_info, y_info, w_info, b_info = await infos(ctx, x_key, y_key, w_key, b_key)
    x_shape, y_shape = ciphertext_info(x_info), ciphertext_info(y_info)
    await _single_ciphertexts(ctx, w_key, b_key)
    if recovered_from == command_id or (
        w_info.tags.get(COMMAND_TAG) == command_id and b_info.tags.get(COMMAND_TAG) == command_id
    ):
        n = x_shape[0] if x_shape else 0
        return PplrTrainResult(
            **result, n_samples=n, train_time=0.0, recovered=True, service_time=elapsed(started)
        )

    x_rows, y, weights, bias = await lists(ctx, x_key, y_key, w_key, b_key)
    n = check_rows(x_key, x_rows, x_shape)
    if check_rows(y_key, y, y_shape) != n:
        raise ValidationFailed(f"{y_key}: {len(y)} labels for {n} samples in {x_key}")
    if p.n_samples and p.n_samples != n:
        raise ValidationFailed(f"{x_key}: n_samples={p.n_samples} but storage holds {n} samples")
    if len(weights) != 1 or len(bias) != 1:
        raise ValidationFailed(f"{w_key}/{b_key}: expected one ciphertext each")

    train_started = time.perf_counter()
    new_w, new_b = await compute_with_keys(
        ctx, material, pqc_jobs.pplr_train, x_rows, y, weights[0], bias[0], p.learning_rate, p.epochs,
        p.n_features,
    )
    train_time = elapsed(train_started)
    tag = {COMMAND_TAG: command_id}
    await put_all(ctx, [
        ciphertext_write(keys.staged(w_key), [new_w], 1, [1], tag),
        ciphertext_write(keys.staged(b_key), [new_b], 1, [1], tag),
    ])
    await _commit_model(ctx, p, new_w, new_b, tag)
    return PplrTrainResult(**result, n_samples=n, train_time=train_time, service_time=elapsed(started))


async def pplr_predict(ctx: JobContext, p: PplrPredictParams) -> PplrPredictResult:
    """Encrypted σ̃(x·w + b) per record → ``<test>encryptedpredictions`` (size-1 ciphertexts)."""
    started = time.perf_counter()
    if p.layout == "packed":
        return await _pplr_predict_packed(ctx, p, started)
    material = await public_material(ctx, Op.PPLR_PREDICT.value, relin=True, galois=True)
    x_key, w_key, b_key = p.encrypted_matrix_test_id, p.encrypted_weights_id, p.encrypted_bias_id
    x_shape = ciphertext_info(await ctx.store.info(x_key))
    await _single_ciphertexts(ctx, w_key, b_key)
    x_rows, weights, bias = await lists(ctx, x_key, w_key, b_key)
    n = check_rows(x_key, x_rows, x_shape)
    if len(weights) != 1 or len(bias) != 1:
        raise ValidationFailed(f"{w_key}/{b_key}: expected one ciphertext each")
    predict_started = time.perf_counter()
    ranges = spans(n, 8, ctx.settings.worker_capacity)  # dot + σ̃: a handful of operations per record
    parts = await fan_out(ctx, material, pqc_jobs.pplr_predict, ranges,
                           lambda lo, hi: (x_rows[lo:hi], weights[0], bias[0], p.n_features))
    predictions = [v for part in parts for v in part]
    predict_time = elapsed(predict_started)
    out_key = keys.encrypted_predictions(x_key, p.namespace)
    await put_all(ctx, [ciphertext_write(out_key, predictions, result_chunks(ctx, p), [n])])
    return PplrPredictResult(encrypted_predictions_id=out_key, predict_time=predict_time, n_records=n,
                             service_time=elapsed(started))
