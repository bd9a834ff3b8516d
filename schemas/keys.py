"""Storage key names shared by the worker and the data owner.

Rory derives every key by plain concatenation of a root id and a suffix (``<P>udm``,
``encrypted<P>``...). Keeping those names by default lets the worker read data written by the
original clients. A ``namespace`` isolates one job's *state* (UDM, centroids, shift matrices,
distances, predictions) from another job over the same dataset: state keys become
``<namespace>_<key>``. Inputs shared by every job (the dataset, the model) are never namespaced.

The join is injective because a namespace cannot contain the separator ``_`` (only letters, digits
and single ``-``): the namespace is everything before the first ``_``. Were ``_`` allowed, namespace
``a`` with key ``b_cudm`` and namespace ``a_b`` with key ``cudm`` would name one object. Ids keep
``_`` (Rory's names, and the un-namespaced keys, are unchanged).
"""

from __future__ import annotations

import re

# Fixed points of MictlanX name sanitisation: alphanumeric runs joined by single "-" or "_".
KEY_PATTERN = r"^[A-Za-z0-9]+(?:[-_][A-Za-z0-9]+)*$"
#: Joins a namespace and a key; the namespace may not contain it (see the module docstring).
NAMESPACE_SEPARATOR = "_"
#: A namespace: runs of letters and digits joined by single "-" (never the separator).
NAMESPACE_PATTERN = r"^[A-Za-z0-9]+(?:-[A-Za-z0-9]+)*$"
MAX_KEY_LENGTH = 200
MAX_NAMESPACE_LENGTH = 64
_KEY_RE = re.compile(KEY_PATTERN)
_NAMESPACE_RE = re.compile(NAMESPACE_PATTERN)


def check_key(key: str) -> str:
    """Reject keys that storage would rewrite or that could escape a directory."""
    if len(key) > MAX_KEY_LENGTH or not _KEY_RE.fullmatch(key):
        raise ValueError(
            f"invalid storage key {key!r}: letters and digits, joined by single '-' or '_' (max 200)"
        )
    return key


def check_namespace(namespace: str) -> str:
    """Reject namespaces that would make ``<namespace>_<key>`` ambiguous (or that storage rewrites)."""
    if len(namespace) > MAX_NAMESPACE_LENGTH or not _NAMESPACE_RE.fullmatch(namespace):
        raise ValueError(
            f"invalid namespace {namespace!r}: letters and digits, joined by single '-' "
            f"('{NAMESPACE_SEPARATOR}' separates the namespace from the key; max {MAX_NAMESPACE_LENGTH})"
        )
    return namespace


def state(key: str, namespace: str | None) -> str:
    """A per-job key: unchanged without a namespace (Rory's names), prefixed with one."""
    if not namespace:
        return check_key(key)
    return check_key(f"{check_namespace(namespace)}{NAMESPACE_SEPARATOR}{key}")


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


def udm_shift(root: str, namespace: str | None = None) -> str:
    """The k x a running sum of the shifts: the current UDM is ``udm`` plus this (SKMeans)."""
    return state(f"{root}udmshift", namespace)


def encrypted_udm_shift(root: str, namespace: str | None = None) -> str:
    """As :func:`udm_shift`, for the FDH-OPE UDM of DBSKMeans."""
    return state(f"{root}encryptedudmshift", namespace)


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


def pplr_gradients(weights_id: str, namespace: str | None = None) -> str:
    """Where ``ml.pplr.train`` (packed layout) leaves the encrypted per-slot gradients of one epoch."""
    return state(f"{weights_id}gradients", namespace)


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
