"""SKMeans-PQC and DBSKMeans-PQC: the secure k-means rounds of ``worker/handlers/secure_kmeans.py``
over CKKS row ciphertexts.

Why only a scheme here: the round's logic (key names, resume rule, write order, results) is written
once in ``worker/handlers/secure_kmeans.py``; what CKKS changes is how the encrypted dataset and the
centroids are stored and checked and which compute-pool function (``worker/handlers/pqc_jobs.py``)
runs step 1. Step 2 (the k x a cumulative shift of secure_kmeans.py, the same for every scheme)
needs no key material.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from schemas import keys
from schemas.operations import (
    DbsKMeansParams,
    Op,
    SecureKMeansParams,
    Step1Result,
    Step2Result,
)
from worker.errors import ValidationFailed
from worker.handlers import pqc_jobs, secure_kmeans
from worker.handlers.common import (
    Write,
    check_k,
    check_numeric,
)
from worker.handlers.pqc_common import (
    check_rows,
    ciphertext_info,
    ciphertext_write,
    public_material,
    stored_shape,
    together,
)
from worker.handlers.secure_kmeans import (
    Phase1,
    Scheme,
    check_declared_matrix,
    check_declared_udm,
    check_udm,
    shape_of,
)
from worker.keys import PublicKeys, compute_with_keys
from worker.runtime.context import JobContext
from worker.storage.base import BallInfo

__all__ = [
    "PQC_DBSKMEANS",
    "PQC_SKMEANS",
    "CkksScheme",
    "DoubleBlindCkksScheme",
    "pqc_dbskmeans",
    "pqc_skmeans",
]


class CkksScheme(Scheme[list[bytes], PublicKeys]):
    """CKKS row ciphertexts: one ciphertext per record, centroids and shift k ciphertexts each; step 1
    also reads the owner's encrypted zero shift ``<P>initshiftmatrix``. The round's logic is
    ``worker.handlers.secure_kmeans``; step 2 without ``is_zero`` decides on the decrypted shift."""

    reports_udm_in_step1 = True
    #: DBSKMeans-PQC step 2 reads ``<P>shiftmatrixope`` when it exists: what the V1 client writes
    #: (docs/original-rory.md).
    ope_shift_fallback = True

    async def material(self, ctx: JobContext) -> PublicKeys:
        return await public_material(ctx, self.op)

    def state_inputs(self, p: SecureKMeansParams) -> list[str]:
        return [keys.init_shift_matrix(p.plaintext_matrix_id, p.namespace)]

    async def encrypted_info(self, ctx: JobContext, p: SecureKMeansParams, key: str) -> BallInfo:
        return await ctx.store.info(key)

    def check_step1(
        self, p: SecureKMeansParams, encrypted: BallInfo, udm: BallInfo, state: Sequence[BallInfo]
    ) -> int:
        enc_shape = ciphertext_info(encrypted)
        check_numeric(udm, udm.ball_id, ndim=3)
        n, _, a = shape_of(udm)
        check_k(p.k, n)
        check_udm(udm, p.k)
        check_declared_udm(udm, p)
        check_declared_matrix(p, encrypted.ball_id, n, a)
        for info in state:  # the zero shift, then the previous centroids (none at START)
            shape = ciphertext_info(info)
            if shape is not None and shape and shape[0] != p.k:
                raise ValidationFailed(f"{info.ball_id}: holds {shape[0]} ciphertexts, expected k={p.k}")
        if enc_shape is not None and enc_shape and enc_shape[0] != n:
            raise ValidationFailed(f"{encrypted.ball_id}: {enc_shape[0]} records but the UDM has {n}")
        return n

    async def encrypted_phase(
        self, ctx: JobContext, p: SecureKMeansParams, material: PublicKeys, inputs: Sequence[str],
        infos: Sequence[BallInfo], n: int, start: bool, udm_shift: np.ndarray | None,
    ) -> Phase1[list[bytes]]:
        enc_key, udm_key, *states = inputs
        fetched = await together(
            ctx.store.get_bytes_list(enc_key),
            secure_kmeans.fetch_checked_udm(ctx, udm_key, infos[1]),
            *(ctx.store.get_bytes_list(name) for name in states),
        )
        rows, udm, zeros = fetched[0], fetched[1], fetched[2]
        previous = None if start else fetched[3]
        if check_rows(enc_key, rows, stored_shape(infos[0])) != n:
            raise ValidationFailed(f"{enc_key}: {len(rows)} records but the UDM has {n}")
        for key, items in zip(states, fetched[2:], strict=True):
            if len(items) != p.k:
                raise ValidationFailed(f"{key}: holds {len(items)} ciphertexts, expected k={p.k}")
        labels, centj, shift = await compute_with_keys(
            ctx, material, pqc_jobs.skmeans_step1, rows, udm, p.k, start, previous, zeros, udm_shift
        )
        centi = list(rows[: p.k]) if start else list(previous or [])
        return Phase1(labels, centi, centj, shift)

    def state_write(self, key: str, value: list[bytes], chunks: int, k: int) -> Write:
        return ciphertext_write(key, value, chunks, [k])

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
    Op.PQC_SKMEANS.value, double_blind=False, together=together
)
PQC_DBSKMEANS = DoubleBlindCkksScheme(
    Op.PQC_DBSKMEANS.value, double_blind=True, together=together
)


async def pqc_skmeans(ctx: JobContext, p: SecureKMeansParams) -> Step1Result | Step2Result:
    """SKMeans-PQC: CKKS row ciphertexts, plaintext UDM ``<P>udm``."""
    return await secure_kmeans.run(ctx, p, PQC_SKMEANS)


async def pqc_dbskmeans(ctx: JobContext, p: DbsKMeansParams) -> Step1Result | Step2Result:
    """DBSKMeans-PQC: CKKS row ciphertexts, FDH-OPE UDM ``<P>encryptedudm``, OPE-encrypted shift."""
    return await secure_kmeans.run(ctx, p, PQC_DBSKMEANS)
