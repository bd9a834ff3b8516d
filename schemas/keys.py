"""Storage key names shared by the worker and the data owner.

Rory derives every key by plain concatenation of a root id and a suffix (``<P>udm``,
``encrypted<P>``...). Keeping those names by default lets the worker read data written by the
original clients. A ``namespace`` isolates one job's *state* (UDM, centroids, shift matrices,
distances, predictions) from another job over the same dataset: state keys become
``<namespace>_<key>``. Inputs shared by every job (the dataset, the model) are never namespaced.
"""

from __future__ import annotations

import re

# Fixed points of MictlanX name sanitisation: alphanumeric runs joined by single "-" or "_".
NAMESPACE_PATTERN = r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$"
KEY_PATTERN = r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$"
MAX_KEY_LENGTH = 200
MAX_NAMESPACE_LENGTH = 64
_KEY_RE = re.compile(KEY_PATTERN)


def check_key(key: str) -> str:
    """Reject keys that storage would rewrite or that could escape a directory."""
    if len(key) > MAX_KEY_LENGTH or not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid storage key {key!r}: letters and digits, joined by single '-' or '_' (max 200)"
        )
    return key


def state(key: str, namespace: str | None) -> str:
    """A per-job key: unchanged without a namespace (Rory's names), prefixed with one."""
    return check_key(f"{namespace}_{key}" if namespace else key)


# --- dataset inputs (never namespaced) ---
def encrypted(root: str) -> str:
    return check_key(f"encrypted{root}")


def labels(model_id: str) -> str:
    return check_key(f"{model_id}labels")


# --- clustering state ---
def udm(root: str, namespace: str | None = None) -> str:
    return state(f"{root}udm", namespace)


def encrypted_udm(root: str, namespace: str | None = None) -> str:
    return state(f"{root}encryptedudm", namespace)


def encrypted_shift_matrix(root: str, namespace: str | None = None) -> str:
    return state(f"{root}encryptedshiftmatrix", namespace)


def shift_matrix(root: str, namespace: str | None = None) -> str:
    return state(f"{root}shiftmatrix", namespace)


def shift_matrix_ope(root: str, namespace: str | None = None) -> str:
    return state(f"{root}shiftmatrixope", namespace)


def centroids_previous(root: str, namespace: str | None = None) -> str:
    return state(f"{root}centi", namespace)


def centroids_current(root: str, namespace: str | None = None) -> str:
    return state(f"{root}centj", namespace)


def init_shift_matrix(root: str, namespace: str | None = None) -> str:
    return state(f"{root}initsm", namespace)


def distance_matrix(root: str) -> str:
    return check_key(f"{root}dm")


def encrypted_distance_matrix(root: str) -> str:
    return check_key(f"{root}encrypteddm")


def label_vector(root: str, namespace: str | None = None) -> str:
    """Where a label vector too large for a message is stored."""
    return state(f"{root}labelvector", namespace)


# --- classification state ---
def distances(records_id: str, namespace: str | None = None) -> str:
    return state(f"distances{records_id}", namespace)


def distances_index(records_id: str, namespace: str | None = None) -> str:
    return state(f"distancesindex{records_id}", namespace)


# --- machine learning ---
def predictions(test_id: str, namespace: str | None = None) -> str:
    return state(f"{test_id}predictions", namespace)


def encrypted_predictions(test_id: str, namespace: str | None = None) -> str:
    return state(f"{test_id}encryptedpredictions", namespace)


def staged(key: str) -> str:
    """Where a step stages the new value of an object it will overwrite (PPLR weights and bias)."""
    return check_key(f"{key}staged")


# --- CKKS k-means where the worker learns only labels ---
def pqc_kmeans_distances(root: str, namespace: str | None = None) -> str:
    return state(f"{root}encrypteddistances", namespace)


def pqc_kmeans_sums(root: str, namespace: str | None = None) -> str:
    return state(f"{root}encryptedsums", namespace)


def pqc_kmeans_labels(root: str, namespace: str | None = None) -> str:
    return state(f"{root}labels", namespace)


def pqc_kmeans_centroids(root: str, namespace: str | None = None) -> str:
    return state(f"{root}encryptedcentroids", namespace)
