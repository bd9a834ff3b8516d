"""clustering.pqc.kmeans end to end over NATS: the worker learns only labels.

The data owner (this test) column-packs iris, and per round: stores replicated encrypted centroids,
calls step 1, decrypts the distances and stores labels, calls step 2, decrypts the masked sums and
computes the new centroids. Every object the worker reads is recorded and classified.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_iris
from sklearn.metrics import adjusted_rand_score

from core.algorithms import pqc_kmeans
from core.algorithms.kmeans import KMeans
from core.crypto import ckks
from core.pqc_dataowner import run_pqc_kmeans
from schemas import keys
from tests.worker.handlers.pqc_support import (
    PqcWorker,
    close,
    owner_context,
    start_pqc_worker,
    stop_pqc_worker,
)
from worker.keys import KeySource, load_context

OP = "clustering.pqc.kmeans"
SLOTS = 64  # forces 3 blocks for iris's 150 records (last one zero-padded)
READS = frozenset({"get_ndarray", "get_bytes_list", "get_blob", "info", "exists", "list_balls"})
WRITES = frozenset({"put_ndarray", "put_bytes_list", "put_blob", "delete"})


class RecordingStore:
    """Wraps the worker's store and records every call: (method, ball id, result or None)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls: list[tuple[str, str, Any]] = []

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name not in READS | WRITES:
            return attr

        async def recorded(*args: Any, **kwargs: Any) -> Any:
            result = await attr(*args, **kwargs)
            ball = args[0] if args else kwargs.get("ball_id", "")
            self.calls.append((name, ball, result if name in READS else args[1] if len(args) > 1 else None))
            return result

        return recorded


@pytest.fixture(scope="module")
async def recorded(
    nats_url: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[tuple[PqcWorker, RecordingStore]]:
    holder: dict[str, RecordingStore] = {}

    def wrap(store: Any) -> RecordingStore:
        holder["store"] = RecordingStore(store)
        return holder["store"]

    worker = await start_pqc_worker(
        nats_url, tmp_path_factory.mktemp("pqckmeans"), keys_ctx=owner_context(), wrap_store=wrap
    )
    yield worker, holder["store"]
    await stop_pqc_worker(worker)


def _iris() -> np.ndarray:
    x = load_iris().data.astype(np.float64)
    return x[np.random.default_rng(3).permutation(x.shape[0])]


async def _run_over_nats(
    worker: PqcWorker, x: np.ndarray, k: int, root: str, *, max_iterations: int = 300, tol: float = 1e-4
) -> tuple[np.ndarray, np.ndarray, list[np.ndarray], int]:
    """The data owner's loop, stopping exactly like ``core.pqc_dataowner.run_pqc_kmeans``."""
    owner = owner_context()
    n, a = x.shape
    columns = ckks.encrypt_columns(owner, x, SLOTS)
    size = ckks.column_block_size(n, SLOTS)
    await worker.put_ciphertexts(
        keys.encrypted(root), [v for block in columns for v in block], [len(columns), a]
    )
    tol_abs = float(np.mean(np.var(x, axis=0)) * tol)
    centroids, previous = x[:k].copy(), None
    labels = np.zeros(n, dtype=np.int64)
    written: list[np.ndarray] = []
    final_pass = False
    rounds = 0
    for it in range(max_iterations + 1):
        rounds = it + 1
        enc = pqc_kmeans.encrypt_centroids(owner, centroids, size)
        await worker.put_ciphertexts(keys.pqc_kmeans_centroids(root), [v for row in enc for v in row], [k, a])
        r1 = await worker.ok(OP, {"step_index": 1, "plaintext_matrix_id": root, "k": k, "iterations": it})
        assert r1["distances_shape"] == [len(columns), k] and r1["block_size"] == size
        assert r1["n_iterations"] == it + 1
        flat = await worker.get_ciphertexts(owner, r1["encrypted_distances_id"])
        labels = pqc_kmeans.labels_from_distances(
            owner, [flat[b * k : (b + 1) * k] for b in range(len(columns))], n
        )
        if previous is not None and np.array_equal(labels, previous):
            break
        if final_pass or it == max_iterations:
            break
        await worker.store.put_ndarray(keys.pqc_kmeans_labels(root), labels)
        written.append(labels)
        r2 = await worker.ok(OP, {"step_index": 2, "plaintext_matrix_id": root, "k": k, "iterations": it})
        assert r2["sums_shape"] == [k, a]
        sums = await worker.get_ciphertexts(owner, r2["encrypted_sums_id"])
        new, _ = pqc_kmeans.centroids_from_sums(
            owner, [sums[j * a : (j + 1) * a] for j in range(k)], labels, centroids
        )
        final_pass = float(((new - centroids) ** 2).sum()) <= tol_abs
        centroids, previous = new, labels
    return labels, centroids, written, rounds


async def test_iris_labels_equal_plaintext_kmeans_and_worker_reads_only_ciphertexts(
    recorded: tuple[PqcWorker, RecordingStore],
) -> None:
    worker, store = recorded
    x, k, root = _iris(), 3, "iris"
    labels, centroids, written, rounds = await _run_over_nats(worker, x, k, root)

    plain = KMeans(n_clusters=k).fit(x)
    assert np.array_equal(labels, plain.labels_)
    assert adjusted_rand_score(plain.labels_, labels) == 1.0
    assert close(centroids, plain.cluster_centers_, 1e-4)
    inproc = run_pqc_kmeans(x, k, ctx=owner_context(), slots=SLOTS)
    assert np.array_equal(labels, inproc.labels)
    assert rounds == inproc.stats.iterations and rounds >= 4  # several real rounds, not a lucky start
    assert close(centroids, inproc.centroids, 1e-5)

    # --- everything the worker read is a ciphertext of the public context, a label vector or metadata
    public, _ = load_context(KeySource(str(worker.keys_dir)))
    assert not public.is_private()
    dataset, cents, labels_key = (
        keys.encrypted(root),
        keys.pqc_kmeans_centroids(root),
        keys.pqc_kmeans_labels(root),
    )
    seen: dict[str, int] = {}
    label_reads: list[np.ndarray] = []
    for method, ball, value in store.calls:
        if method in WRITES:
            assert method in {"put_bytes_list", "delete"}, f"the worker wrote {method} {ball}"
            continue
        seen[method] = seen.get(method, 0) + 1
        if method == "get_bytes_list":
            assert ball in {dataset, cents}, ball
            vectors = ckks.deserialize(public, value)  # raises unless every item is a CKKS ciphertext
            assert vectors and all(v.size() == ckks.column_block_size(x.shape[0], SLOTS) for v in vectors)
            with pytest.raises(ValueError):
                vectors[0].decrypt()  # the worker's context cannot decrypt
        elif method == "get_ndarray":
            assert ball == labels_key
            assert np.issubdtype(value.dtype, np.integer) and value.shape == (x.shape[0],)
            assert value.min() >= 0 and value.max() < k
            label_reads.append(value)
        elif method in {"info", "exists"}:
            assert ball in {dataset, cents, labels_key} or ball.startswith(root), ball
        else:
            pytest.fail(f"unexpected read {method} {ball}")
    assert seen.get("get_bytes_list", 0) >= 2 * len(written) + 1
    # the only plaintext the worker read is exactly the label vectors the owner stored
    assert len(label_reads) == len(written)
    assert all(np.array_equal(a, b) for a, b in zip(label_reads, written, strict=True))
    # it never touched the plaintext id itself
    assert all(ball != root for _, ball, _ in store.calls)


async def test_bad_commands_are_rejected_before_any_write(recorded: tuple[PqcWorker, RecordingStore]) -> None:
    worker, _ = recorded
    owner = owner_context()
    x = np.arange(24, dtype=float).reshape(8, 3)
    root = "badkm"
    cols = ckks.encrypt_columns(owner, x)
    await worker.put_ciphertexts(keys.encrypted(root), [v for b in cols for v in b], [len(cols), 3])
    enc = pqc_kmeans.encrypt_centroids(owner, x[:2], 8)
    await worker.put_ciphertexts(keys.pqc_kmeans_centroids(root), [v for r in enc for v in r], [2, 3])
    # k disagrees with the stored centroids
    err = await worker.error(OP, {"step_index": 1, "plaintext_matrix_id": root, "k": 3})
    assert err["code"] == 422 and "shape" in err["message"]
    # declared dataset shape disagrees with storage
    err = await worker.error(
        OP, {"step_index": 1, "plaintext_matrix_id": root, "k": 2, "encrypted_matrix_shape": [2, 3]}
    )
    assert err["code"] == 422
    # labels out of range for k
    await worker.store.put_ndarray(keys.pqc_kmeans_labels(root), np.array([0, 1, 2, 0, 1, 2, 0, 1]))
    err = await worker.error(OP, {"step_index": 2, "plaintext_matrix_id": root, "k": 2})
    assert err["code"] == 422 and "labels" in err["message"]
    # a dataset stored without its [blocks, a] shape
    await worker.store.put_bytes_list("noshape", ckks.serialize([v for b in cols for v in b]))
    err = await worker.error(
        OP, {"step_index": 1, "plaintext_matrix_id": root, "k": 2, "encrypted_matrix_id": "noshape"}
    )
    assert err["code"] == 422 and "shape" in err["message"]
    # missing object → 404
    err = await worker.error(OP, {"step_index": 1, "plaintext_matrix_id": "nothere", "k": 2})
    assert err["code"] == 404
    assert not await worker.store.exists(keys.pqc_kmeans_distances(root))
    assert not await worker.store.exists(keys.pqc_kmeans_sums(root))


async def test_namespace_isolates_state_and_step2_matches_plaintext(
    recorded: tuple[PqcWorker, RecordingStore], tmp_path: Path
) -> None:
    worker, _ = recorded
    owner = owner_context()
    rng = np.random.default_rng(5)
    x = rng.normal(size=(10, 2))
    root, ns = "nsdata", "job7"
    cols = ckks.encrypt_columns(owner, x)
    await worker.put_ciphertexts(keys.encrypted(root), [v for b in cols for v in b], [len(cols), 2])
    labels = np.array([0, 1, 1, 0, 2, 2, 1, 0, 0, 1])
    await worker.store.put_ndarray(keys.pqc_kmeans_labels(root, ns), labels)
    r2 = await worker.ok(OP, {"step_index": 2, "plaintext_matrix_id": root, "k": 3, "namespace": ns})
    assert r2["encrypted_sums_id"] == keys.pqc_kmeans_sums(root, ns) == f"{ns}_{root}encryptedsums"
    sums = await worker.get_ciphertexts(owner, r2["encrypted_sums_id"])
    totals = np.array(
        [[ckks.decrypt_vector(owner, sums[j * 2 + z]).sum() for z in range(2)] for j in range(3)]
    )
    expected = np.stack([x[labels == j].sum(axis=0) for j in range(3)])
    assert close(totals, expected, 1e-4)
    assert not await worker.store.exists(keys.pqc_kmeans_sums(root))
