"""The complete field set of the original Rory client's request for each operation.

The V1 header names in snake_case, as the V2 worker spelt them (docs/original-rory.md, Requests),
with the values a Manager ported from that client sends for a small dataset: ``N`` records of
``A`` attributes, Liu ciphertexts of ``M`` components, ``K`` clusters. The storage keys follow
Rory's naming (schemas/keys.py) for the roots below, so
tests/worker/handlers/test_legacy_fields.py can upload matching objects and run the commands.
``clustering.pqc.kmeans`` has no original; its set is every field the operation has.
"""

from __future__ import annotations

from typing import Any

from schemas.operations import Op

N, A, M, K = 12, 3, 3, 2
ROOT = "m"  # plaintext_matrix_id <P>
MODEL, RECORDS = "model", "records"

_SECURE_KMEANS: dict[str, Any] = {
    "step_index": 1,
    "clustering_status": 1,
    "plaintext_matrix_id": ROOT,
    "encrypted_matrix_id": f"encrypted{ROOT}",
    "encrypted_matrix_shape": [N, A, M],
    "encrypted_matrix_dtype": "float64",
    "k": K,
    "m": M,
    "num_chunks": 2,
    "iterations": 0,
    "experiment_id": "exp-1",
    "shift_matrix_id": f"{ROOT}shiftmatrix",
    "is_zero": False,
    # Sent by the client, ignored by its worker (reference section 4.3).
    "request_id": "6f1c2d3e-0000-4000-8000-000000000001",
    "encrypted_udm_dtype": "float64",
    "experiment_iteration": 0,
    "max_iterations": 10,
}
_DOUBLE_BLIND: dict[str, Any] = {
    "encrypted_udm_shape": [N, N, A],  # the owner uploads (r, r, a) first (reference section 4.4)
    "encrypted_udm_dtype": "float64",
    "shift_matrix_ope_id": f"{ROOT}shiftmatrixope",
    "start_time": 1_700_000_000.25,
}
_PQC_SKMEANS = {name: value for name, value in _SECURE_KMEANS.items() if name != "m"}
_PQC_SKMEANS["encrypted_matrix_shape"] = [N, A]
_SKNN: dict[str, Any] = {
    "step_index": 1,
    "model_id": MODEL,
    "records_test_id": RECORDS,
    "encrypted_model_shape": [N, A, M],
    "encrypted_model_dtype": "float64",
    "encrypted_records_shape": [4, A, M],
    "encrypted_records_dtype": "float64",
    "model_labels_shape": [1, N],
    "num_chunks": 2,
    "experiment_id": "exp-1",
    "min_distances_index_id": f"distancesindex{RECORDS}",
}

#: op -> the original client's complete request (V2 snake_case spelling).
ORIGINAL_REQUESTS: dict[Op, dict[str, Any]] = {
    Op.KMEANS: {"plaintext_matrix_id": ROOT, "k": K, "experiment_id": "exp-1"},
    Op.SKMEANS: dict(_SECURE_KMEANS),
    Op.DBSKMEANS: {**_SECURE_KMEANS, **_DOUBLE_BLIND},
    Op.NNC: {
        "plaintext_matrix_id": ROOT,
        "threshold": 2.5,
        "plaintext_matrix_shape": [N, A],
        "plaintext_matrix_dtype": "float64",
        "dm_shape": [N, N],
        "dm_dtype": "float64",
        "num_chunks": 2,
        "experiment_id": "exp-1",
    },
    Op.DBSNNC: {
        "plaintext_matrix_id": ROOT,
        "encrypted_matrix_id": f"encrypted{ROOT}",
        "encrypted_dm_id": f"{ROOT}encrypteddm",
        "encrypted_threshold": 2.5,
        "encrypted_matrix_shape": [N, A, M],
        "encrypted_matrix_dtype": "float64",
        "encrypted_dm_shape": [N, N],
        "encrypted_dm_dtype": "float64",
        "num_chunks": 2,
        "m": M,
        "experiment_id": "exp-1",
    },
    Op.PQC_SKMEANS: dict(_PQC_SKMEANS),
    Op.PQC_DBSKMEANS: {**_PQC_SKMEANS, **_DOUBLE_BLIND},
    Op.PQC_KMEANS: {
        "step_index": 1,
        "plaintext_matrix_id": ROOT,
        "encrypted_matrix_id": f"encrypted{ROOT}",
        "encrypted_matrix_shape": [1, A],
        "encrypted_centroids_id": f"{ROOT}encryptedcentroids",
        "labels_id": f"{ROOT}labels",
        "k": K,
        "iterations": 0,
        "num_chunks": 2,
        "namespace": "job-1",
        "experiment_id": "exp-1",
    },
    Op.KNN_PREDICT: {
        "model_id": MODEL,
        "records_test_id": RECORDS,
        "model_labels_shape": [1, N],
        "experiment_id": "exp-1",
    },
    Op.SKNN_PREDICT: dict(_SKNN),
    Op.PQC_SKNN_PREDICT: {**_SKNN, "encrypted_model_shape": [N, A], "encrypted_records_shape": [4, A]},
    Op.LR_TRAIN: {
        "plaintext_matrix_train_id": "train_x",
        "plaintext_label_vector_train_id": "train_y",
        "weights_id": "train_xweights",
        "bias_id": "train_xbias",
        "epochs": 2,
        "learning_rate": 0.01,
        "experiment_id": "exp-1",
        "num_chunks": 1,
    },
    Op.LR_PREDICT: {
        "plaintext_matrix_test_id": "test_x",
        "plaintext_matrix_train_id": "train_x",
        "weights_id": "train_xweights",
        "bias_id": "train_xbias",
        "experiment_id": "exp-1",
    },
    Op.PPLR_TRAIN: {
        "learning_rate": 0.01,
        "encrypted_matrix_train_id": "encryptedtrain_x",
        "encrypted_label_vector_train_id": "encryptedtrain_y",
        "encrypted_weights_id": "encryptedweights",
        "encrypted_bias_id": "encryptedbias",
        "scale": 40,
        "n_features": A,
        "n_samples": N,
        "num_chunks": 1,
        "epochs": 1,
        "clustering_status": 1,
        "experiment_id": "exp-1",
    },
    Op.PPLR_PREDICT: {
        "encrypted_matrix_test_id": "encryptedtest_x",
        "encrypted_weights_id": "encryptedweights",
        "encrypted_bias_id": "encryptedbias",
        "scale": 40,
        "n_features": A,
        "num_chunks": 1,
        "experiment_id": "exp-1",
    },
}

#: op -> (a field of its request, a misspelling of it that no version of the worker ever had).
MISSPELT: dict[Op, tuple[str, str]] = {
    Op.KMEANS: ("k", "kk"),
    Op.SKMEANS: ("encrypted_matrix_dtype", "encrypted_matrix_dtpye"),
    Op.DBSKMEANS: ("encrypted_udm_shape", "encrypted_udm_shapes"),
    Op.NNC: ("plaintext_matrix_shape", "plaintext_matrix_shap"),
    Op.DBSNNC: ("encrypted_dm_dtype", "encrypted_dm_type"),
    Op.PQC_SKMEANS: ("request_id", "requestid"),
    Op.PQC_DBSKMEANS: ("start_time", "start_tme"),
    Op.PQC_KMEANS: ("labels_id", "label_id"),
    Op.KNN_PREDICT: ("model_labels_shape", "model_label_shape"),
    Op.SKNN_PREDICT: ("encrypted_records_dtype", "encrypted_record_dtype"),
    Op.PQC_SKNN_PREDICT: ("encrypted_model_dtype", "encryped_model_dtype"),
    Op.LR_TRAIN: ("learning_rate", "learningrate"),
    Op.LR_PREDICT: ("plaintext_matrix_train_id", "plaintext_matrix_trian_id"),
    Op.PPLR_TRAIN: ("n_samples", "n_sample"),
    Op.PPLR_PREDICT: ("n_features", "nfeatures"),
}


def header_name(field: str) -> str:
    """``dm_shape`` -> ``Dm-Shape``: the V1 header spelling the parameter models also accept."""
    return "-".join(part.capitalize() for part in field.split("_"))


def misspelt(op: Op) -> dict[str, Any]:
    """The original request of ``op`` with one field's name misspelt."""
    right, wrong = MISSPELT[op]
    request = dict(ORIGINAL_REQUESTS[op])
    request[wrong] = request.pop(right)
    return request
