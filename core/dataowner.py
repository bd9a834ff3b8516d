"""Data-owner side of the Liu / FDH-OPE algorithms: the owner's per-party steps.

The data owner holds the secret keys: it encrypts the dataset (Liu), builds the UDM or distance matrix
(and FDH-OPE-encrypts it for the "double-blind" variants), decrypts the per-iteration shift and tests
convergence, and decrypts SKNN distances. The secure k-means rounds (SKMeans, DBSKMeans) are driven
once, by ``dataowner/drivers/secure_kmeans.py``, over a worker port (``dataowner/inprocess_port.py``
runs the worker in this process). The single-command jobs `run_sknn` and `run_dbsnnc` chain the
steps with the worker phases of `core.algorithms` in one process. CKKS lives in `core.pqc_dataowner`.

What leaves the data owner (i.e. what the worker sees) is listed in each algorithm module's docstring.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from core.algorithms import dbskmeans, nnc, sknn
from core.algorithms.knn import pairwise_distances
from core.algorithms.skmeans import check_shift, decrypt_shift
from core.algorithms.udm import build_udm
from core.checks import data_matrix
from core.crypto import fdhope, liu

__all__ = [
    "DbsnncPreparation",
    "build_udm",
    "check_shift",
    "decrypt_distances",
    "decrypt_shift",
    "distance_matrix",
    "encrypt_dataset",
    "encrypt_distance_matrix",
    "encrypt_shift_ope",
    "prepare_dbskmeans",
    "prepare_dbsnnc",
    "prepare_skmeans",
    "run_dbsnnc",
    "run_sknn",
    "threshold",
]


def encrypt_dataset(key: liu.LiuKey, data: np.ndarray, rng: np.random.Generator | None = None) -> np.ndarray:
    """Liu-encrypt an n x a dataset -> n x a x m."""
    return liu.encrypt(key, data_matrix(data), rng)


def distance_matrix(data: np.ndarray) -> np.ndarray:
    """Manhattan distance matrix DM[x, y] = sum_z |D[x, z] - D[y, z]| (n x n, blocked)."""
    d = data_matrix(data)
    return pairwise_distances(d, d, "manhattan")


def threshold(dm: np.ndarray, value: float = -1) -> float:
    """NNC threshold: `value`, or the smallest positive plaintext distance when `value` is -1."""
    return nnc.resolve_threshold(dm, value)


def encrypt_distance_matrix(
    key: fdhope.FdhopeKey, dm: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """FDH-OPE-encrypt a distance matrix element-wise (DBSNNC reads only its lower triangle)."""
    return fdhope.encrypt(key, dm, rng)


def encrypt_shift_ope(
    key: fdhope.FdhopeKey, shift: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """Re-encrypt the decrypted k x a shift with the UDM's FDH-OPE key (DBSKMeans)."""
    return dbskmeans.encrypt_shift(key, shift, rng)


def decrypt_distances(key: liu.LiuKey, distances: sknn.EncryptedDistances | np.ndarray) -> np.ndarray:
    """Decrypt an SKNN distance matrix (n_rec x n_model x m or m^2) to n_rec x n_model."""
    values = distances.values if isinstance(distances, sknn.EncryptedDistances) else np.asarray(distances)
    return liu.decrypt(key, values)


def prepare_skmeans(
    data: np.ndarray, k: int, key: liu.LiuKey, compact: bool = True, rng: np.random.Generator | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """(encrypted data n x a x m, plaintext UDM n x k x a if `compact` else n x n x a)."""
    d = data_matrix(data)
    return liu.encrypt(key, d, rng), build_udm(d, k if compact else None)


def prepare_dbskmeans(
    data: np.ndarray,
    k: int,
    key: liu.LiuKey,
    compact: bool = True,
    sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
    rng: np.random.Generator | None = None,
    fdhope_key: fdhope.FdhopeKey | None = None,
) -> tuple[np.ndarray, np.ndarray, fdhope.FdhopeKey]:
    """(encrypted data, FDH-OPE UDM, FDH-OPE key derived from the plaintext UDM unless given)."""
    d = data_matrix(data)
    udm = build_udm(d, k if compact else None)
    fkey = fdhope_key if fdhope_key is not None else fdhope.generate_key(udm, sensitivity, rng)
    return liu.encrypt(key, d, rng), dbskmeans.encrypt_udm(fkey, udm, rng), fkey


@dataclass(frozen=True)
class DbsnncPreparation:
    encrypted_dm: np.ndarray
    encrypted_threshold: float
    threshold: float
    fdhope_key: fdhope.FdhopeKey
    encrypted_data: np.ndarray | None = None


def prepare_dbsnnc(
    data: np.ndarray,
    key: liu.LiuKey | None = None,
    threshold_value: float = -1,
    sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
    rng: np.random.Generator | None = None,
) -> DbsnncPreparation:
    """DM -> FDH-OPE key from the DM -> threshold on the PLAINTEXT DM -> OPE(DM), OPE(threshold).

    The Liu-encrypted dataset (uploaded by the original but unused by the algorithm) is included only
    when a Liu key is given. Fixes the original's default threshold computed on ciphertexts (ref. 4.2).
    """
    d = data_matrix(data)
    dm = distance_matrix(d)
    fkey = fdhope.generate_key(dm, sensitivity, rng)
    theta = threshold(dm, threshold_value)
    return DbsnncPreparation(
        encrypted_dm=fdhope.encrypt(fkey, dm, rng),
        encrypted_threshold=fdhope.encrypt_threshold(fkey, theta),
        threshold=theta,
        fdhope_key=fkey,
        encrypted_data=None if key is None else liu.encrypt(key, d, rng),
    )


def run_sknn(
    model: np.ndarray,
    model_labels: np.ndarray,
    records: np.ndarray,
    key: liu.LiuKey,
    metric: str = "euclidean",
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Whole SKNN job in process: encrypt model and records, worker distances, owner argmin, labels."""
    enc_model = liu.encrypt(key, data_matrix(model), rng)
    enc_records = liu.encrypt(key, data_matrix(records), rng)
    dist = sknn.encrypted_distances(enc_records, enc_model, metric)
    return sknn.labels_from_indices(sknn.nearest_from_distances(key, dist), model_labels)


def run_dbsnnc(
    data: np.ndarray,
    threshold_value: float = -1,
    sensitivity: float = fdhope.DEFAULT_SENSITIVITY,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Whole DBSNNC job in process: labels of NNC run on the FDH-OPE-encrypted DM."""
    prep = prepare_dbsnnc(data, None, threshold_value, sensitivity, rng)
    return nnc.dbsnnc(prep.encrypted_dm, prep.encrypted_threshold)
