"""Parameters and results of the machine-learning operations: logistic regression in the clear (LR)
and over CKKS (PPLR).

One module per operation family (as ``worker/handlers/ml.py`` and ``worker/handlers/pqc.py`` serve
them); the shared rules are ``schemas/base.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from schemas.base import ClusteringStatus, Compat, Count, Key, Params, Result, legacy_field, mark_legacy

__all__ = [
    "LrPredictParams",
    "LrPredictResult",
    "LrTrainParams",
    "PplrPredictParams",
    "PplrPredictResult",
    "PplrTrainParams",
    "PplrTrainResult",
    "TrainResult",
]

#: ``scale`` of the PPLR operations: the original client sent it; the public context carries its own.
_SCALE = "Accepted for compatibility; the public context's own scale is used."


class LrTrainParams(Params):
    plaintext_matrix_train_id: Key = "train_x"
    plaintext_label_vector_train_id: Key = "train_y"
    weights_id: Key
    bias_id: Key
    epochs: int = Field(1, ge=1, le=100_000)
    learning_rate: float = Field(0.01, gt=0)


class LrPredictParams(Params):
    plaintext_matrix_test_id: Key = "test_x"
    plaintext_matrix_train_id: Key | None = legacy_field(
        Compat.IGNORED, "ignored (the original only logged it)"
    )
    weights_id: Key
    bias_id: Key


class TrainResult(Result):
    train_time: float
    algorithm: str


class LrPredictResult(Result):
    predictions_id: str
    predict_time: float
    algorithm: str = "LOGISTIC_REGRESSION_PREDICT"


class PplrTrainParams(Params):
    """``ml.pplr.train``: homomorphic logistic-regression passes over CKKS data (row layout).

    Inputs are ciphertext lists: X (n ciphertexts of d slots), y (n size-1 ciphertexts), the weights
    (1 ciphertext of d slots) and the bias (1 size-1 ciphertext). The worker runs ``epochs`` full-batch
    gradient steps with the polynomial sigmoid and writes the new weights and bias over the same ids
    (staged first, so an interrupted write is completed by the retry of the same command). One step
    consumes 6 multiplicative levels: with the ``ml-*`` profiles (7 levels) only ``epochs=1`` fits and
    the data owner refreshes (decrypts and re-encrypts) the weights between calls. The public context
    must carry Galois keys (``rotatekey``): dot products rotate.
    """

    encrypted_matrix_train_id: Key = Field(..., description="X: n row ciphertexts.")
    encrypted_label_vector_train_id: Key = Field(..., description="y: n size-1 ciphertexts.")
    encrypted_weights_id: Key = Field(..., description="w: 1 ciphertext; overwritten with the new weights.")
    encrypted_bias_id: Key = Field(..., description="b: 1 ciphertext; overwritten with the new bias.")
    learning_rate: float = Field(0.01, gt=0)
    scale: float = mark_legacy(Compat.IGNORED, Field(40, gt=0, description=_SCALE))
    n_features: Count = Field(0, description="d; 0 = from the ciphertexts, else checked against them.")
    n_samples: Count = Field(0, description="n; 0 = from storage, else checked against it.")
    epochs: int = Field(1, ge=1, le=1000, description="Passes in this call (each needs 6 levels).")
    layout: Literal["rows", "packed"] = Field(
        "rows",
        description="rows: as above. packed (rotation-free, no Galois keys, 4 levels: the pplr-* profiles):"
        " X column-packed [blocks, d], y [blocks], w d ciphertexts and b one, each replicated over the"
        " block size; n_samples required, epochs=1; the worker stores the per-slot gradients"
        " [parts, d+1] under encrypted_gradients_id and leaves w and b untouched (the owner updates).",
    )
    clustering_status: ClusteringStatus | None = legacy_field(
        Compat.IGNORED, "ignored (the original client sent START, then WORK_IN_PROGRESS)"
    )


class PplrTrainResult(Result):
    train_time: float
    algorithm: str = "PPLR_TRAIN"
    encrypted_weights_id: str
    encrypted_bias_id: str
    epochs: int
    n_samples: int
    recovered: bool = Field(
        False, description="True when this call only completed the interrupted write of an earlier try."
    )
    encrypted_gradients_id: str | None = Field(
        None, description="packed layout: the encrypted gradients [parts, d+1] (sum every slot)."
    )


class PplrPredictParams(Params):
    """``ml.pplr.predict``: encrypted σ̃(x·w + b) per record, stored as ``<test>encryptedpredictions``."""

    encrypted_matrix_test_id: Key = Field(..., description="X_test: n row ciphertexts.")
    encrypted_weights_id: Key
    encrypted_bias_id: Key
    scale: float = mark_legacy(Compat.IGNORED, Field(40, gt=0, description=_SCALE))
    n_features: Count = Field(0, description="d; 0 = from the ciphertexts, else checked against them.")
    layout: Literal["rows", "packed"] = Field(
        "rows",
        description="packed: X_test column-packed [blocks, d], w and b replicated; one prediction"
        " ciphertext per block (n_records = blocks × block size; the owner trims the padding).",
    )


class PplrPredictResult(Result):
    encrypted_predictions_id: str
    predict_time: float
    algorithm: str = "PPLR_PREDICT"
    n_records: int = 0

