"""Clustering handlers: KMeans, SKMeans, DBSKMeans (two steps each round), NNC, DBSNNC.

Each handler validates the command against what storage says (``info``: shapes, dtypes, k <= n),
downloads its inputs concurrently, runs the core in the compute pool and stores its outputs with
:func:`~worker.handlers.common.put_all`. All state between rounds lives in storage under Rory's key
names (``schemas.keys``; prefixed with ``<namespace>_`` when the command carries a namespace), so any
worker can serve any round and a restarted worker continues a job.

SKMeans and DBSKMeans are the secure k-means round of ``worker.handlers.secure_kmeans`` (its
docstring describes the round, its keys and its write order) bound to :class:`LiuScheme`.
The runtime fills ``service_time`` in every result (worker/runtime/dispatch.py).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from core.algorithms import dbskmeans as core_dbskmeans
from core.algorithms import skmeans as core_skmeans
from core.algorithms.convergence import mean_relative_error
from schemas import keys
from schemas.operations import (
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
from worker.errors import ValidationFailed
from worker.handlers import jobs, secure_kmeans
from worker.handlers.common import (
    Write,
    check_dtype,
    check_k,
    check_numeric,
    check_shape,
    fetch_arrays,
    labels_payload,
    shape_of,
    with_claims_checked,
)
from worker.handlers.contract import serve
from worker.handlers.secure_kmeans import (
    Phase1,
    Scheme,
    check_declared_udm,
    check_udm,
    previous_centroids_info,
)
from worker.runtime.context import JobContext
from worker.runtime.registry import Operation
from worker.storage.base import BallInfo

__all__ = [
    "DBSKMEANS",
    "OPERATIONS",
    "SKMEANS",
    "LiuScheme",
    "dbskmeans",
    "dbsnnc",
    "kmeans",
    "nnc",
    "previous_centroids_info",
    "skmeans",
]


# ------------------------------------------------------------------ KMeans
async def kmeans(ctx: JobContext, p: KMeansParams) -> KMeansResult:
    """Plaintext k-means (Euclidean, first-k initialisation) of the n x a matrix ``P``."""
    info = await ctx.store.info(p.plaintext_matrix_id)
    check_numeric(info, p.plaintext_matrix_id, ndim=2)
    check_k(p.k, shape_of(info)[0])
    data = await ctx.store.get_ndarray(p.plaintext_matrix_id)
    labels, iterations = await ctx.compute(jobs.kmeans_fit, data, p.k, p.max_iterations, p.tolerance)
    payload = await labels_payload(ctx, labels, keys.label_vector(p.plaintext_matrix_id, p.namespace))
    return KMeansResult(**payload, iterations=iterations)


# ------------------------------------------------------------------ secure k-means (Liu)
def _check_encrypted(info: BallInfo, p: SecureKMeansParams) -> tuple[int, int, int]:
    """The Liu dataset is n x a x m real numbers; ``m`` must agree when the command states it."""
    check_numeric(info, info.ball_id, ndim=3)
    check_dtype(info, p.encrypted_matrix_dtype)
    n, a, m = shape_of(info)
    if "m" in p.model_fields_set and m != p.m:
        raise ValidationFailed(f"{info.ball_id}: m={p.m} but the stored ciphertexts have {m} components")
    return n, a, m


class LiuScheme(Scheme[np.ndarray, None]):
    """Liu ciphertexts: the dataset is an n x a x m ndarray, centroids and shift k x a x m ndarrays;
    step 2 without ``is_zero`` applies the V1 rule MRE(centi, centj) <= MIN_ERROR. The UDM is kept
    in the cumulative form (worker/handlers/secure_kmeans.py): step 2 writes k x a numbers."""

    async def material(self, ctx: JobContext) -> None:
        return None

    async def encrypted_info(self, ctx: JobContext, p: SecureKMeansParams, key: str) -> BallInfo:
        return await check_shape(ctx, key, p.encrypted_matrix_shape, allow_prefix=True)

    def check_step1(
        self, p: SecureKMeansParams, encrypted: BallInfo, udm: BallInfo, state: Sequence[BallInfo]
    ) -> int:
        n, a, m = _check_encrypted(encrypted, p)
        check_k(p.k, n)
        check_udm(udm, p.k, n=n, a=a)
        check_declared_udm(udm, p)
        for previous in state:  # the previous centroids (none at START)
            check_numeric(previous, previous.ball_id)
            if shape_of(previous) != (p.k, a, m):
                raise ValidationFailed(
                    f"{previous.ball_id}: previous centroids have shape {list(shape_of(previous))}, "
                    f"expected {[p.k, a, m]} (k={p.k})"
                )
        return n

    async def encrypted_phase(
        self, ctx: JobContext, p: SecureKMeansParams, material: None, inputs: Sequence[str],
        infos: Sequence[BallInfo], n: int, start: bool, udm_shift: np.ndarray | None,
    ) -> Phase1[np.ndarray]:
        """One download round for every input, then the core's encrypted phase on U0 + ``udm_shift``
        (the cumulative shift, None: zero): on the event loop for small inputs, else in the pool."""
        udm, arrays = await self.together(
            secure_kmeans.fetch_checked_udm(ctx, inputs[1], infos[1]),
            fetch_arrays(ctx, inputs[0], *inputs[2:]),
        )
        encrypted = arrays[0]
        previous = None if start else arrays[1]
        inline = infos[0].size + infos[1].size <= secure_kmeans.INLINE_COMPUTE_BYTES
        core = core_dbskmeans if self.double_blind else core_skmeans
        labels, centj, shift = await secure_kmeans.compute(
            ctx, inline, core.encrypted_phase, encrypted, udm, p.k, start, previous, udm_shift
        )
        # centi: the centroids this round started from (at START the first k encrypted records).
        centi = np.array(encrypted[: p.k] if previous is None else previous, dtype=np.float64)
        return Phase1(labels, centi, centj, shift)

    def state_write(self, key: str, value: np.ndarray, chunks: int, k: int) -> Write:
        return Write(key, value, num_chunks=min(chunks, k))

    async def converged(
        self, ctx: JobContext, p: SecureKMeansParams, shift_key: str
    ) -> tuple[bool, np.ndarray | None]:
        """The V1 worker-side rule on the encrypted centroids of the last step 1 (MIN_ERROR)."""
        root, ns = p.plaintext_matrix_id, p.namespace
        centi_key, centj_key = keys.centroids_previous(root, ns), keys.centroids_current(root, ns)
        infos = await self.together(ctx.store.info(centi_key), ctx.store.info(centj_key))
        for info in infos:
            check_numeric(info, info.ball_id)
        if shape_of(infos[0]) != shape_of(infos[1]):
            shapes = [list(shape_of(info)) for info in infos]
            raise ValidationFailed(f"{centi_key} {shapes[0]} and {centj_key} {shapes[1]} differ in shape")
        centi, centj = await fetch_arrays(ctx, centi_key, centj_key)
        # k x a x m values: cheap enough for the event loop.
        return mean_relative_error(centi, centj) <= ctx.settings.min_error, None


SKMEANS = LiuScheme(Op.SKMEANS.value, double_blind=False)
DBSKMEANS = LiuScheme(Op.DBSKMEANS.value, double_blind=True)


async def skmeans(ctx: JobContext, p: SecureKMeansParams) -> Step1Result | Step2Result:
    """SKMeans round step 1 (encrypted phase) or step 2 (UDM update / convergence)."""
    return await secure_kmeans.run(ctx, p, SKMEANS)


async def dbskmeans(ctx: JobContext, p: DbsKMeansParams) -> Step1Result | Step2Result:
    """DBSKMeans: SKMeans on the FDH-OPE-encrypted UDM ``<P>encryptedudm``."""
    return await secure_kmeans.run(ctx, p, DBSKMEANS)


# ------------------------------------------------------------------ NNC
async def _square_matrix(ctx: JobContext, key: str) -> np.ndarray:
    info = await ctx.store.info(key)
    check_numeric(info, key, ndim=2)
    rows, cols = shape_of(info)
    if rows != cols:
        raise ValidationFailed(f"{key}: a distance matrix must be square, storage holds {[rows, cols]}")
    return await ctx.store.get_ndarray(key)


async def nnc(ctx: JobContext, p: NncParams) -> NncResult:
    """Plaintext NNC on ``<P>dm`` (the dataset itself is not read); threshold -1 = smallest distance."""
    dm = await _square_matrix(ctx, p.dm_id or keys.distance_matrix(p.plaintext_matrix_id))
    labels, used = await ctx.compute(jobs.nnc_labels, dm, p.threshold)
    payload = await labels_payload(ctx, labels, keys.label_vector(p.plaintext_matrix_id, p.namespace))
    return NncResult(**payload, threshold=used)


async def dbsnnc(ctx: JobContext, p: DbsNncParams) -> LabelsResult:
    """NNC on the FDH-OPE-encrypted ``<P>encrypteddm`` with the owner's encrypted threshold."""
    edm_key = p.encrypted_dm_id or keys.encrypted_distance_matrix(p.plaintext_matrix_id)
    edm = await _square_matrix(ctx, edm_key)
    labels = await ctx.compute(jobs.dbsnnc_labels, edm, p.encrypted_threshold)
    payload = await labels_payload(ctx, labels, keys.label_vector(p.plaintext_matrix_id, p.namespace))
    return LabelsResult(**payload)


# Names, params models and descriptions come from the contract's specs (worker/handlers/contract.py).
OPERATIONS: list[Operation] = with_claims_checked([
    serve(Op.KMEANS, kmeans),
    serve(Op.SKMEANS, skmeans, steps="2", scheme="liu"),
    serve(Op.DBSKMEANS, dbskmeans, steps="2", scheme="liu+fdhope"),
    serve(Op.NNC, nnc),
    serve(Op.DBSNNC, dbsnnc, scheme="fdhope"),
])
