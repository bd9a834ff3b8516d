"""Parameters and results of the classification operations: 1-NN in the clear, over Liu ciphertexts
(SKNN) and over CKKS (SKNN-PQC).

One module per operation family (as ``worker/handlers/classification.py`` and
``worker/handlers/pqc.py`` serve them); the shared rules are ``schemas/base.py``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import AliasChoices, Field

from schemas import keys
from schemas.base import (
    Compat,
    Distance,
    Dtype,
    Key,
    Params,
    Result,
    Shape,
    StepIndex,
    StorageClaim,
    claims,
    dtype_claim,
    legacy_field,
)

__all__ = ["DistancesResult", "KnnParams", "PqcDistancesResult", "PqcSknnParams", "SknnParams"]


class KnnParams(Params):
    model_id: Key
    records_test_id: Key
    model_labels_shape: Shape | None = None
    distance: Distance | None = Field(None, description="Default DISTANCE.")


class SknnParams(Params):
    step_index: StepIndex = 1
    model_id: Key
    records_test_id: Key
    encrypted_model_id: Key | None = Field(None, description="Default encrypted<model_id>.")
    encrypted_records_id: Key | None = Field(None, description="Default encrypted<records_test_id>.")
    encrypted_model_shape: Shape | None = None
    encrypted_records_shape: Shape | None = None
    model_labels_shape: Shape | None = None
    m: int = Field(3, ge=3, le=64)
    distance: Distance | None = Field(None, description="Default DISTANCE (CKKS: EUCLIDEAN only).")
    # Required but only presence-checked by the original worker (reference section 4.10).
    encrypted_model_dtype: Dtype | None = legacy_field(
        Compat.CHECKED, "checked against the encrypted model in step 1 when given"
    )
    encrypted_records_dtype: Dtype | None = legacy_field(
        Compat.CHECKED, "checked against the encrypted records in step 1 when given"
    )
    min_distances_index_id: Key | None = legacy_field(
        Compat.IGNORED,
        "ignored: step 2 reads distancesindex<records_test_id>, as the original",
        validation_alias=AliasChoices(
            "min_distances_index_id", "Min-Distances-Index-Id", "Min_Distances_Index_Id"
        ),
    )

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        if self.step_index != 1:  # step 2 reads neither ciphertext object
            return ()
        model_key = self.encrypted_model_id or keys.encrypted(self.model_id)
        records_key = self.encrypted_records_id or keys.encrypted(self.records_test_id)
        return claims(
            dtype_claim(self, model_key, "encrypted_model_dtype"),
            dtype_claim(self, records_key, "encrypted_records_dtype"),
        )



class DistancesResult(Result):
    distances_id: str
    distances_shape: list[int]
    distances_dtype: str
    exact: bool = Field(True, description="False: Manhattan on Liu ciphertext components (approximate).")
    distance: str | None = Field(None, description="Metric used: MANHATHAN or EUCLIDEAN.")



_NO_DTYPE = "ignored: CKKS ciphertext lists have no dtype"


class PqcSknnParams(SknnParams):
    """``classification.pqc.sknn.predict``: SKNN over CKKS (squared Euclidean only).

    ``layout="rows"`` (the original's): model and records are lists of row ciphertexts; step 1 stores
    ``distances<R>`` with shape ``[n_rec, n_model]``, one ciphertext (x − y)² per pair (sum its first a
    slots). ``layout="packed"``: the model is column-packed (ciphertext list ``[blocks, a]``) and each
    record replicated per attribute (``[n_rec, a]``); ``distances<R>`` has shape ``[n_rec, blocks]``, slot
    s of item ``t*blocks + b`` = squared distance of record t to model row ``b*B + s``. ``distance``
    MANHATHAN is refused (400): CKKS cannot evaluate |x − y|. Absent, it means EUCLIDEAN here (the
    DISTANCE setting applies to the Liu variant only; the original ignored it for CKKS as well).
    """

    layout: Literal["rows", "packed"] = Field("rows", description="Ciphertext packing of model/records.")
    # The same legacy fields as SKNN's, all ignored: a ciphertext list has no dtype to check.
    encrypted_model_dtype: Dtype | None = legacy_field(Compat.IGNORED, _NO_DTYPE)
    encrypted_records_dtype: Dtype | None = legacy_field(Compat.IGNORED, _NO_DTYPE)

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        return ()


class PqcDistancesResult(DistancesResult):
    layout: str = "rows"
    n_model: int = 0
    block_size: int | None = None

