"""Plaintext clustering drivers: KMeans, NNC and DBSNNC, one command each."""

from __future__ import annotations

import numpy as np

from core.crypto import fdhope
from core.dataowner import distance_matrix, threshold
from dataowner.drivers.base import Driver
from dataowner.drivers.options import KMeansOptions
from dataowner.job import JobReport
from dataowner.progress import ProgressCallback
from schemas import keys
from schemas import operations as ops

__all__ = ["PlainClusteringDriver"]


class PlainClusteringDriver(Driver):
    async def kmeans(self, options: KMeansOptions, data: np.ndarray, k: int, *, upload: bool) -> JobReport:
        x, ds, job = self.start(ops.Op.KMEANS, data, options.dataset_id, options.progress)
        if upload:
            await job.store.put_blob(ds, x)
        params = ops.KMeansParams(
            plaintext_matrix_id=ds,
            k=k,
            max_iterations=options.max_iterations,
            tolerance=options.tolerance,
            **self.common(options.namespace),
        )
        result, job.report.labels = await self.labels_round(job, params, ops.KMeansResult)
        job.report.iterations = result.iterations
        return job.finish()

    async def nnc(
        self,
        data: np.ndarray,
        *,
        threshold_value: float,
        dataset_id: str | None,
        progress: ProgressCallback | None,
    ) -> JobReport:
        x, ds, job = self.start(ops.Op.NNC, data, dataset_id, progress)
        with job.owner():
            dm = distance_matrix(x)
        await self.put_matrix(job, keys.distance_matrix(ds), dm)
        params = ops.NncParams(plaintext_matrix_id=ds, threshold=threshold_value, **self.common())
        result, job.report.labels = await self.labels_round(job, params, ops.NncResult)
        job.report.extra["threshold"] = result.threshold
        return job.finish()

    async def dbsnnc(
        self,
        data: np.ndarray,
        *,
        threshold_value: float,
        dataset_id: str | None,
        sensitivity: float,
        progress: ProgressCallback | None,
    ) -> JobReport:
        """FDH-OPE key from the DM, threshold on the PLAINTEXT DM, OPE(DM) and OPE(threshold)."""
        x, ds, job = self.start(ops.Op.DBSNNC, data, dataset_id, progress)
        with job.owner():
            dm = distance_matrix(x)
            fkey = fdhope.generate_key(dm, sensitivity)
            theta = threshold(dm, threshold_value)
            sealed_dm = fdhope.encrypt(fkey, dm)
            sealed_theta = fdhope.encrypt_threshold(fkey, theta)
            self.keys.save_fdhope(f"{ds}-dm", fkey)  # key work: the owner keeps the key
        await self.put_matrix(job, keys.encrypted_distance_matrix(ds), sealed_dm)
        params = ops.DbsNncParams(plaintext_matrix_id=ds, encrypted_threshold=sealed_theta, **self.common())
        _, job.report.labels = await self.labels_round(job, params, ops.LabelsResult)
        job.report.extra["threshold"] = theta
        return job.finish()
