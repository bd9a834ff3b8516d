"""Clustering handlers: KMeans, SKMeans, DBSKMeans (two steps each round), NNC, DBSNNC.

Each handler validates the command against what storage says (``info``: shapes, dtypes, k <= n),
downloads its inputs concurrently, runs the core in the compute pool and stores its outputs with
:func:`~worker.handlers.common.put_all`. All state between rounds lives in storage under Rory's key
names (``schemas.keys``; prefixed with ``<namespace>_`` when the command carries a namespace), so any
worker can serve any round and a restarted worker continues a job.

Secure k-means round (SKMeans, DBSKMeans), as the data owner drives it:

* step 1 reads ``encrypted<P>``, the UDM and, after the first round, the previous centroids
  ``<P>centj`` (the original V1 read ``<P>centi`` here: reference bug 7); it writes ``<P>centi``
  (the centroids this round started from), ``<P>encryptedshiftmatrix`` and, last, ``<P>centj`` (the
  new centroids), so a step that fails half-way can simply be retried: until ``centj`` is replaced
  the inputs are unchanged, and if a delete-then-put backend lost ``centj`` in the failure, ``centi``
  holds exactly the centroids the step started from and the retry resumes from it;
* step 2 reads the UDM and the owner's decrypted (DBSKMeans: FDH-OPE re-encrypted) shift. ``is_zero``
  true -> COMPLETED without touching storage; false -> update the UDM -> WORK_IN_PROGRESS; absent ->
  the V1 worker-side rule: COMPLETED when MRE(centi, centj) <= MIN_ERROR, else update. Step 2
  overwrites one object, the UDM: atomic on the local backend; on MictlanX (delete-then-put) a write
  that fails after all retries loses it, and the owner must upload the UDM again (it can: U = D - c).
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import numpy as np

from core.algorithms.convergence import mean_relative_error
from schemas import keys
from schemas.operations import (
    ClusteringStatus,
    DbsKMeansParams,
    DbsNncParams,
    KMeansParams,
    KMeansResult,
    LabelsResult,
    NncParams,
    NncResult,
    Op,
    SecureKMeansParams,
    Step1Result,
    Step2Result,
)
from worker.errors import NotFound, ValidationFailed
from worker.handlers import jobs
from worker.handlers.common import (
    Write,
    check_dtype,
    check_k,
    check_numeric,
    check_shape,
    fetch_arrays,
    labels_payload,
    plan_labels,
    put_all,
    result_chunks,
    run_step,
)
from worker.runtime.registry import Operation

__all__ = [
    "OPERATIONS",
    "dbskmeans",
    "dbsnnc",
    "kmeans",
    "nnc",
    "previous_centroids_info",
    "skmeans",
]


def _elapsed(started: float) -> float:
    return time.perf_counter() - started


def _shape(info: Any) -> tuple[int, ...]:
    return tuple(int(d) for d in info.full_shape or ())


# ------------------------------------------------------------------ KMeans
async def kmeans(ctx: Any, p: KMeansParams) -> KMeansResult:
    """Plaintext k-means (Euclidean, first-k initialisation) of the n x a matrix ``P``."""
    started = time.perf_counter()
    info = await ctx.store.info(p.plaintext_matrix_id)
    check_numeric(info, p.plaintext_matrix_id, ndim=2)
    check_k(p.k, _shape(info)[0])
    data = await ctx.store.get_ndarray(p.plaintext_matrix_id)
    labels, iterations = await ctx.compute(jobs.kmeans_fit, data, p.k, p.max_iterations, p.tolerance)
    payload = await labels_payload(ctx, labels, keys.label_vector(p.plaintext_matrix_id, p.namespace))
    return KMeansResult(**payload, iterations=iterations, service_time=_elapsed(started))


# ------------------------------------------------------------------ secure k-means
def _udm_key(p: SecureKMeansParams, double_blind: bool) -> str:
    root, ns = p.plaintext_matrix_id, p.namespace
    return keys.encrypted_udm(root, ns) if double_blind else keys.udm(root, ns)


def _check_encrypted(info: Any, p: SecureKMeansParams) -> tuple[int, int, int]:
    """The Liu dataset is n x a x m real numbers; ``m`` must agree when the command states it."""
    check_numeric(info, info.ball_id, ndim=3)
    check_dtype(info, p.encrypted_matrix_dtype)
    n, a, m = _shape(info)
    if "m" in p.model_fields_set and m != p.m:
        raise ValidationFailed(f"{info.ball_id}: m={p.m} but the stored ciphertexts have {m} components")
    return n, a, m


def _check_udm(info: Any, n: int, a: int, k: int) -> tuple[int, int, int]:
    """A UDM is n x n x a (as the owner uploads it) or n x k' x a with k' >= k (after an update)."""
    check_numeric(info, info.ball_id, ndim=3)
    rows, cols, attrs = _shape(info)
    if rows != n or attrs != a or cols < k:
        raise ValidationFailed(
            f"{info.ball_id}: UDM shape {[rows, cols, attrs]} does not fit {n} records, {a} attributes, k={k}"
        )
    return rows, cols, attrs


def _check_dbs_udm(info: Any, p: SecureKMeansParams) -> None:
    if isinstance(p, DbsKMeansParams):
        stored = list(_shape(info))
        if p.encrypted_udm_shape is not None and stored != list(p.encrypted_udm_shape):
            raise ValidationFailed(
                f"{info.ball_id}: declared shape {p.encrypted_udm_shape} but storage holds {stored}"
            )
        check_dtype(info, p.encrypted_udm_dtype)


async def previous_centroids_info(ctx: Any, root: str, ns: str | None) -> Any:
    """Where this round's starting centroids are: ``<P>centj``, or ``<P>centi`` after a failed step 1.

    Step 1 writes ``centi`` (= the centroids it started from) before ``centj``. On a backend whose
    overwrite is delete-then-put (MictlanX), a step that failed on that last write leaves ``centj``
    deleted and ``centi`` holding exactly the centroids the step started from, so the retry reads
    them there and recomputes the same round. Nothing else deletes ``centj``. Shared with the CKKS
    variants (``worker.handlers.pqc``), which write the same keys in the same order.
    """
    current = keys.centroids_current(root, ns)
    try:
        return await ctx.store.info(current)
    except NotFound:
        try:
            info = await ctx.store.info(keys.centroids_previous(root, ns))
        except NotFound:
            raise NotFound(
                f"no previous centroids {current!r}: send clustering_status=START (1) for the first round"
            ) from None
        ctx.log.warning("resuming a failed step 1 from %s (%s is missing)", info.ball_id, current)
        return info


async def _secure_step1(ctx: Any, p: SecureKMeansParams, double_blind: bool) -> Step1Result:
    started = time.perf_counter()
    root, ns = p.plaintext_matrix_id, p.namespace
    enc_key = p.encrypted_matrix_id or keys.encrypted(root)
    udm_key = _udm_key(p, double_blind)
    start = p.clustering_status == ClusteringStatus.START
    previous_key = keys.centroids_current(root, ns)

    lookups = [
        check_shape(ctx, enc_key, p.encrypted_matrix_shape, allow_prefix=True),
        ctx.store.info(udm_key),
    ]
    if not start:
        lookups.append(previous_centroids_info(ctx, root, ns))
    infos = await asyncio.gather(*lookups)
    n, a, m = _check_encrypted(infos[0], p)
    check_k(p.k, n)
    _check_udm(infos[1], n, a, p.k)
    _check_dbs_udm(infos[1], p)
    if not start:
        check_numeric(infos[2], infos[2].ball_id)
        if _shape(infos[2]) != (p.k, a, m):
            raise ValidationFailed(
                f"{infos[2].ball_id}: previous centroids have shape {list(_shape(infos[2]))}, "
                f"expected {[p.k, a, m]} (k={p.k})"
            )

    source_key = previous_key if start else infos[2].ball_id
    arrays = await fetch_arrays(ctx, enc_key, udm_key, *([] if start else [source_key]))
    encrypted, udm = arrays[0], arrays[1]
    previous = None if start else arrays[2]
    labels, centi, centj, shift = await ctx.compute(
        jobs.secure_kmeans_step1, encrypted, udm, p.k, start, previous, double_blind
    )

    chunks = result_chunks(ctx, p)
    shift_key = keys.encrypted_shift_matrix(root, ns)
    payload, label_write = plan_labels(ctx, labels, keys.label_vector(root, ns))
    centi_key = keys.centroids_previous(root, ns)
    writes = [
        # Skipped when resuming from centi: it already holds exactly these centroids.
        *([] if source_key == centi_key else [Write(centi_key, centi, num_chunks=min(chunks, p.k))]),
        Write(shift_key, shift, num_chunks=min(chunks, p.k)),
        *([label_write] if label_write else []),
        # Last: it is this step's input on the next round, so until it lands a retry is exact.
        Write(previous_key, centj, num_chunks=min(chunks, p.k)),
    ]
    await put_all(ctx, writes)
    return Step1Result(
        **payload,
        n_iterations=p.iterations + 1,
        encrypted_shift_matrix_id=shift_key,
        service_time=_elapsed(started),
    )


def _shift_key(p: SecureKMeansParams) -> str:
    if isinstance(p, DbsKMeansParams) and p.shift_matrix_ope_id:
        return p.shift_matrix_ope_id
    return p.shift_matrix_id or keys.shift_matrix(p.plaintext_matrix_id, p.namespace)


def _step2_result(
    status: ClusteringStatus, started: float, double_blind: bool, shape: Any = None, dtype: Any = None
) -> Step2Result:
    extra: dict[str, Any] = {}
    if shape is not None:
        if double_blind:
            extra = {"encrypted_udm_shape": list(shape), "encrypted_udm_dtype": str(dtype)}
        else:
            extra = {"udm_shape": list(shape)}
    return Step2Result(clustering_status=status, service_time=_elapsed(started), **extra)


async def _converged_by_mre(ctx: Any, p: SecureKMeansParams) -> bool:
    """The V1 worker-side rule on the encrypted centroids of the last step 1 (MIN_ERROR)."""
    root, ns = p.plaintext_matrix_id, p.namespace
    centi_key, centj_key = keys.centroids_previous(root, ns), keys.centroids_current(root, ns)
    infos = await asyncio.gather(ctx.store.info(centi_key), ctx.store.info(centj_key))
    for info in infos:
        check_numeric(info, info.ball_id)
    if _shape(infos[0]) != _shape(infos[1]):
        raise ValidationFailed(
            f"{centi_key} {list(_shape(infos[0]))} and {centj_key} {list(_shape(infos[1]))} differ in shape"
        )
    centi, centj = await fetch_arrays(ctx, centi_key, centj_key)
    # k x a x m values: cheap enough for the event loop.
    return mean_relative_error(centi, centj) <= ctx.settings.min_error


async def _secure_step2(ctx: Any, p: SecureKMeansParams, double_blind: bool) -> Step2Result:
    started = time.perf_counter()
    if p.is_zero:
        return _step2_result(ClusteringStatus.COMPLETED, started, double_blind)
    udm_key, shift_key = _udm_key(p, double_blind), _shift_key(p)
    udm_info, shift_info = await asyncio.gather(ctx.store.info(udm_key), ctx.store.info(shift_key))
    check_numeric(shift_info, shift_key, ndim=2)
    k, a = _shape(shift_info)
    if "k" in p.model_fields_set and k != p.k:
        raise ValidationFailed(f"{shift_key}: the shift matrix has {k} rows but k={p.k}")
    check_numeric(udm_info, udm_key, ndim=3)
    n, _, udm_a = _shape(udm_info)
    if udm_a != a:
        raise ValidationFailed(
            f"{shift_key}: the shift matrix has {a} attributes, the UDM {udm_key} has {udm_a}"
        )
    _check_udm(udm_info, n, a, k)
    _check_dbs_udm(udm_info, p)
    declared = p.encrypted_matrix_shape
    if declared is not None and (declared[0] != n or (len(declared) > 1 and declared[1] != a)):
        raise ValidationFailed(
            f"declared encrypted_matrix_shape {declared} does not match the UDM {list(_shape(udm_info))}"
        )
    if p.is_zero is None and await _converged_by_mre(ctx, p):
        return _step2_result(
            ClusteringStatus.COMPLETED, started, double_blind, _shape(udm_info), udm_info.full_dtype
        )

    udm, shift = await fetch_arrays(ctx, udm_key, shift_key)
    updated = await ctx.compute(jobs.udm_update, udm, shift)
    await put_all(ctx, [Write(udm_key, updated, num_chunks=min(result_chunks(ctx, p), n))])
    return _step2_result(
        ClusteringStatus.WORK_IN_PROGRESS, started, double_blind, updated.shape, np.dtype(updated.dtype)
    )


async def skmeans(ctx: Any, p: SecureKMeansParams) -> Step1Result | Step2Result:
    """SKMeans round step 1 (encrypted phase) or step 2 (UDM update / convergence)."""
    return await run_step(ctx, p, _secure_step1, _secure_step2, double_blind=False)


async def dbskmeans(ctx: Any, p: DbsKMeansParams) -> Step1Result | Step2Result:
    """DBSKMeans: SKMeans on the FDH-OPE-encrypted UDM ``<P>encryptedudm``."""
    return await run_step(ctx, p, _secure_step1, _secure_step2, double_blind=True)


# ------------------------------------------------------------------ NNC
async def _square_matrix(ctx: Any, key: str) -> np.ndarray:
    info = await ctx.store.info(key)
    check_numeric(info, key, ndim=2)
    rows, cols = _shape(info)
    if rows != cols:
        raise ValidationFailed(f"{key}: a distance matrix must be square, storage holds {[rows, cols]}")
    return await ctx.store.get_ndarray(key)


async def nnc(ctx: Any, p: NncParams) -> NncResult:
    """Plaintext NNC on ``<P>dm`` (the dataset itself is not read); threshold -1 = smallest distance."""
    started = time.perf_counter()
    dm = await _square_matrix(ctx, p.dm_id or keys.distance_matrix(p.plaintext_matrix_id))
    labels, used = await ctx.compute(jobs.nnc_labels, dm, p.threshold)
    payload = await labels_payload(ctx, labels, keys.label_vector(p.plaintext_matrix_id, p.namespace))
    return NncResult(**payload, threshold=used, service_time=_elapsed(started))


async def dbsnnc(ctx: Any, p: DbsNncParams) -> LabelsResult:
    """NNC on the FDH-OPE-encrypted ``<P>encrypteddm`` with the owner's encrypted threshold."""
    started = time.perf_counter()
    edm_key = p.encrypted_dm_id or keys.encrypted_distance_matrix(p.plaintext_matrix_id)
    edm = await _square_matrix(ctx, edm_key)
    labels = await ctx.compute(jobs.dbsnnc_labels, edm, p.encrypted_threshold)
    payload = await labels_payload(ctx, labels, keys.label_vector(p.plaintext_matrix_id, p.namespace))
    return LabelsResult(**payload, service_time=_elapsed(started))


OPERATIONS: list[Operation] = [
    Operation(Op.KMEANS.value, KMeansParams, kmeans, "Plaintext k-means (first-k initialisation)."),
    Operation(
        Op.SKMEANS.value, SecureKMeansParams, skmeans,
        "Secure k-means over Liu ciphertexts with a plaintext UDM (step 1 / step 2).",
        {"steps": "2", "scheme": "liu"},
    ),
    Operation(
        Op.DBSKMEANS.value, DbsKMeansParams, dbskmeans,
        "Double-blind secure k-means: Liu data, FDH-OPE-encrypted UDM (step 1 / step 2).",
        {"steps": "2", "scheme": "liu+fdhope"},
    ),
    Operation(Op.NNC.value, NncParams, nnc, "Plaintext nearest-neighbour threshold clustering."),
    Operation(
        Op.DBSNNC.value, DbsNncParams, dbsnnc,
        "Nearest-neighbour clustering on an FDH-OPE-encrypted distance matrix.",
        {"scheme": "fdhope"},
    ),
]
