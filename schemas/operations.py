"""The contract: one :class:`OperationSpec` per operation (name, params, results, description).

:data:`OPERATIONS` is what ``docs/protocol.md`` is generated from (``python -m schemas.docgen``) and
what the worker binds each handler to (worker/runtime/registry.py ``bind_spec``). The models live
with their family: ``schemas/clustering.py``, ``schemas/classification.py``, ``schemas/ml.py``, on the
shared rules of ``schemas/base.py`` (aliases, bounds, legacy fields, ``Params``/``Result``). Every
name stays importable from here, the one place callers (worker, data owner, Managers) need to know.

Parameters use Rory's snake_case names and defaults and also accept the original header spelling
(``Plaintext-Matrix-Id``) and every field the original V1 or V2 worker accepted (``Params.LEGACY``);
unknown fields are rejected (see ``schemas/base.py``).
"""

from __future__ import annotations

from dataclasses import dataclass

from schemas.base import (
    MAX_COUNT,
    MAX_DIMENSION,
    ClusteringStatus,
    Compat,
    Count,
    Distance,
    DistanceName,
    Dtype,
    Key,
    LabelsResult,
    Op,
    Params,
    Result,
    Shape,
    StepIndex,
    StorageClaim,
)
from schemas.classification import (
    DistancesResult,
    KnnParams,
    PqcDistancesResult,
    PqcSknnParams,
    SknnParams,
)
from schemas.clustering import (
    DbsKMeansParams,
    DbsNncParams,
    KMeansParams,
    KMeansResult,
    NncParams,
    NncResult,
    PqcKMeansDistancesResult,
    PqcKMeansParams,
    PqcKMeansSumsResult,
    SecureKMeansParams,
    Step1Result,
    Step2Result,
)
from schemas.ml import (
    LrPredictParams,
    LrPredictResult,
    LrTrainParams,
    PplrPredictParams,
    PplrPredictResult,
    PplrTrainParams,
    PplrTrainResult,
    TrainResult,
)

__all__ = [
    "GLOSSARY",
    "MAX_COUNT",
    "MAX_DIMENSION",
    "OPERATIONS",
    "PARAMS",
    "RESULTS",
    "SPECS",
    "ClusteringStatus",
    "Compat",
    "Count",
    "DbsKMeansParams",
    "DbsNncParams",
    "Distance",
    "DistanceName",
    "DistancesResult",
    "Dtype",
    "KMeansParams",
    "KMeansResult",
    "Key",
    "KnnParams",
    "LabelsResult",
    "LrPredictParams",
    "LrPredictResult",
    "LrTrainParams",
    "NncParams",
    "NncResult",
    "Op",
    "OperationSpec",
    "Params",
    "PplrPredictParams",
    "PplrPredictResult",
    "PplrTrainParams",
    "PplrTrainResult",
    "PqcDistancesResult",
    "PqcKMeansDistancesResult",
    "PqcKMeansParams",
    "PqcKMeansSumsResult",
    "PqcSknnParams",
    "Result",
    "SecureKMeansParams",
    "Shape",
    "SknnParams",
    "Step1Result",
    "Step2Result",
    "StepIndex",
    "StorageClaim",
    "TrainResult",
]


@dataclass(frozen=True)
class OperationSpec:
    """One operation of the contract: its name, parameter model, result models and a one-line summary.

    ``result`` lists every model the operation may answer with: step 1 and step 2 of the two-step
    operations each have their own.
    """

    op: Op
    params: type[Params]
    result: tuple[type[Result], ...]
    description: str


#: Every operation, in the order docs/protocol.md lists them.
OPERATIONS: tuple[OperationSpec, ...] = (
    OperationSpec(Op.KMEANS, KMeansParams, (KMeansResult,), "Plaintext k-means (first-k initialisation)."),
    OperationSpec(
        Op.SKMEANS, SecureKMeansParams, (Step1Result, Step2Result),
        "Secure k-means over Liu ciphertexts with a plaintext UDM (step 1 / step 2).",
    ),
    OperationSpec(
        Op.DBSKMEANS, DbsKMeansParams, (Step1Result, Step2Result),
        "Double-blind secure k-means: Liu data, FDH-OPE-encrypted UDM (step 1 / step 2).",
    ),
    OperationSpec(Op.NNC, NncParams, (NncResult,), "Plaintext nearest-neighbour threshold clustering."),
    OperationSpec(
        Op.DBSNNC, DbsNncParams, (LabelsResult,),
        "Nearest-neighbour clustering on an FDH-OPE-encrypted distance matrix.",
    ),
    OperationSpec(
        Op.PQC_SKMEANS, SecureKMeansParams, (Step1Result, Step2Result),
        "Secure k-means over CKKS row ciphertexts with a plaintext UDM (step 1 / step 2).",
    ),
    OperationSpec(
        Op.PQC_DBSKMEANS, DbsKMeansParams, (Step1Result, Step2Result),
        "Double-blind secure k-means: CKKS row ciphertexts, FDH-OPE-encrypted UDM (step 1 / step 2).",
    ),
    OperationSpec(
        Op.PQC_KMEANS, PqcKMeansParams, (PqcKMeansDistancesResult, PqcKMeansSumsResult),
        "Euclidean k-means over column-packed CKKS data; the worker learns only labels (step 1 / step 2).",
    ),
    OperationSpec(
        Op.KNN_PREDICT, KnnParams, (LabelsResult,), "Plaintext 1-nearest-neighbour classification."
    ),
    OperationSpec(
        Op.SKNN_PREDICT, SknnParams, (DistancesResult, LabelsResult),
        "Secure 1-NN over Liu ciphertexts (step 1 distances / step 2 labels).",
    ),
    OperationSpec(
        Op.PQC_SKNN_PREDICT, PqcSknnParams, (PqcDistancesResult, LabelsResult),
        "Secure 1-NN over CKKS (squared Euclidean; step 1 distances / step 2 labels).",
    ),
    OperationSpec(Op.LR_TRAIN, LrTrainParams, (TrainResult,), "Plaintext logistic regression training."),
    OperationSpec(
        Op.LR_PREDICT, LrPredictParams, (LrPredictResult,), "Plaintext logistic regression prediction."
    ),
    OperationSpec(
        Op.PPLR_TRAIN, PplrTrainParams, (PplrTrainResult,),
        "Privacy-preserving logistic regression: encrypted gradient steps over CKKS.",
    ),
    OperationSpec(
        Op.PPLR_PREDICT, PplrPredictParams, (PplrPredictResult,),
        "Privacy-preserving logistic regression: encrypted predictions.",
    ),
)

#: The spec of each operation, by its name (the subject's ``<op>``).
SPECS: dict[str, OperationSpec] = {spec.op.value: spec for spec in OPERATIONS}
PARAMS: dict[Op, type[Params]] = {spec.op: spec.params for spec in OPERATIONS}
#: What each operation answers: step 1 and step 2 of the two-step operations list both models.
RESULTS: dict[Op, tuple[type[Result], ...]] = {spec.op: spec.result for spec in OPERATIONS}

#: Meaning of the fields shared by many models (a field's own description wins in the docs).
GLOSSARY: dict[str, str] = {
    "algorithm": "Rory's algorithm name, e.g. LOGISTIC_REGRESSION_TRAIN.",
    "bias_id": "Storage key of the bias (single-blob float64 array of one value).",
    "block_size": "Slots per ciphertext B: record i is block i // B, slot i % B.",
    "clustering_status": "COMPLETED = 0, START = 1, WORK_IN_PROGRESS = 2 (missing means START).",
    "distances_dtype": "dtype of the stored distances.",
    "distances_id": "Storage key of the encrypted distances (distances<records_test_id>).",
    "distances_shape": "Shape of the stored distances.",
    "encrypted_bias_id": "Storage key of the encrypted bias (a list of one CKKS ciphertext).",
    "encrypted_distances_id": "Storage key of the encrypted per-cluster distances.",
    "encrypted_matrix_dtype": "Checked against the stored dataset when given.",
    "encrypted_model_shape": "Checked against the stored model when given (never used as a loop bound).",
    "encrypted_predictions_id": "Storage key of the encrypted predictions.",
    "encrypted_records_shape": "Checked against the stored records when given (never used as a loop bound).",
    "encrypted_shift_matrix_id": "Storage key of the encrypted shift matrix the data owner decrypts.",
    "encrypted_sums_id": "Storage key of the encrypted per-cluster sums.",
    "encrypted_threshold": "The distance threshold, FDH-OPE-encrypted by the data owner.",
    "encrypted_udm_dtype": "dtype of the FDH-OPE-encrypted UDM.",
    "encrypted_udm_shape": "Shape of the FDH-OPE-encrypted UDM (checked against storage when given).",
    "encrypted_weights_id": "Storage key of the encrypted weights (a list of one CKKS ciphertext).",
    "epochs": "Gradient-descent passes over the training set.",
    "iterations": "Round counter kept by the data owner (the worker replies with it + 1).",
    "k": "Number of clusters (at most the number of records).",
    "label_vector": "One label per record (absent when label_vector_id is set).",
    "layout": "Packing of the distances: rows (one ciphertext per pair) or packed (per record and block).",
    "learning_rate": "Gradient-descent step size.",
    "m": "Liu ciphertext length (security level 128: 3).",
    "max_iterations": "Upper bound on Lloyd iterations.",
    "model_id": "Storage key root of the model (<model_id>labels holds its labels).",
    "model_labels_shape": "Shape of the stored labels, checked when given.",
    "n_iterations": "iterations + 1.",
    "n_model": "Number of model rows.",
    "n_records": "Number of predicted records.",
    "n_samples": "Number of training samples.",
    "plaintext_label_vector_train_id": "Storage key of the training labels (0/1).",
    "plaintext_matrix_id": "Dataset id <P>, the root of every derived key.",
    "plaintext_matrix_test_id": "Storage key of the records to predict.",
    "plaintext_matrix_train_id": "Storage key of the training matrix.",
    "predict_time": "Seconds spent predicting.",
    "predictions_id": "Storage key of the predictions (<test id>predictions).",
    "records_test_id": "Storage key root of the records to classify.",
    "service_time": "Seconds the worker spent on this command.",
    "step_index": "1 = encrypted phase (worker computes), 2 = the phase after the data owner's decryption.",
    "tolerance": "Convergence tolerance on the centroid shift.",
    "train_time": "Seconds spent training.",
    "udm_shape": "Shape of the updated UDM.",
    "weights_id": "Storage key of the weights (chunked float64 array).",
}
