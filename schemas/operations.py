"""Parameters and results of every operation, with Rory's snake_case names and defaults.

Parameters also accept the original header spelling (``Plaintext-Matrix-Id`` for
``plaintext_matrix_id``) so Managers ported from the HTTP worker keep working. Unknown fields are
rejected: a typo must not silently fall back to a default. Shapes are lists of ints, never strings.
"""

from __future__ import annotations

from enum import IntEnum, StrEnum
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, Field

from schemas.keys import KEY_PATTERN, MAX_KEY_LENGTH, MAX_NAMESPACE_LENGTH, NAMESPACE_PATTERN


class ClusteringStatus(IntEnum):
    """Rory's values: note COMPLETED is 0 (the V2 default of "0" silently meant COMPLETED)."""

    COMPLETED = 0
    START = 1
    WORK_IN_PROGRESS = 2


class DistanceName(StrEnum):
    MANHATTAN = "MANHATHAN"  # Rory's spelling; "MANHATTAN" is accepted too
    EUCLIDEAN = "EUCLIDEAN"


class Op(StrEnum):
    KMEANS = "clustering.kmeans"
    SKMEANS = "clustering.skmeans"
    DBSKMEANS = "clustering.dbskmeans"
    NNC = "clustering.nnc"
    DBSNNC = "clustering.dbsnnc"
    PQC_SKMEANS = "clustering.pqc.skmeans"
    PQC_DBSKMEANS = "clustering.pqc.dbskmeans"
    PQC_KMEANS = "clustering.pqc.kmeans"
    KNN_PREDICT = "classification.knn.predict"
    SKNN_PREDICT = "classification.sknn.predict"
    PQC_SKNN_PREDICT = "classification.pqc.sknn.predict"
    LR_TRAIN = "ml.lr.train"
    LR_PREDICT = "ml.lr.predict"
    PPLR_TRAIN = "ml.pplr.train"
    PPLR_PREDICT = "ml.pplr.predict"


def _header_name(field: str) -> str:
    """``plaintext_matrix_id`` -> ``Plaintext-Matrix-Id`` (the original HTTP header)."""
    return "-".join(part.capitalize() for part in field.split("_"))


def _aliases(field: str) -> AliasChoices:
    return AliasChoices(field, _header_name(field))


Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=MAX_KEY_LENGTH)]
Shape = Annotated[list[Annotated[int, Field(ge=0)]], Field(min_length=1, max_length=4)]
_DTYPES = "float16|float32|float64|int8|int16|int32|int64|uint8|uint16|uint32|uint64"
Dtype = Annotated[str, Field(pattern=rf"^({_DTYPES})$")]
StepIndex = Literal[1, 2]


def _distance(value: Any) -> Any:
    if isinstance(value, str) and value.strip().upper() in {"MANHATTAN", "MANHATHAN"}:
        return DistanceName.MANHATTAN
    return value.strip().upper() if isinstance(value, str) else value


Distance = Annotated[DistanceName, BeforeValidator(_distance)]


class Params(BaseModel):
    """Base of every operation's parameters."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=_aliases),
        frozen=True,
    )

    experiment_id: str = Field("", max_length=128, description="Free text for logs.")
    namespace: str | None = Field(
        None,
        pattern=NAMESPACE_PATTERN,
        max_length=MAX_NAMESPACE_LENGTH,
        description="Isolates this job's state keys from other jobs.",
    )
    num_chunks: int | None = Field(
        None, ge=1, le=4096, description="Chunks for results (default NUM_CHUNKS)."
    )


class Result(BaseModel):
    """Base of every result; ``service_time`` is the worker's wall time for the command."""

    model_config = ConfigDict(extra="allow")

    service_time: float = 0.0


class LabelsResult(Result):
    label_vector: list[int] | None = None
    label_vector_id: str | None = Field(None, description="Set instead of label_vector when it is too large.")


# ---------------------------------------------------------------- clustering
class KMeansParams(Params):
    plaintext_matrix_id: Key
    k: int = Field(3, ge=1, le=1000)
    max_iterations: int = Field(300, ge=1, le=100_000)
    tolerance: float = Field(1e-4, ge=0)


class KMeansResult(LabelsResult):
    iterations: int


class SecureKMeansParams(Params):
    """Shared by SKMeans, DBSKMeans and their CKKS variants (step 1 and step 2)."""

    step_index: StepIndex = 1
    clustering_status: ClusteringStatus = ClusteringStatus.START
    plaintext_matrix_id: Key
    encrypted_matrix_id: Key | None = Field(None, description="Default encrypted<plaintext_matrix_id>.")
    encrypted_matrix_shape: Shape | None = Field(None, description="Checked against storage when given.")
    encrypted_matrix_dtype: Dtype | None = None
    k: int = Field(3, ge=1, le=1000)
    m: int = Field(3, ge=3, le=64)
    iterations: int = Field(0, ge=0)
    shift_matrix_id: Key | None = Field(None, description="Default <P>shiftmatrix (decrypted by the owner).")
    is_zero: bool | None = Field(
        None, description="Owner's convergence verdict; when absent step 2 applies MIN_ERROR to centroids."
    )


class DbsKMeansParams(SecureKMeansParams):
    encrypted_udm_shape: Shape | None = None
    encrypted_udm_dtype: Dtype | None = None
    shift_matrix_ope_id: Key | None = Field(
        None, description="Legacy name of the OPE-encrypted shift matrix."
    )


class PqcKMeansParams(Params):
    """CKKS k-means in which the worker learns only the labels (step 1 distances, step 2 sums)."""

    step_index: StepIndex = 1
    plaintext_matrix_id: Key
    encrypted_matrix_id: Key | None = Field(None, description="Column-packed dataset, default encrypted<P>.")
    k: int = Field(3, ge=1, le=1000)
    n_records: int = Field(..., ge=1)
    n_attributes: int = Field(..., ge=1)
    iterations: int = Field(0, ge=0)


class Step1Result(LabelsResult):
    n_iterations: int
    encrypted_shift_matrix_id: str


class Step2Result(Result):
    clustering_status: ClusteringStatus
    udm_shape: list[int] | None = None
    encrypted_udm_shape: list[int] | None = None
    encrypted_udm_dtype: str | None = None


class NncParams(Params):
    plaintext_matrix_id: Key
    dm_id: Key | None = Field(None, description="Default <P>dm.")
    threshold: float = Field(..., description="-1 picks the smallest non-zero distance.")


class DbsNncParams(Params):
    plaintext_matrix_id: Key
    encrypted_dm_id: Key | None = Field(None, description="Default <P>encrypteddm.")
    encrypted_threshold: float


# ---------------------------------------------------------------- classification
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


class DistancesResult(Result):
    distances_id: str
    distances_shape: list[int]
    distances_dtype: str
    exact: bool = True


# ---------------------------------------------------------------- machine learning
class LrTrainParams(Params):
    plaintext_matrix_train_id: Key = "train_x"
    plaintext_label_vector_train_id: Key = "train_y"
    weights_id: Key
    bias_id: Key
    epochs: int = Field(1, ge=1, le=100_000)
    learning_rate: float = Field(0.01, gt=0)


class LrPredictParams(Params):
    plaintext_matrix_test_id: Key = "test_x"
    plaintext_matrix_train_id: Key | None = None
    weights_id: Key
    bias_id: Key


class TrainResult(Result):
    train_time: float
    algorithm: str


class LrPredictResult(Result):
    predictions_id: str
    predict_time: float


class PplrTrainParams(Params):
    encrypted_matrix_train_id: Key
    encrypted_label_vector_train_id: Key
    encrypted_weights_id: Key
    encrypted_bias_id: Key
    learning_rate: float = Field(0.01, gt=0)
    scale: float = Field(40, gt=0)
    n_features: int = Field(0, ge=0)
    n_samples: int = Field(0, ge=0)
    epochs: int = Field(1, ge=1, le=1000)


class PplrPredictParams(Params):
    encrypted_matrix_test_id: Key
    encrypted_weights_id: Key
    encrypted_bias_id: Key
    scale: float = Field(40, gt=0)
    n_features: int = Field(0, ge=0)


class PplrPredictResult(Result):
    encrypted_predictions_id: str
    predict_time: float
    algorithm: str = "PPLR_PREDICT"


PARAMS: dict[Op, type[Params]] = {
    Op.KMEANS: KMeansParams,
    Op.SKMEANS: SecureKMeansParams,
    Op.DBSKMEANS: DbsKMeansParams,
    Op.NNC: NncParams,
    Op.DBSNNC: DbsNncParams,
    Op.PQC_SKMEANS: SecureKMeansParams,
    Op.PQC_DBSKMEANS: DbsKMeansParams,
    Op.PQC_KMEANS: PqcKMeansParams,
    Op.KNN_PREDICT: KnnParams,
    Op.SKNN_PREDICT: SknnParams,
    Op.PQC_SKNN_PREDICT: SknnParams,
    Op.LR_TRAIN: LrTrainParams,
    Op.LR_PREDICT: LrPredictParams,
    Op.PPLR_TRAIN: PplrTrainParams,
    Op.PPLR_PREDICT: PplrPredictParams,
}
