"""PQC k-means: Euclidean k-means over column-packed CKKS data where the worker learns only the labels.

Why two steps per round: step 1 computes encrypted distances, which only the data owner can decrypt
and turn into labels; step 2 sums each cluster's records under those labels (``PqcKMeansParams`` in
``schemas/clustering.py`` describes the whole round).
"""

from __future__ import annotations

import time

from schemas import keys
from schemas.operations import (
    Op,
    PqcKMeansDistancesResult,
    PqcKMeansParams,
    PqcKMeansSumsResult,
)
from worker.errors import ValidationFailed
from worker.handlers import pqc_jobs
from worker.handlers.common import (
    check_integral,
    check_numeric,
    put_all,
    result_chunks,
)
from worker.handlers.pqc_common import (
    check_grid,
    ciphertext_info,
    ciphertext_write,
    elapsed,
    fan_out,
    lists,
    public_material,
    spans,
    together,
)
from worker.keys import compute_with_keys
from worker.runtime.context import JobContext

__all__ = [
    "pqc_kmeans",
]


async def _kmeans_dataset(ctx: JobContext, p: PqcKMeansParams) -> tuple[str, tuple[int, int]]:
    key = p.encrypted_matrix_id or keys.encrypted(p.plaintext_matrix_id)
    shape = ciphertext_info(await ctx.store.info(key), ndim=2, what=" (column-packed dataset [blocks, a])")
    assert shape is not None
    if p.encrypted_matrix_shape is not None and list(p.encrypted_matrix_shape) != list(shape):
        raise ValidationFailed(
            f"{key}: declared shape {list(p.encrypted_matrix_shape)} but storage holds {list(shape)}"
        )
    return key, (shape[0], shape[1])


async def _kmeans_distances(ctx: JobContext, p: PqcKMeansParams) -> PqcKMeansDistancesResult:
    started = time.perf_counter()
    material = await public_material(ctx, Op.PQC_KMEANS.value, relin=True)
    root, ns = p.plaintext_matrix_id, p.namespace
    data_key, (blocks, a) = await _kmeans_dataset(ctx, p)
    cent_key = p.encrypted_centroids_id or keys.pqc_kmeans_centroids(root, ns)
    cent_shape = ciphertext_info(await ctx.store.info(cent_key), ndim=2, what=" (centroids [k, a])")
    assert cent_shape is not None
    if tuple(cent_shape) != (p.k, a):
        raise ValidationFailed(f"{cent_key}: shape {list(cent_shape)}, expected [k={p.k}, a={a}]")
    columns, centroids = await lists(ctx, data_key, cent_key)
    check_grid(data_key, columns, (blocks, a))
    check_grid(cent_key, centroids, (p.k, a))
    ranges = spans(blocks, p.k * a, ctx.settings.worker_capacity)
    parts = await fan_out(ctx, material, pqc_jobs.kmeans_distances, ranges,
                           lambda lo, hi: (columns[lo * a : hi * a], a, centroids))
    values, block_size = [v for part, _ in parts for v in part], parts[0][1]
    out_key = keys.pqc_kmeans_distances(root, ns)
    await put_all(ctx, [ciphertext_write(out_key, values, result_chunks(ctx, p), [blocks, p.k])])
    return PqcKMeansDistancesResult(
        encrypted_distances_id=out_key,
        distances_shape=[blocks, p.k],
        block_size=block_size,
        n_iterations=p.iterations + 1,
        service_time=elapsed(started),
    )


async def _kmeans_sums(ctx: JobContext, p: PqcKMeansParams) -> PqcKMeansSumsResult:
    started = time.perf_counter()
    material = await public_material(ctx, Op.PQC_KMEANS.value)
    root, ns = p.plaintext_matrix_id, p.namespace
    data_key, (blocks, a) = await _kmeans_dataset(ctx, p)
    labels_key = p.labels_id or keys.pqc_kmeans_labels(root, ns)
    labels_info = await ctx.store.info(labels_key)
    check_numeric(labels_info, labels_key, ndim=(1, 2))
    columns, raw_labels = await together(
        ctx.store.get_bytes_list(data_key), ctx.store.get_ndarray(labels_key)
    )
    check_grid(data_key, columns, (blocks, a))
    labels = check_integral(raw_labels, labels_key).reshape(-1)
    if labels.size == 0 or labels.min() < 0 or labels.max() >= p.k:
        raise ValidationFailed(f"{labels_key}: labels must lie in 0..{p.k - 1} (k={p.k})")
    values = await compute_with_keys(ctx, material, pqc_jobs.kmeans_sums, columns, a, labels, p.k)
    out_key = keys.pqc_kmeans_sums(root, ns)
    await put_all(ctx, [ciphertext_write(out_key, values, result_chunks(ctx, p), [p.k, a])])
    return PqcKMeansSumsResult(
        encrypted_sums_id=out_key, sums_shape=[p.k, a], n_iterations=p.iterations + 1,
        service_time=elapsed(started),
    )


async def pqc_kmeans(ctx: JobContext, p: PqcKMeansParams) -> PqcKMeansDistancesResult | PqcKMeansSumsResult:
    """PQC k-means: step 1 encrypted distances, step 2 encrypted masked sums (the worker learns labels)."""
    if p.step_index == 1:
        return await _kmeans_distances(ctx, p)
    return await _kmeans_sums(ctx, p)
