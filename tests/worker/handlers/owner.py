"""Test-side data owner: uploads inputs with the core's data-owner helpers, drives rounds over NATS.

This stands in for the real data-owner client: it writes exactly the objects and keys Rory's client
writes (``schemas.keys``) and sends the commands a client sends, then checks the worker's answers.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from core import dataowner
from core.algorithms import dbskmeans as core_dbskmeans
from core.algorithms import skmeans as core_skmeans
from core.crypto import fdhope, liu
from schemas import keys, subjects
from schemas.operations import ClusteringStatus, Op
from tests.ops import command, request

COMPLETED, START, WIP = (int(s) for s in ClusteringStatus)


def blobs(n: int, a: int, k: int, seed: int, spread: float = 1.5) -> np.ndarray:
    """Small clustered dataset with rounded values (exactly representable arithmetic is not needed)."""
    rng = np.random.default_rng(seed)
    centres = rng.uniform(-10, 10, size=(k, a))
    labels = rng.integers(0, k, size=n)
    return np.round(centres[labels] + rng.normal(0, spread, size=(n, a)), 3)


@dataclass
class Rig:
    nc: Any
    settings: Any
    store: Any
    worker: Any = None
    replies: list[dict[str, Any]] = field(default_factory=list)

    def subject(self, op: str) -> str:
        return subjects.node_cmd(self.settings.rory_subject_prefix, self.settings.node_id, op)

    async def call(
        self, op: str, params: dict[str, Any], *, timeout: float = 60.0, **fields: Any
    ) -> dict[str, Any]:
        body = command(str(op), {k: v for k, v in params.items() if v is not None}, **fields)
        reply, _ = await request(self.nc, self.subject(str(op)), body, timeout=timeout)
        self.replies.append(reply)
        return reply

    async def ok(self, op: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        reply = await self.call(op, params, **fields)
        assert reply["ok"], reply.get("error")
        return reply["result"]

    async def error(self, op: str, params: dict[str, Any], **fields: Any) -> dict[str, Any]:
        reply = await self.call(op, params, **fields)
        assert not reply["ok"], reply.get("result")
        return reply["error"]


async def snapshot(store: Any) -> dict[str, str]:
    """Every ball and a digest of its content, to prove a failed command changed nothing."""
    out: dict[str, str] = {}
    for ball in await store.list_balls():
        info = await store.info(ball)
        digest = hashlib.sha256()
        if info.kind == "bytes_list":
            for item in await store.get_bytes_list(ball):
                digest.update(item)
        else:
            array = await store.get_ndarray(ball)
            digest.update(f"{array.dtype}{array.shape}".encode())
            digest.update(array.tobytes())
        out[ball] = f"{info.kind}:{info.num_chunks}:{digest.hexdigest()}"
    return out


async def labels_of(store: Any, result: dict[str, Any]) -> list[int]:
    """The label vector of a result, inline or stored."""
    if result.get("label_vector") is not None:
        return list(result["label_vector"])
    return [int(v) for v in (await store.get_ndarray(result["label_vector_id"])).reshape(-1)]


# ------------------------------------------------------------------ secure k-means
@dataclass
class SecureKMeansJob:
    """A data owner's SKMeans/DBSKMeans job: its secret keys and what it uploaded."""

    root: str
    k: int
    key: liu.LiuKey
    data: np.ndarray
    encrypted: np.ndarray
    udm: np.ndarray
    namespace: str | None = None
    fkey: fdhope.FdhopeKey | None = None  # set for DBSKMeans
    rng: np.random.Generator = field(default_factory=lambda: np.random.default_rng(7))

    @property
    def op(self) -> str:
        return Op.DBSKMEANS.value if self.fkey is not None else Op.SKMEANS.value

    @property
    def udm_key(self) -> str:
        if self.fkey is not None:
            return keys.encrypted_udm(self.root, self.namespace)
        return keys.udm(self.root, self.namespace)

    def base(self) -> dict[str, Any]:
        n, a, m = self.encrypted.shape
        return {
            "plaintext_matrix_id": self.root,
            "k": self.k,
            "m": m,
            "namespace": self.namespace,
            "encrypted_matrix_shape": [n, a, m],
            "encrypted_matrix_dtype": "float64",
        }


async def upload_secure_kmeans(
    store: Any,
    data: np.ndarray,
    k: int,
    root: str,
    *,
    namespace: str | None = None,
    double_blind: bool = False,
    compact: bool = False,
    seed: int = 1,
    chunks: int = 3,
    upload_dataset: bool = True,
) -> SecureKMeansJob:
    rng = np.random.default_rng(seed)
    key = liu.generate_key(rng=rng)
    fkey = None
    if double_blind:
        encrypted, udm, fkey = dataowner.prepare_dbskmeans(data, k, key, compact=compact, rng=rng)
    else:
        encrypted, udm = dataowner.prepare_skmeans(data, k, key, compact=compact, rng=rng)
    job = SecureKMeansJob(root, k, key, data, encrypted, udm, namespace, fkey, rng)
    if upload_dataset:
        await store.put_ndarray(keys.encrypted(root), encrypted, num_chunks=chunks)
    await store.put_ndarray(job.udm_key, udm, num_chunks=chunks)
    return job


@dataclass
class RoundRecord:
    labels: list[int]
    shift: np.ndarray


async def secure_kmeans_round(
    rig: Rig,
    job: SecureKMeansJob,
    status: int,
    iterations: int,
    *,
    tolerance: float = 1e-6,
    v1_convergence: bool = False,
) -> tuple[dict[str, Any], bool, np.ndarray]:
    """One round: step 1, decrypt the shift, step 2 unless converged. Returns (step-1 result, done, S)."""
    r1 = await rig.ok(
        job.op, {**job.base(), "step_index": 1, "clustering_status": status, "iterations": iterations}
    )
    assert r1["encrypted_shift_matrix_id"] == keys.encrypted_shift_matrix(job.root, job.namespace)
    enc_shift = await rig.store.get_ndarray(r1["encrypted_shift_matrix_id"])
    converged, plain = core_skmeans.check_shift(job.key, enc_shift, tolerance)
    if converged and not v1_convergence:
        return r1, True, plain
    sent = plain if job.fkey is None else dataowner.encrypt_shift_ope(job.fkey, plain, job.rng)
    await rig.store.put_ndarray(keys.shift_matrix(job.root, job.namespace), sent)
    params = {**job.base(), "step_index": 2}
    if not v1_convergence:
        params["is_zero"] = False
    r2 = await rig.ok(job.op, params)
    if v1_convergence:
        return r1, r2["clustering_status"] == COMPLETED, plain
    assert r2["clustering_status"] == WIP
    n, a, _ = job.encrypted.shape
    shape_key = "encrypted_udm_shape" if job.fkey is not None else "udm_shape"
    assert r2[shape_key] == [n, job.k, a]
    return r1, False, plain


async def run_secure_kmeans(
    rig: Rig,
    job: SecureKMeansJob,
    *,
    max_iter: int = 10,
    tolerance: float = 1e-6,
    v1_convergence: bool = False,
) -> tuple[list[int], int, list[np.ndarray]]:
    """Drive a whole job over NATS: returns (final labels, iterations, decrypted shifts)."""
    status, iterations, shifts = START, 0, []
    labels: list[int] = []
    for _ in range(max_iter):
        r1, done, plain = await secure_kmeans_round(
            rig, job, status, iterations, tolerance=tolerance, v1_convergence=v1_convergence
        )
        labels, iterations = await labels_of(rig.store, r1), r1["n_iterations"]
        shifts.append(plain)
        if done:
            break
        status = WIP
    return labels, iterations, shifts


def mirror_secure_kmeans(job: SecureKMeansJob, sent_shifts: list[np.ndarray]) -> list[np.ndarray]:
    """In-process replay of the core phases with the same inputs: the labels of every round."""
    udm, previous, out = job.udm, None, []
    for i, sent in enumerate([None, *sent_shifts]):
        if sent is not None:
            udm = core_skmeans.plaintext_phase(udm, sent)
        phase = core_dbskmeans.encrypted_phase if job.fkey is not None else core_skmeans.encrypted_phase
        result = phase(job.encrypted, udm, job.k, i == 0, previous)
        previous = result.centroids
        out.append(result.labels)
    return out
