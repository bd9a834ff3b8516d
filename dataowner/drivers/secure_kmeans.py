"""Secure k-means: SKMeans, DBSKMeans and their CKKS variants, with the round loop written once.

What sets the four protocols apart is a :class:`Scheme`: the records are Liu ciphertexts or CKKS
rows (``profile``), and the UDM and every shift travel in the clear to the worker or FDH-OPE-sealed
(``sensitivity``, "double blind"). Each round: step 1 (the worker's encrypted phase: labels and the
encrypted shift), the owner decrypts the shift and decides convergence (max |S| <= tolerance; the
converged round's step 2 is skipped), then step 2 (the worker updates the UDM with the shift the
owner hands back, sealed when double blind). Every round's state is in storage, so any worker may
serve any round.

Besides the labels, the report carries what the owner learns anyway: ``extra["shift_matrices"]``
(every round's decrypted k x a shift) and ``extra["centroids"]`` (the final plaintext centroids,
the first k records minus the sum of the shifts: no download). ``rng`` seeds the FDH-OPE key and
every FDH-OPE/Liu encryption the owner makes, so a test can replay a job exactly.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import numpy as np

from core import pqc_dataowner
from core.algorithms import dbskmeans as core_dbskmeans
from core.algorithms import skmeans as core_skmeans
from core.algorithms.convergence import max_abs_shift
from core.algorithms.udm import build_udm
from core.crypto import ckks, fdhope
from dataowner.drivers.base import Driver
from dataowner.drivers.options import KMeansOptions
from dataowner.job import Job, JobReport
from schemas import keys
from schemas.operations import (
    ClusteringStatus,
    DbsKMeansParams,
    Op,
    SecureKMeansParams,
    Step1Result,
    Step2Result,
)

__all__ = ["Scheme", "SecureKMeansDriver", "clustering_input"]


@dataclass(frozen=True)
class Scheme:
    """What sets one secure k-means protocol apart.

    ``profile``: the records are CKKS rows under this profile (else Liu ciphertexts).
    ``sensitivity``: the UDM and every shift travel FDH-OPE-encrypted (double blind).
    ``refresh_udm`` (double blind only): the owner uploads a fresh OPE(D - c) each round instead of
    OPE(S) for step 2, so the UDM cannot drift (OPE is not additive).
    """

    op: Op
    compact_udm: bool = True
    profile: str | None = None
    sensitivity: float | None = None
    refresh_udm: bool = False

    @property
    def double_blind(self) -> bool:
        return self.sensitivity is not None

    @property
    def params(self) -> type[SecureKMeansParams]:
        return DbsKMeansParams if self.double_blind else SecureKMeansParams


def clustering_input(data: np.ndarray, k: int, max_iterations: int | None = None) -> np.ndarray:
    """Reject bad input before anything is encrypted or uploaded: the worker would only fail later."""
    x = np.asarray(data, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"data must be n x a, got shape {x.shape}")
    if max_iterations is not None and max_iterations < 1:
        raise ValueError("max_iterations must be >= 1")
    if not 1 <= k <= x.shape[0]:
        raise ValueError(f"k must be in [1, n={x.shape[0]}], got {k}")
    return x


class SecureKMeansDriver(Driver):
    async def run(
        self, scheme: Scheme, options: KMeansOptions, data: np.ndarray, k: int, *, upload: bool,
        rng: np.random.Generator | None = None,
    ) -> JobReport:
        """The rounds the four secure k-means protocols share."""
        max_iterations = options.max_iterations
        x = clustering_input(data, k, max_iterations)
        n, a = x.shape
        ns = self.ns(options.namespace)
        ds = self.dataset_id(options.dataset_id)
        job = self.job(scheme.op.value, ds, n, max_iterations, options.progress)
        fkey = await self._uploads(job, scheme, ds, ns, x, k, upload, rng)
        job.emit("upload", message=f"{n}x{a} encrypted, UDM uploaded")
        job.prepared()

        base: dict[str, Any] = {"plaintext_matrix_id": ds, "k": k, **self.common(options.namespace)}
        if scheme.profile is None:
            with job.owner():  # may read the Liu key from disk (upload=False skipped that so far)
                base["m"] = self.keys.liu.m
        shift_key = keys.shift_matrix(ds, ns)
        status = ClusteringStatus.START
        labels: np.ndarray | None = None
        converged = False
        refresh = scheme.refresh_udm and fkey is not None
        centroids = x[:k].copy()  # round 1 starts from the first k records; c' = c - S each round
        shift_matrices: list[np.ndarray] = []
        it = 0
        for it in range(1, max_iterations + 1):
            with job.round():
                job.emit("step1", it)
                step1 = scheme.params(**base, step_index=1, clustering_status=status, iterations=it - 1)
                r1 = await job.call(step1, Step1Result, idempotent=False)
                labels_task = asyncio.ensure_future(self.labels(job, r1))
                shift = await self._decrypt_shift(job, scheme, r1.encrypted_shift_matrix_id, a)
                size = max_abs_shift(shift)
                with job.owner():
                    centroids = centroids - shift
                shift_matrices.append(shift)
                job.report.shifts.append(size)
                converged = size <= options.tolerance
                labels = await labels_task
                if converged or it == max_iterations:
                    job.emit("converged" if converged else "max-iterations", it, size)
                    break
                if refresh:
                    assert fkey is not None
                    with job.owner():
                        fresh = core_dbskmeans.encrypt_udm(fkey, x[:, None, :] - centroids[None, :, :], rng)
                    await self.put_matrix(job, keys.encrypted_udm(ds, ns), fresh)
                    job.emit("upload", it, size, message="fresh OPE(D - c) instead of step 2")
                    status = ClusteringStatus.WORK_IN_PROGRESS
                    continue
                with job.owner():
                    sealed = shift if fkey is None else core_dbskmeans.encrypt_shift(fkey, shift, rng)
                await job.store.put_ndarray(shift_key, sealed, num_chunks=1)
                job.emit("step2", it, size)
                step2 = scheme.params(
                    **base, step_index=2, is_zero=False, iterations=it, shift_matrix_id=shift_key
                )
                r2 = await job.call(step2, Step2Result, idempotent=False)
            if r2.clustering_status == ClusteringStatus.COMPLETED:
                break
            status = ClusteringStatus.WORK_IN_PROGRESS
        job.report.labels = labels
        job.report.iterations = it
        job.report.converged = converged
        job.report.extra["shift_matrices"] = shift_matrices
        job.report.extra["centroids"] = centroids
        return job.finish()

    async def _uploads(
        self,
        job: Job,
        scheme: Scheme,
        ds: str,
        ns: str | None,
        x: np.ndarray,
        k: int,
        upload: bool,
        rng: np.random.Generator | None,
    ) -> fdhope.FdhopeKey | None:
        """Store what the first round reads; return the FDH-OPE key of a double-blind job.

        The UDM is always rebuilt (step 2 overwrites it). The CKKS variants also need the protocol's
        ``initsm`` (k encrypted zero rows, where round 1's centroids start). A double-blind key is
        fitted to this UDM's range, so it is made per job and kept with the owner's keys.
        """
        with job.owner():
            udm = build_udm(x, k if scheme.compact_udm else None)
        uploads: list[Awaitable[Any]] = []
        if scheme.profile is None:
            if upload:
                uploads.append(self.upload_liu(job, ds, x, rng))
        else:
            if upload:
                uploads.append(self.upload_ckks_rows(job, keys.encrypted(ds), x, scheme.profile))
            with job.owner():
                ctx = self.keys.ckks(scheme.profile)
                zeros = ckks.serialize(pqc_dataowner.init_shift_matrix(ctx, k, x.shape[1]))
            uploads.append(
                job.store.put_bytes_list(keys.init_shift_matrix(ds, ns), zeros, num_chunks=1, shape=[k])
            )
        fkey = None
        if scheme.sensitivity is None:
            uploads.append(self.put_matrix(job, keys.udm(ds, ns), udm))
        else:
            with job.owner():
                fkey = fdhope.generate_key(udm, scheme.sensitivity, rng)
                sealed = core_dbskmeans.encrypt_udm(fkey, udm, rng)
                self.keys.save_fdhope(f"{ds}-udm", fkey)
            uploads.append(self.put_matrix(job, keys.encrypted_udm(ds, ns), sealed))
        del udm
        await asyncio.gather(*uploads)
        return fkey

    async def _decrypt_shift(self, job: Job, scheme: Scheme, key: str, width: int) -> np.ndarray:
        if scheme.profile is None:
            encrypted = await job.store.get_ndarray(key)
            with job.owner():
                return core_skmeans.decrypt_shift(self.keys.liu, encrypted)
        vectors = await self.get_vectors(job, key, scheme.profile)
        with job.owner():
            return ckks.decrypt_vectors(self.keys.ckks(scheme.profile), vectors, width=width)
