"""CKKS ("PQC") handlers: SKMeans-PQC, DBSKMeans-PQC, SKNN-PQC, PPLR train/predict and PQC k-means.

Each handler validates the command against what storage says (``info`` only), loads the worker's
public key material on first use (:func:`worker.keys.public_keys`: a missing or secret-bearing key
directory fails *this* command with ``MissingKeys`` 422), downloads its inputs concurrently, runs the
homomorphic work in the compute pool (``worker.handlers.pqc_jobs``: TenSEAL holds the GIL) and stores
its outputs with :func:`~worker.handlers.common.put_all`. Steps that need no key material (the
plaintext UDM update, index → label mapping) run without it.

Ciphertext objects are storage byte lists (msgpack arrays of serialized TenSEAL vectors, never
pickle). Loop bounds always come from the stored objects, never from the caller's declared shapes,
which are only checked (422 on disagreement). Result lists are split into ``min(num_chunks, items)``
chunks (the original's splitter hung when chunks > items: docs/original-rory.md).

Key names follow ``schemas.keys`` (Rory's concatenations; state keys take the ``namespace`` prefix).
What the worker learns in each protocol is documented in ``docs/privacy.md``.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import numpy as np

from schemas import keys
from schemas.operations import (
    DbsKMeansParams,
    DistanceName,
    LabelsResult,
    Op,
    PplrPredictParams,
    PplrPredictResult,
    PplrTrainParams,
    PplrTrainResult,
    PqcDistancesResult,
    PqcKMeansDistancesResult,
    PqcKMeansParams,
    PqcKMeansSumsResult,
    PqcSknnParams,
    SecureKMeansParams,
    Step1Result,
    Step2Result,
)
from worker.errors import BadRequest, CorruptObject, UnsupportedOperation, ValidationFailed
from worker.handlers import pqc_jobs, secure_kmeans
from worker.handlers.common import (
    Write,
    check_allocation,
    check_integral,
    check_k,
    check_numeric,
    labels_payload,
    put_all,
    result_chunks,
    with_claims_checked,
)
from worker.handlers.secure_kmeans import (
    Phase1,
    Scheme,
    check_declared_matrix,
    check_declared_udm,
    check_udm,
    shape_of,
)
from worker.keys import PublicKeys, compute_with_keys, public_keys
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation
from worker.storage.base import BallInfo

__all__ = [
    "COMMAND_TAG",
    "OPERATIONS",
    "PRELOAD_MODULES",
    "UnsupportedOperation",
    "pplr_predict",
    "pplr_train",
    "pqc_dbskmeans",
    "pqc_kmeans",
    "pqc_skmeans",
    "pqc_sknn",
    "spans",
]

log = logging.getLogger(__name__)

#: Tag on objects a PPLR train call wrote, naming the command (makes a retry of it idempotent).
COMMAND_TAG = "rory_command"
#: Modules the compute processes should import at start (``Registry.preload``): TenSEAL is slow to import.
PRELOAD_MODULES = ("tenseal", "core.crypto.ckks", "worker.handlers.pqc_jobs")
#: Minimum ciphertext operations per pool process when a step is split over several (see :func:`spans`).
MIN_PART_WORK = 64
CIPHERTEXT_DTYPE = "ckks"


# ------------------------------------------------------------------ small helpers
def _elapsed(started: float) -> float:
    return time.perf_counter() - started


def _shape(info: Any) -> tuple[int, ...] | None:
    return None if info.full_shape is None else tuple(int(d) for d in info.full_shape)


def _ciphertext_info(info: Any, *, ndim: int | None = None, what: str = "") -> tuple[int, ...] | None:
    """422 unless the object is a ciphertext list (with a ``ndim``-D logical shape when required)."""
    if info.kind != "bytes_list":
        raise ValidationFailed(
            f"{info.ball_id}: expected a list of CKKS ciphertexts{what}, storage holds a {info.kind}"
        )
    shape = _shape(info)
    if ndim is not None and (shape is None or len(shape) != ndim):
        raise ValidationFailed(
            f"{info.ball_id}: a {ndim}-D shape is required{what} (store the ciphertext list with "
            f"shape=[...]), storage holds {list(shape) if shape is not None else 'no shape'}"
        )
    return shape


def _check_rows(key: str, items: Sequence[bytes], shape: tuple[int, ...] | None) -> int:
    """A list of row ciphertexts; a stored logical shape ``[n]`` or ``[n, a]`` must agree with it."""
    if shape is not None and shape and shape[0] != len(items):
        raise CorruptObject(f"{key}: tagged with shape {list(shape)} but holds {len(items)} ciphertexts")
    if not items:
        raise ValidationFailed(f"{key}: the ciphertext list is empty")
    return len(items)


def _check_grid(key: str, items: Sequence[bytes], shape: tuple[int, ...]) -> None:
    if math.prod(shape) != len(items):
        raise CorruptObject(f"{key}: tagged with shape {list(shape)} but holds {len(items)} ciphertexts")
    if not items:
        raise ValidationFailed(f"{key}: the ciphertext list is empty")


def _check_declared_rows(key: str, declared: Sequence[int] | None, n: int | None) -> None:
    """A declared shape's first entry is the number of row ciphertexts (the rest is informative)."""
    if declared is not None and n is not None and int(declared[0]) != n:
        raise ValidationFailed(f"{key}: declared shape {list(declared)} but storage holds {n} ciphertexts")


def _ciphertext_write(
    key: str, items: list[bytes], chunks: int, shape: Sequence[int], tags: dict[str, str] | None = None
) -> Write:
    chunks = max(1, min(chunks, len(items)))
    return Write(key, items, "bytes", num_chunks=chunks, shape=list(shape), tags=tags)


async def _together(*calls: Awaitable[Any]) -> list[Any]:
    """Await ``calls`` concurrently, results in order; the first failure cancels the others.

    Unlike ``asyncio.gather``, nothing is left running when this returns or raises: a part still in a
    compute slot when a sibling fails is cancelled (the pool kills and restarts that slot, so it is
    free again) and awaited, so a failed command does not keep slots busy after its capacity is
    released. The first error is raised as itself (not as an ExceptionGroup), like gather does.
    """
    tasks: list[asyncio.Task[Any]] = []
    try:
        async with asyncio.TaskGroup() as group:
            tasks.extend(group.create_task(_awaited(call)) for call in calls)
    except BaseExceptionGroup as grouped:
        raise _first_error(grouped) from None
    return [task.result() for task in tasks]


async def _awaited(call: Awaitable[Any]) -> Any:
    return await call


def _first_error(grouped: BaseExceptionGroup[Any]) -> BaseException:
    error: BaseException = grouped
    while isinstance(error, BaseExceptionGroup):
        error = error.exceptions[0]
    return error


async def _infos(ctx: JobContext, *names: str) -> list[Any]:
    return await _together(*(ctx.store.info(name) for name in names))


async def _lists(ctx: JobContext, *names: str) -> list[list[bytes]]:
    return await _together(*(ctx.store.get_bytes_list(name) for name in names))


async def _keys(ctx: JobContext, operation: str, *, relin: bool = False, galois: bool = False) -> PublicKeys:
    material = await public_keys(ctx, galois=galois)
    if relin:
        material.require_relin_keys(operation)
    if galois:
        material.require_galois_keys(operation)
    return material


def spans(units: int, work_per_unit: int, capacity: int) -> list[tuple[int, int]]:
    """Split ``units`` independent pieces of work over at most ``capacity`` pool processes, never
    giving a process less than :data:`MIN_PART_WORK` ciphertext operations (a split costs a pickle
    round trip and, the first time, a context load in that process)."""
    parts = max(1, min(capacity, units, (units * max(1, work_per_unit)) // MIN_PART_WORK))
    bounds = [units * i // parts for i in range(parts + 1)]
    return [(lo, hi) for lo, hi in itertools.pairwise(bounds) if hi > lo]


async def _fan_out(
    ctx: JobContext, material: PublicKeys, fn: Callable[..., Any], ranges: list[tuple[int, int]],
    args: Callable[[int, int], tuple[Any, ...]],
) -> list[Any]:
    """Run ``fn(keys, *args(lo, hi))`` for every range concurrently in the pool; results in order.

    When one part fails the others are cancelled at once (their slots killed and restarted) before
    the error propagates: see :func:`_together`.
    """
    return await _together(*(compute_with_keys(ctx, material, fn, *args(lo, hi)) for lo, hi in ranges))


# ------------------------------------------------------------------ SKMeans-PQC / DBSKMeans-PQC
class CkksScheme(Scheme[list[bytes], PublicKeys]):
    """CKKS row ciphertexts: one ciphertext per record, centroids and shift k ciphertexts each; step 1
    also reads the owner's encrypted zero shift ``<P>initshiftmatrix``. The round's logic is
    ``worker.handlers.secure_kmeans``; step 2 without ``is_zero`` decides on the decrypted shift."""

    reports_udm_in_step1 = True
    #: DBSKMeans-PQC step 2 reads ``<P>shiftmatrixope`` when it exists: what the V1 client writes
    #: (docs/original-rory.md).
    ope_shift_fallback = True

    async def material(self, ctx: JobContext) -> PublicKeys:
        return await _keys(ctx, self.op)

    def state_inputs(self, p: SecureKMeansParams) -> list[str]:
        return [keys.init_shift_matrix(p.plaintext_matrix_id, p.namespace)]

    async def encrypted_info(self, ctx: JobContext, p: SecureKMeansParams, key: str) -> BallInfo:
        return await ctx.store.info(key)

    def check_step1(
        self, p: SecureKMeansParams, encrypted: BallInfo, udm: BallInfo, state: Sequence[BallInfo]
    ) -> int:
        enc_shape = _ciphertext_info(encrypted)
        check_numeric(udm, udm.ball_id, ndim=3)
        n, _, a = shape_of(udm)
        check_k(p.k, n)
        check_udm(udm, p.k)
        check_declared_udm(udm, p)
        check_declared_matrix(p, encrypted.ball_id, n, a)
        for info in state:  # the zero shift, then the previous centroids (none at START)
            shape = _ciphertext_info(info)
            if shape is not None and shape and shape[0] != p.k:
                raise ValidationFailed(f"{info.ball_id}: holds {shape[0]} ciphertexts, expected k={p.k}")
        if enc_shape is not None and enc_shape and enc_shape[0] != n:
            raise ValidationFailed(f"{encrypted.ball_id}: {enc_shape[0]} records but the UDM has {n}")
        return n

    async def encrypted_phase(
        self, ctx: JobContext, p: SecureKMeansParams, material: PublicKeys, inputs: Sequence[str],
        infos: Sequence[BallInfo], n: int, start: bool,
    ) -> Phase1[list[bytes]]:
        enc_key, udm_key, *states = inputs
        fetched = await _together(
            ctx.store.get_bytes_list(enc_key),
            ctx.store.get_ndarray(udm_key),
            *(ctx.store.get_bytes_list(name) for name in states),
        )
        rows, udm, zeros = fetched[0], fetched[1], fetched[2]
        previous = None if start else fetched[3]
        if _check_rows(enc_key, rows, _shape(infos[0])) != n:
            raise ValidationFailed(f"{enc_key}: {len(rows)} records but the UDM has {n}")
        for key, items in zip(states, fetched[2:], strict=True):
            if len(items) != p.k:
                raise ValidationFailed(f"{key}: holds {len(items)} ciphertexts, expected k={p.k}")
        labels, centj, shift = await compute_with_keys(
            ctx, material, pqc_jobs.skmeans_step1, rows, udm, p.k, start, previous, zeros
        )
        centi = list(rows[: p.k]) if start else list(previous or [])
        return Phase1(labels, centi, centj, shift)

    def state_write(self, key: str, value: list[bytes], chunks: int, k: int) -> Write:
        return _ciphertext_write(key, value, chunks, [k])

    async def converged(
        self, ctx: JobContext, p: SecureKMeansParams, shift_key: str
    ) -> tuple[bool, np.ndarray | None]:
        """V1-compatible worker-side rule. CKKS centroids cannot be compared by the worker (it has no
        secret key), but the owner's decrypted shift is here: converged when max |S| <= MIN_ERROR."""
        shift = await ctx.store.get_ndarray(shift_key)
        return float(np.max(np.abs(shift), initial=0.0)) <= ctx.settings.min_error, shift


class DoubleBlindCkksScheme(CkksScheme):
    """DBSKMeans-PQC: the shift arrives FDH-OPE-encrypted, so only the owner can judge convergence."""

    judges_convergence = False


PQC_SKMEANS = CkksScheme(
    Op.PQC_SKMEANS.value, double_blind=False, together=_together, udm_update=pqc_jobs.udm_update
)
PQC_DBSKMEANS = DoubleBlindCkksScheme(
    Op.PQC_DBSKMEANS.value, double_blind=True, together=_together, udm_update=pqc_jobs.udm_update
)


async def pqc_skmeans(ctx: JobContext, p: SecureKMeansParams) -> Step1Result | Step2Result:
    """SKMeans-PQC: CKKS row ciphertexts, plaintext UDM ``<P>udm``."""
    return await secure_kmeans.run(ctx, p, PQC_SKMEANS)


async def pqc_dbskmeans(ctx: JobContext, p: DbsKMeansParams) -> Step1Result | Step2Result:
    """DBSKMeans-PQC: CKKS row ciphertexts, FDH-OPE UDM ``<P>encryptedudm``, OPE-encrypted shift."""
    return await secure_kmeans.run(ctx, p, PQC_DBSKMEANS)


# ------------------------------------------------------------------ SKNN-PQC
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
    material = await _keys(ctx, Op.PQC_SKNN_PREDICT.value, relin=True)
    model_key = p.encrypted_model_id or keys.encrypted(p.model_id)
    records_key = p.encrypted_records_id or keys.encrypted(p.records_test_id)
    model_info, records_info = await _infos(ctx, model_key, records_key)
    packed = p.layout == "packed"
    what = " (layout packed)" if packed else ""
    model_shape = _ciphertext_info(model_info, ndim=2 if packed else None, what=what)
    records_shape = _ciphertext_info(records_info, ndim=2 if packed else None, what=what)
    if packed:
        assert model_shape is not None and records_shape is not None
        if model_shape[1] != records_shape[1]:
            raise ValidationFailed(
                f"{model_key} holds {model_shape[1]} attributes per block, {records_key} {records_shape[1]}"
            )
        _check_declared_rows(records_key, p.encrypted_records_shape, records_shape[0])
    else:
        _check_declared_rows(model_key, p.encrypted_model_shape, (model_shape or (None,))[0])
        _check_declared_rows(records_key, p.encrypted_records_shape, (records_shape or (None,))[0])

    model, records = await _lists(ctx, model_key, records_key)
    if packed:
        assert model_shape is not None and records_shape is not None
        _check_grid(model_key, model, model_shape)
        _check_grid(records_key, records, records_shape)
        blocks, a = model_shape
        n_rec = records_shape[0]
        # one output ciphertext per record and block, each about the size of an input ciphertext
        check_allocation(ctx, (n_rec, blocks), max(map(len, model[:1]), default=0), "SKNN-PQC distances")
        ranges = spans(n_rec, blocks * a, ctx.settings.worker_capacity)
        parts = await _fan_out(ctx, material, pqc_jobs.sknn_packed, ranges,
                               lambda lo, hi: (model, blocks, records[lo * a : hi * a], a))
        values, block_size = [v for part, _ in parts for v in part], parts[0][1]
        out_shape = [n_rec, blocks]
    else:
        n_model = _check_rows(model_key, model, model_shape)
        n_rec = _check_rows(records_key, records, records_shape)
        _check_declared_rows(model_key, p.encrypted_model_shape, n_model)
        _check_declared_rows(records_key, p.encrypted_records_shape, n_rec)
        check_allocation(ctx, (n_rec, n_model), max(map(len, model[:1]), default=0), "SKNN-PQC distances")
        ranges = spans(n_rec, n_model, ctx.settings.worker_capacity)
        parts = await _fan_out(
            ctx, material, pqc_jobs.sknn_pairs, ranges, lambda lo, hi: (records[lo:hi], model)
        )
        values = [v for part in parts for v in part]
        out_shape, block_size = [n_rec, n_model], None
    if len(values) != math.prod(out_shape):
        raise ValidationFailed(f"computed {len(values)} distance ciphertexts, expected {out_shape}")

    distances_key = keys.distances(p.records_test_id, p.namespace)
    await put_all(ctx, [_ciphertext_write(distances_key, values, result_chunks(ctx, p), out_shape)])
    return PqcDistancesResult(
        distances_id=distances_key,
        distances_shape=out_shape,
        distances_dtype=CIPHERTEXT_DTYPE,
        exact=False,
        layout=p.layout,
        n_model=0 if packed else out_shape[1],
        block_size=block_size,
        distance=DistanceName.EUCLIDEAN.value,
        service_time=_elapsed(started),
    )


async def _sknn_labels(ctx: JobContext, p: PqcSknnParams) -> LabelsResult:
    """Step 2 (no key material): the data owner's nearest-row indices → model labels."""
    started = time.perf_counter()
    labels_key = keys.labels(p.model_id)
    index_key = keys.distances_index(p.records_test_id, p.namespace)
    labels_info, index_info = await _together(ctx.store.info(labels_key), ctx.store.info(index_key))
    check_numeric(labels_info, labels_key)
    check_numeric(index_info, index_key)
    stored = list(_shape(labels_info) or ())
    declared = p.model_labels_shape
    if declared is not None and math.prod(declared) != math.prod(stored):
        raise ValidationFailed(f"{labels_key}: declared shape {list(declared)} but storage holds {stored}")
    model_labels, index = await _together(
        ctx.store.get_ndarray(labels_key), ctx.store.get_ndarray(index_key)
    )
    flat_labels = model_labels.reshape(-1)
    idx = check_integral(index, index_key).reshape(-1)
    if idx.size and (idx.min() < 0 or idx.max() >= flat_labels.size):
        raise ValidationFailed(f"{index_key}: indices must lie in 0..{flat_labels.size - 1}")
    payload = await labels_payload(ctx, flat_labels[idx], keys.label_vector(p.records_test_id, p.namespace))
    return LabelsResult(**payload, service_time=_elapsed(started))


async def pqc_sknn(ctx: JobContext, p: PqcSknnParams) -> PqcDistancesResult | LabelsResult:
    """SKNN-PQC step 1 (encrypted squared distances) or step 2 (indices → labels)."""
    if p.step_index == 1:
        return await _sknn_distances(ctx, p)
    return await _sknn_labels(ctx, p)


# ------------------------------------------------------------------ PPLR
async def _single_ciphertexts(ctx: JobContext, *names: str) -> None:
    for info in await _infos(ctx, *names):
        shape = _ciphertext_info(info)
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
        _ciphertext_write(p.encrypted_weights_id, [weights], 1, [1], tag),
        _ciphertext_write(p.encrypted_bias_id, [bias], 1, [1], tag),
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
    tags_w, tags_b = await _together(_tags(ctx, staged_w), _tags(ctx, staged_b))
    if tags_w is None and tags_b is None:
        return None
    owner = (tags_w or {}).get(COMMAND_TAG)
    if tags_w is None or tags_b is None or owner is None or owner != tags_b.get(COMMAND_TAG):
        for name, tags in ((staged_w, tags_w), (staged_b, tags_b)):
            if tags is not None:
                await ctx.store.delete(name)
        return None
    weights, bias = await _lists(ctx, staged_w, staged_b)
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
    weights, bias = await _lists(ctx, w_key, b_key)
    if len(weights) != d or len(bias) != 1:
        raise ValidationFailed(
            f"{w_key}/{b_key}: expected {d} weight ciphertexts (d of {x_key}) and 1 bias ciphertext, "
            f"storage holds {len(weights)} and {len(bias)}"
        )
    return weights, bias[0]


async def _packed_dataset(ctx: JobContext, key: str, n_features: int) -> tuple[list[bytes], int, int]:
    """A column-packed X ``[blocks, d]`` → (flat ciphertexts, blocks, d)."""
    shape = _ciphertext_info(await ctx.store.info(key), ndim=2, what=" (column-packed X [blocks, d])")
    assert shape is not None
    blocks, d = shape
    if n_features and n_features != d:
        raise ValidationFailed(f"{key}: n_features={n_features} but storage holds {d} columns")
    (columns,) = await _lists(ctx, key)
    _check_grid(key, columns, (blocks, d))
    return columns, blocks, d


async def _pplr_train_packed(ctx: JobContext, p: PplrTrainParams, started: float) -> PplrTrainResult:
    """One epoch, rotation-free: per-slot gradients for the data owner, who applies the step.

    Nothing is overwritten (the gradients go to a fresh key), so a retry simply recomputes: no
    staging. Blocks are split over the pool; each part's d+1 ciphertexts are one row of the result.
    """
    material = await _keys(ctx, Op.PPLR_TRAIN.value, relin=True)
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
    _ciphertext_info(y_info)
    (y,) = await _lists(ctx, y_key)
    _check_grid(y_key, y, (blocks,))
    weights, bias = await _packed_model(ctx, w_key, b_key, d, x_key)

    train_started = time.perf_counter()
    ranges = spans(blocks, 2 * d + 4, ctx.settings.worker_capacity)  # x⊙w, σ̃, e⊙x per block
    parts = await _fan_out(
        ctx, material, pqc_jobs.pplr_gradient_packed, ranges,
        lambda lo, hi: (columns[lo * d : hi * d], d, y[lo:hi], weights, bias, lo, p.n_samples,
                        hi == blocks),
    )
    train_time = _elapsed(train_started)
    out_key = keys.pplr_gradients(w_key, p.namespace)
    await put_all(ctx, [_ciphertext_write(out_key, [g for part in parts for g in part], result_chunks(ctx, p),
                                          [len(parts), d + 1])])
    return PplrTrainResult(
        encrypted_weights_id=w_key, encrypted_bias_id=b_key, epochs=1, n_samples=p.n_samples,
        train_time=train_time, encrypted_gradients_id=out_key, service_time=_elapsed(started),
    )


async def _pplr_predict_packed(ctx: JobContext, p: PplrPredictParams, started: float) -> PplrPredictResult:
    material = await _keys(ctx, Op.PPLR_PREDICT.value, relin=True)
    x_key, w_key, b_key = p.encrypted_matrix_test_id, p.encrypted_weights_id, p.encrypted_bias_id
    columns, blocks, d = await _packed_dataset(ctx, x_key, p.n_features)
    weights, bias = await _packed_model(ctx, w_key, b_key, d, x_key)
    predict_started = time.perf_counter()
    ranges = spans(blocks, d + 3, ctx.settings.worker_capacity)
    parts = await _fan_out(ctx, material, pqc_jobs.pplr_predict_packed, ranges,
                           lambda lo, hi: (columns[lo * d : hi * d], d, weights, bias))
    predictions, size = [v for part, _ in parts for v in part], parts[0][1]
    predict_time = _elapsed(predict_started)
    out_key = keys.encrypted_predictions(x_key, p.namespace)
    await put_all(ctx, [_ciphertext_write(out_key, predictions, result_chunks(ctx, p), [blocks])])
    return PplrPredictResult(encrypted_predictions_id=out_key, predict_time=predict_time,
                             n_records=blocks * size, service_time=_elapsed(started))


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
    material = await _keys(ctx, Op.PPLR_TRAIN.value, relin=True, galois=True)
    command_id = ctx.command.id
    result = {"encrypted_weights_id": p.encrypted_weights_id, "encrypted_bias_id": p.encrypted_bias_id,
              "epochs": p.epochs}

    x_key, y_key = p.encrypted_matrix_train_id, p.encrypted_label_vector_train_id
    w_key, b_key = p.encrypted_weights_id, p.encrypted_bias_id
    if len({x_key, y_key, w_key, b_key, keys.staged(w_key), keys.staged(b_key)}) != 6:
        raise BadRequest("the four PPLR ids (and their staged copies <id>staged) must be different objects")
    recovered_from = await _recover_staged(ctx, p)
    x_info, y_info, w_info, b_info = await _infos(ctx, x_key, y_key, w_key, b_key)
    x_shape, y_shape = _ciphertext_info(x_info), _ciphertext_info(y_info)
    await _single_ciphertexts(ctx, w_key, b_key)
    if recovered_from == command_id or (
        w_info.tags.get(COMMAND_TAG) == command_id and b_info.tags.get(COMMAND_TAG) == command_id
    ):
        n = x_shape[0] if x_shape else 0
        return PplrTrainResult(
            **result, n_samples=n, train_time=0.0, recovered=True, service_time=_elapsed(started)
        )

    x_rows, y, weights, bias = await _lists(ctx, x_key, y_key, w_key, b_key)
    n = _check_rows(x_key, x_rows, x_shape)
    if _check_rows(y_key, y, y_shape) != n:
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
    train_time = _elapsed(train_started)
    tag = {COMMAND_TAG: command_id}
    await put_all(ctx, [
        _ciphertext_write(keys.staged(w_key), [new_w], 1, [1], tag),
        _ciphertext_write(keys.staged(b_key), [new_b], 1, [1], tag),
    ])
    await _commit_model(ctx, p, new_w, new_b, tag)
    return PplrTrainResult(**result, n_samples=n, train_time=train_time, service_time=_elapsed(started))


async def pplr_predict(ctx: JobContext, p: PplrPredictParams) -> PplrPredictResult:
    """Encrypted σ̃(x·w + b) per record → ``<test>encryptedpredictions`` (size-1 ciphertexts)."""
    started = time.perf_counter()
    if p.layout == "packed":
        return await _pplr_predict_packed(ctx, p, started)
    material = await _keys(ctx, Op.PPLR_PREDICT.value, relin=True, galois=True)
    x_key, w_key, b_key = p.encrypted_matrix_test_id, p.encrypted_weights_id, p.encrypted_bias_id
    x_shape = _ciphertext_info(await ctx.store.info(x_key))
    await _single_ciphertexts(ctx, w_key, b_key)
    x_rows, weights, bias = await _lists(ctx, x_key, w_key, b_key)
    n = _check_rows(x_key, x_rows, x_shape)
    if len(weights) != 1 or len(bias) != 1:
        raise ValidationFailed(f"{w_key}/{b_key}: expected one ciphertext each")
    predict_started = time.perf_counter()
    ranges = spans(n, 8, ctx.settings.worker_capacity)  # dot + σ̃: a handful of operations per record
    parts = await _fan_out(ctx, material, pqc_jobs.pplr_predict, ranges,
                           lambda lo, hi: (x_rows[lo:hi], weights[0], bias[0], p.n_features))
    predictions = [v for part in parts for v in part]
    predict_time = _elapsed(predict_started)
    out_key = keys.encrypted_predictions(x_key, p.namespace)
    await put_all(ctx, [_ciphertext_write(out_key, predictions, result_chunks(ctx, p), [n])])
    return PplrPredictResult(encrypted_predictions_id=out_key, predict_time=predict_time, n_records=n,
                             service_time=_elapsed(started))


# ------------------------------------------------------------------ PQC k-means (labels only)
async def _kmeans_dataset(ctx: JobContext, p: PqcKMeansParams) -> tuple[str, tuple[int, int]]:
    key = p.encrypted_matrix_id or keys.encrypted(p.plaintext_matrix_id)
    shape = _ciphertext_info(await ctx.store.info(key), ndim=2, what=" (column-packed dataset [blocks, a])")
    assert shape is not None
    if p.encrypted_matrix_shape is not None and list(p.encrypted_matrix_shape) != list(shape):
        raise ValidationFailed(
            f"{key}: declared shape {list(p.encrypted_matrix_shape)} but storage holds {list(shape)}"
        )
    return key, (shape[0], shape[1])


async def _kmeans_distances(ctx: JobContext, p: PqcKMeansParams) -> PqcKMeansDistancesResult:
    started = time.perf_counter()
    material = await _keys(ctx, Op.PQC_KMEANS.value, relin=True)
    root, ns = p.plaintext_matrix_id, p.namespace
    data_key, (blocks, a) = await _kmeans_dataset(ctx, p)
    cent_key = p.encrypted_centroids_id or keys.pqc_kmeans_centroids(root, ns)
    cent_shape = _ciphertext_info(await ctx.store.info(cent_key), ndim=2, what=" (centroids [k, a])")
    assert cent_shape is not None
    if tuple(cent_shape) != (p.k, a):
        raise ValidationFailed(f"{cent_key}: shape {list(cent_shape)}, expected [k={p.k}, a={a}]")
    columns, centroids = await _lists(ctx, data_key, cent_key)
    _check_grid(data_key, columns, (blocks, a))
    _check_grid(cent_key, centroids, (p.k, a))
    ranges = spans(blocks, p.k * a, ctx.settings.worker_capacity)
    parts = await _fan_out(ctx, material, pqc_jobs.kmeans_distances, ranges,
                           lambda lo, hi: (columns[lo * a : hi * a], a, centroids))
    values, block_size = [v for part, _ in parts for v in part], parts[0][1]
    out_key = keys.pqc_kmeans_distances(root, ns)
    await put_all(ctx, [_ciphertext_write(out_key, values, result_chunks(ctx, p), [blocks, p.k])])
    return PqcKMeansDistancesResult(
        encrypted_distances_id=out_key,
        distances_shape=[blocks, p.k],
        block_size=block_size,
        n_iterations=p.iterations + 1,
        service_time=_elapsed(started),
    )


async def _kmeans_sums(ctx: JobContext, p: PqcKMeansParams) -> PqcKMeansSumsResult:
    started = time.perf_counter()
    material = await _keys(ctx, Op.PQC_KMEANS.value)
    root, ns = p.plaintext_matrix_id, p.namespace
    data_key, (blocks, a) = await _kmeans_dataset(ctx, p)
    labels_key = p.labels_id or keys.pqc_kmeans_labels(root, ns)
    labels_info = await ctx.store.info(labels_key)
    check_numeric(labels_info, labels_key, ndim=(1, 2))
    columns, raw_labels = await _together(
        ctx.store.get_bytes_list(data_key), ctx.store.get_ndarray(labels_key)
    )
    _check_grid(data_key, columns, (blocks, a))
    labels = check_integral(raw_labels, labels_key).reshape(-1)
    if labels.size == 0 or labels.min() < 0 or labels.max() >= p.k:
        raise ValidationFailed(f"{labels_key}: labels must lie in 0..{p.k - 1} (k={p.k})")
    values = await compute_with_keys(ctx, material, pqc_jobs.kmeans_sums, columns, a, labels, p.k)
    out_key = keys.pqc_kmeans_sums(root, ns)
    await put_all(ctx, [_ciphertext_write(out_key, values, result_chunks(ctx, p), [p.k, a])])
    return PqcKMeansSumsResult(
        encrypted_sums_id=out_key, sums_shape=[p.k, a], n_iterations=p.iterations + 1,
        service_time=_elapsed(started),
    )


async def pqc_kmeans(ctx: JobContext, p: PqcKMeansParams) -> PqcKMeansDistancesResult | PqcKMeansSumsResult:
    """PQC k-means: step 1 encrypted distances, step 2 encrypted masked sums (the worker learns labels)."""
    if p.step_index == 1:
        return await _kmeans_distances(ctx, p)
    return await _kmeans_sums(ctx, p)


OPERATIONS: list[Operation] = with_claims_checked([
    Operation(
        Op.PQC_SKMEANS.value, SecureKMeansParams, pqc_skmeans,
        "Secure k-means over CKKS row ciphertexts with a plaintext UDM (step 1 / step 2).",
        {"steps": "2", "scheme": "ckks", "keys": "public"},
    ),
    Operation(
        Op.PQC_DBSKMEANS.value, DbsKMeansParams, pqc_dbskmeans,
        "Double-blind secure k-means: CKKS row ciphertexts, FDH-OPE-encrypted UDM (step 1 / step 2).",
        {"steps": "2", "scheme": "ckks+fdhope", "keys": "public"},
    ),
    Operation(
        Op.PQC_SKNN_PREDICT.value, PqcSknnParams, pqc_sknn,
        "Secure 1-NN over CKKS (squared Euclidean; step 1 distances / step 2 labels).",
        {"steps": "2", "scheme": "ckks", "keys": "public+relin"},
    ),
    Operation(
        Op.PPLR_TRAIN.value, PplrTrainParams, pplr_train,
        "Privacy-preserving logistic regression: encrypted gradient steps over CKKS.",
        {"scheme": "ckks", "keys": "public+relin+galois (layout rows), public+relin (layout packed)"},
    ),
    Operation(
        Op.PPLR_PREDICT.value, PplrPredictParams, pplr_predict,
        "Privacy-preserving logistic regression: encrypted predictions.",
        {"scheme": "ckks", "keys": "public+relin+galois (layout rows), public+relin (layout packed)"},
    ),
    Operation(
        Op.PQC_KMEANS.value, PqcKMeansParams, pqc_kmeans,
        "Euclidean k-means over column-packed CKKS data; the worker learns only labels (step 1 / step 2).",
        {"steps": "2", "scheme": "ckks", "keys": "public+relin"},
    ),
])
