"""PQC k-means: Euclidean k-means over column-packed CKKS data where the worker learns only labels.

First-k initialisation and scikit-learn's Lloyd stopping rule (labels unchanged, or centre shift
sum ||dC||^2 <= tolerance * mean(var(X)) followed by one more assignment), as
:func:`core.pqc_dataowner.run_pqc_kmeans`. Each round is two commands; the owner decrypts the
distances (argmin -> labels) and the masked sums (-> centroids).
"""

from __future__ import annotations

import numpy as np
import tenseal as ts

from core.algorithms import pqc_kmeans
from core.crypto import ckks
from dataowner.drivers.base import Driver, columns, grid
from dataowner.drivers.options import KMeansOptions
from dataowner.drivers.secure_kmeans import clustering_input
from dataowner.job import JobReport
from schemas import keys
from schemas.operations import Op, PqcKMeansDistancesResult, PqcKMeansParams, PqcKMeansSumsResult

__all__ = ["PqcKMeansDriver"]


class PqcKMeansDriver(Driver):
    async def run(self, options: KMeansOptions, data: np.ndarray, k: int, *, profile: str) -> JobReport:
        x = clustering_input(data, k)
        n, a = x.shape
        max_iterations = options.max_iterations
        ns = self.ns(options.namespace)
        ds = self.dataset_id(options.dataset_id)
        op = Op.PQC_KMEANS.value
        job = self.job(op, ds, n, max_iterations, options.progress)
        with job.owner():
            ctx = self.keys.ckks(profile)
            blobs, shape = columns(ctx, x)
            size = ckks.column_block_size(n, ckks.slot_count(ctx))
        await self.put_ciphertexts(job, keys.encrypted(ds), blobs, shape)
        del blobs
        job.prepared()

        with job.owner():  # the stopping rule's scale: a pass over the data
            tol_abs = float(np.mean(np.var(x, axis=0)) * options.tolerance)
        centroids = x[:k].copy()
        previous: np.ndarray | None = None
        labels = np.zeros(n, dtype=np.int64)
        converged = final_pass = False
        common = self.common(options.namespace)
        cent_key, labels_key = keys.pqc_kmeans_centroids(ds, ns), keys.pqc_kmeans_labels(ds, ns)

        def step(index: int, it: int) -> PqcKMeansParams:
            return PqcKMeansParams(plaintext_matrix_id=ds, k=k, step_index=index, iterations=it - 1, **common)

        async def rows(key: str, cols: int) -> list[list[ts.CKKSVector]]:
            """What a step left (distances, or masked sums), downloaded as rows of ``cols`` vectors."""
            return grid(await self.get_vectors(job, key, profile), cols, op)

        it = 0
        for it in range(1, max_iterations + 2):
            with job.round():
                with job.owner():
                    cent = [
                        v.serialize()
                        for row in pqc_kmeans.encrypt_centroids(ctx, centroids, size)
                        for v in row
                    ]
                await job.store.put_bytes_list(cent_key, cent, num_chunks=1, shape=[k, a])
                job.emit("step1", it)
                r1 = await job.call(step(1, it), PqcKMeansDistancesResult)
                distances = await rows(r1.encrypted_distances_id, k)
                with job.owner():
                    labels = pqc_kmeans.labels_from_distances(ctx, distances, n)
                if previous is not None and np.array_equal(labels, previous):
                    converged = True
                if converged or final_pass or it == max_iterations + 1:
                    converged = converged or final_pass
                    break
                await job.store.put_ndarray(labels_key, labels, num_chunks=1)
                job.emit("step2", it)
                r2 = await job.call(step(2, it), PqcKMeansSumsResult)
                sums = await rows(r2.encrypted_sums_id, a)
                with job.owner():
                    new, _ = pqc_kmeans.centroids_from_sums(ctx, sums, labels, centroids)
                    moved = float(((new - centroids) ** 2).sum())
                job.report.shifts.append(moved)
                final_pass = moved <= tol_abs
                centroids, previous = new, labels
        job.report.labels = labels
        job.report.iterations = it
        job.report.converged = converged
        job.report.extra["centroids"] = centroids
        return job.finish()
