"""Classification drivers: plaintext KNN and the secure 1-NN protocols (Liu SKNN, CKKS PQC SKNN).

Both secure protocols share one round: step 1 (the worker's encrypted distances), the owner
decrypts them and takes the argmin (only the owner can), stores the nearest model rows, and step 2
maps them to labels; the worker never sees a distance in the clear.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TypeVar

import numpy as np

from core.algorithms import pqc_sknn
from core.algorithms import sknn as core_sknn
from core.crypto import ckks
from dataowner.drivers.base import Driver, columns, grid
from dataowner.drivers.options import ClassificationOptions
from dataowner.job import Job, JobReport
from schemas import keys
from schemas.operations import (
    DistancesResult,
    KnnParams,
    LabelsResult,
    Op,
    PqcDistancesResult,
    PqcSknnParams,
    SknnParams,
)

__all__ = ["ClassificationDriver"]

D = TypeVar("D", bound=DistancesResult)
P = TypeVar("P", SknnParams, PqcSknnParams)


class ClassificationDriver(Driver):
    async def knn(
        self, options: ClassificationOptions, model: np.ndarray, model_labels: np.ndarray,
        records: np.ndarray, *, distance: str | None,
    ) -> JobReport:
        """Plaintext 1-NN on the worker: model, labels (1 x n) and records uploaded in the clear."""
        rec, rid, job = self.start(Op.KNN_PREDICT, records, options.records_id, options.progress)
        mdl = np.asarray(model, dtype=np.float64)
        lab = np.asarray(model_labels).reshape(1, -1)
        mid = self.dataset_id(options.model_id)
        await asyncio.gather(
            self.put_matrix(job, mid, mdl),
            job.store.put_ndarray(keys.labels(mid), lab, num_chunks=1),
            self.put_matrix(job, rid, rec),
        )
        params = KnnParams(
            model_id=mid, records_test_id=rid, model_labels_shape=list(lab.shape), distance=distance,
            **self.common(options.namespace),
        )
        _, job.report.predictions = await self.labels_round(job, params, LabelsResult)
        return job.finish()

    async def upload_sknn_model(
        self, job: Job | None, model: np.ndarray, model_labels: np.ndarray, model_id: str | None
    ) -> str:
        """SKNN "training": Liu-encrypt the model to ``encrypted<M>`` and store labels at ``<M>labels``."""
        mid = self.dataset_id(model_id)
        lab = np.asarray(model_labels).reshape(1, -1).astype(np.int64)
        store = job.store if job is not None else self.store
        await asyncio.gather(
            self.upload_liu(job, mid, np.asarray(model, dtype=np.float64)),
            store.put_ndarray(keys.labels(mid), lab, num_chunks=1),
        )
        return mid

    async def sknn(
        self, options: ClassificationOptions, model: np.ndarray, model_labels: np.ndarray,
        records: np.ndarray, *, distance: str, upload_model: bool,
    ) -> JobReport:
        rec, rid, job = self.start(Op.SKNN_PREDICT, records, options.records_id, options.progress, rounds=2)
        ns = self.ns(options.namespace)
        lab_shape = [1, int(np.asarray(model_labels).size)]
        if upload_model:
            mid, _ = await asyncio.gather(
                self.upload_sknn_model(job, model, model_labels, options.model_id),
                self.upload_liu(job, rid, rec),
            )
        else:
            if not options.model_id:
                raise ValueError("upload_model=False needs the model_id of an uploaded model")
            mid = options.model_id
            await self.upload_liu(job, rid, rec)

        async def nearest(r1: DistancesResult) -> np.ndarray:
            dist = await job.store.get_ndarray(r1.distances_id)
            with job.owner():
                return core_sknn.nearest_from_distances(self.keys.liu, dist).reshape(-1, 1)

        def params(step: int) -> SknnParams:
            return SknnParams(
                step_index=step,
                model_id=mid,
                records_test_id=rid,
                m=self.keys.liu.m,
                model_labels_shape=lab_shape,
                distance=distance,
                **self.common(options.namespace),
            )

        r1 = await self._secure_1nn(job, params, DistancesResult, keys.distances_index(rid, ns), nearest)
        job.report.extra["exact"] = bool(r1.exact)
        return job.finish()

    async def pqc_sknn(
        self, options: ClassificationOptions, model: np.ndarray, model_labels: np.ndarray,
        records: np.ndarray, *, layout: str, profile: str,
    ) -> JobReport:
        if layout not in ("packed", "rows"):
            raise ValueError(f"layout must be 'packed' or 'rows', got {layout!r}")
        mdl = np.asarray(model, dtype=np.float64)
        rec = np.asarray(records, dtype=np.float64)
        lab = np.asarray(model_labels).reshape(1, -1).astype(np.int64)
        if mdl.ndim != 2 or rec.ndim != 2 or mdl.shape[1] != rec.shape[1] or lab.size != mdl.shape[0]:
            raise ValueError(f"model {mdl.shape}, labels {lab.shape} and records {rec.shape} disagree")
        ns = self.ns(options.namespace)
        mid, rid = self.dataset_id(options.model_id), self.dataset_id(options.records_id)
        n_model, a = mdl.shape
        job = self.job(Op.PQC_SKNN_PREDICT.value, rid, rec.shape[0], 2, options.progress)
        with job.owner():
            ctx = self.keys.ckks(profile)
            if layout == "packed":
                model_blobs, model_shape = columns(ctx, mdl)
                size = ckks.column_block_size(n_model, ckks.slot_count(ctx))
                record_blobs = [v.serialize() for row in rec for v in ckks.encrypt_replicated(ctx, row, size)]
            else:
                model_blobs, model_shape = ckks.serialize(ckks.encrypt_rows(ctx, mdl)), [n_model, a]
                record_blobs = ckks.serialize(ckks.encrypt_rows(ctx, rec))
        await asyncio.gather(
            self.put_ciphertexts(job, keys.encrypted(mid), model_blobs, model_shape),
            self.put_ciphertexts(job, keys.encrypted(rid), record_blobs, [rec.shape[0], a]),
            job.store.put_ndarray(keys.labels(mid), lab, num_chunks=1),
        )
        del model_blobs, record_blobs

        async def nearest(r1: PqcDistancesResult) -> np.ndarray:
            vectors = await self.get_vectors(job, r1.distances_id, profile)
            rows = grid(vectors, int(r1.distances_shape[1]), job.report.op)
            with job.owner():
                if layout == "packed":
                    return pqc_sknn.nearest_from_packed(ctx, rows, n_model).reshape(1, -1)
                return pqc_sknn.nearest_from_pairs(ctx, rows, a).reshape(1, -1)

        def params(step: int) -> PqcSknnParams:
            return PqcSknnParams(
                step_index=step,
                model_id=mid,
                records_test_id=rid,
                layout=layout,
                model_labels_shape=list(lab.shape),
                distance="EUCLIDEAN",
                **self.common(options.namespace),
            )

        await self._secure_1nn(job, params, PqcDistancesResult, keys.distances_index(rid, ns), nearest)
        job.report.extra["layout"] = layout
        return job.finish()

    async def _secure_1nn(
        self,
        job: Job,
        params: Callable[[int], P],
        distances: type[D],
        index_key: str,
        nearest: Callable[[D], Awaitable[np.ndarray]],
    ) -> D:
        """The one round both secure 1-NN protocols share; returns step 1's result."""
        job.prepared()
        with job.round():
            job.emit("step1", 1)
            r1 = await job.call(params(1), distances)
            await job.store.put_ndarray(index_key, await nearest(r1), num_chunks=1)
            job.emit("step2", 2)
            r2 = await job.call(params(2), LabelsResult)
            job.report.predictions = await self.labels(job, r2)
        return r1
