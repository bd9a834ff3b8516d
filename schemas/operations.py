"""Parameters and results of every operation, with Rory's snake_case names and defaults.

Parameters also accept the original header spelling (``Plaintext-Matrix-Id`` for
``plaintext_matrix_id``) so Managers ported from the HTTP worker keep working, and every field the
original V1 or V2 worker accepted for an operation (``Params.LEGACY``: checked against storage where
that means something, ignored otherwise). Unknown fields are rejected: a typo must not silently fall
back to a default. Shapes are lists of ints, never strings. Numbers are bounded: floats are finite and
ints fit the wire encodings, so nothing a command carries can overflow when it is used or echoed.

:data:`OPERATIONS` holds one :class:`OperationSpec` per operation (name, params, results,
description): ``docs/protocol.md`` is generated from it and the worker binds each handler to it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, Field

from schemas import keys
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


#: Largest count a command may carry (round counters, sizes): ``iterations + 1`` and anything else
#: derived from it stay far inside msgpack's 64-bit ints and JSON's exact integers.
MAX_COUNT = 1_000_000_000
#: Largest declared dimension: shapes are only compared with storage, but must fit a signed 64-bit
#: int so that an error message quoting them can be encoded in both wire encodings.
MAX_DIMENSION = 2**63 - 1

Key = Annotated[str, Field(pattern=KEY_PATTERN, max_length=MAX_KEY_LENGTH)]
Shape = Annotated[list[Annotated[int, Field(ge=0, le=MAX_DIMENSION)]], Field(min_length=1, max_length=4)]
Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
_DTYPES = "float16|float32|float64|int8|int16|int32|int64|uint8|uint16|uint32|uint64"
Dtype = Annotated[str, Field(pattern=rf"^({_DTYPES})$")]
StepIndex = Literal[1, 2]


def _distance(value: Any) -> Any:
    if isinstance(value, str) and value.strip().upper() in {"MANHATTAN", "MANHATHAN"}:
        return DistanceName.MANHATTAN
    return value.strip().upper() if isinstance(value, str) else value


Distance = Annotated[DistanceName, BeforeValidator(_distance)]


class Compat(StrEnum):
    """How the worker treats a field it accepts only because the original worker did."""

    CHECKED = "checked against storage"
    IGNORED = "ignored"


@dataclass(frozen=True)
class StorageClaim:
    """What a command says about one stored object: its shape and/or dtype, or only that it exists.

    ``shape_field``/``dtype_field`` name the parameters the values come from (for the 422 message);
    ``allow_prefix`` accepts a declared shape that is a leading prefix of the stored one (Rory's
    newest client declares a Liu matrix ``(r, a, m)`` as ``(r, a)``).
    """

    key: str
    shape: tuple[int, ...] | None = None
    dtype: str | None = None
    shape_field: str = ""
    dtype_field: str = ""
    allow_prefix: bool = False


def _claims(*claims: StorageClaim | None) -> tuple[StorageClaim, ...]:
    return tuple(claim for claim in claims if claim is not None)


def _claim(
    params: BaseModel,
    key: str,
    shape_field: str,
    dtype_field: str,
    id_field: str | None = None,
    *,
    allow_prefix: bool = False,
) -> StorageClaim | None:
    """The claim the legacy fields make about ``key``; None when the command declares none of them."""
    shape: list[int] | None = getattr(params, shape_field)
    dtype: str | None = getattr(params, dtype_field)
    named = id_field is not None and getattr(params, id_field) is not None
    if shape is None and dtype is None and not named:
        return None
    return StorageClaim(
        key, None if shape is None else tuple(shape), dtype, shape_field, dtype_field, allow_prefix
    )


def _legacy(what: str) -> str:
    return f"Accepted for compatibility with the original worker; {what}."


class Params(BaseModel):
    """Base of every operation's parameters."""

    model_config = ConfigDict(
        extra="forbid",
        populate_by_name=True,
        alias_generator=AliasGenerator(validation_alias=_aliases),
        frozen=True,
        allow_inf_nan=False,  # NaN/inf would poison a computation or be unencodable in a JSON reply
    )

    #: Fields accepted only because the original V1 or V2 worker accepted them (contract section 4,
    #: "Legacy fields"), and how this worker treats each. The CHECKED ones are turned into
    #: :meth:`storage_claims`, which the worker compares with storage before the handler runs.
    LEGACY: ClassVar[Mapping[str, Compat]] = {}

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        """What this command's legacy fields declare about stored objects (empty when none)."""
        return ()

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
    iterations: Count = 0
    shift_matrix_id: Key | None = Field(None, description="Default <P>shiftmatrix (decrypted by the owner).")
    is_zero: bool | None = Field(
        None, description="Owner's convergence verdict; when absent step 2 applies MIN_ERROR to centroids."
    )
    # The original client's extra headers (reference section 4.3), which its worker ignored.
    request_id: str | None = Field(None, max_length=128, description=_legacy("ignored"))
    experiment_iteration: Count | None = Field(None, description=_legacy("ignored"))
    max_iterations: Count | None = Field(
        None, description=_legacy("ignored (the data owner's iteration cap)")
    )
    encrypted_udm_dtype: Dtype | None = Field(
        None, description=_legacy("ignored (SKMeans has no encrypted UDM)")
    )

    LEGACY: ClassVar[Mapping[str, Compat]] = {
        "request_id": Compat.IGNORED,
        "experiment_iteration": Compat.IGNORED,
        "max_iterations": Compat.IGNORED,
        "encrypted_udm_dtype": Compat.IGNORED,
    }


class DbsKMeansParams(SecureKMeansParams):
    encrypted_udm_shape: Shape | None = None
    encrypted_udm_dtype: Dtype | None = None
    shift_matrix_ope_id: Key | None = Field(
        None, description="Legacy name of the OPE-encrypted shift matrix."
    )
    start_time: float | None = Field(
        None, ge=0, description=_legacy("ignored (the V1 data owner's global start time)")
    )

    LEGACY: ClassVar[Mapping[str, Compat]] = {
        "request_id": Compat.IGNORED,
        "experiment_iteration": Compat.IGNORED,
        "max_iterations": Compat.IGNORED,
        "start_time": Compat.IGNORED,
    }


class PqcKMeansParams(Params):
    """``clustering.pqc.kmeans``: Euclidean k-means over CKKS where the worker learns only the labels.

    One round = two worker calls, the data owner (who holds the secret key) in between:

    1. data owner stores the centroids ``C`` (k×a) encrypted and *replicated* over the block size:
       ``<P>encryptedcentroids``, a ciphertext list of shape ``[k, a]`` (item ``j*a + z`` = Enc(C[j, z]
       in every slot)); in round 1 usually the first k records.
    2. worker step 1 reads the column-packed dataset (``encrypted<P>``: ciphertext list of shape
       ``[blocks, a]``, item ``b*a + z`` = attribute z of records ``b*B .. b*B+B-1``, last block
       zero-padded) and the centroids, and stores ``<P>encrypteddistances`` (shape ``[blocks, k]``, item
       ``b*k + j`` = the squared distances of block b's records to centroid j, one per slot).
    3. data owner decrypts the distances, takes the argmin per record and stores the label vector
       ``<P>labels`` (int64, n): the only plaintext the worker ever reads.
    4. worker step 2 reads the dataset and the labels and stores ``<P>encryptedsums`` (shape ``[k, a]``,
       item ``j*a + z`` = attribute z of the records of cluster j, masked slot-wise and summed over the
       blocks; the data owner sums the slots).
    5. data owner decrypts the sums, divides by the counts it knows from its labels, tests convergence
       and, if not converged, stores the new centroids (1.) for the next round.

    No Galois keys are needed (no rotations); relinearisation keys are (step 1 squares ciphertexts).
    Keys under ``<P>`` (except the dataset) take the ``namespace`` prefix.
    """

    step_index: StepIndex = Field(1, description="1: encrypted distances; 2: encrypted per-cluster sums.")
    plaintext_matrix_id: Key = Field(..., description="Root id <P> of the derived keys (never read).")
    encrypted_matrix_id: Key | None = Field(
        None, description="Column-packed CKKS dataset, ciphertext list [blocks, a]; default encrypted<P>."
    )
    encrypted_matrix_shape: Shape | None = Field(
        None, description="[blocks, a], checked against storage when given (never used as a loop bound)."
    )
    encrypted_centroids_id: Key | None = Field(
        None, description="Step 1 input: k×a replicated centroid ciphertexts; default <P>encryptedcentroids."
    )
    labels_id: Key | None = Field(
        None, description="Step 2 input: the data owner's int label vector (n); default <P>labels."
    )
    k: int = Field(3, ge=1, le=1000, description="Clusters; checked against the stored centroids/labels.")
    iterations: Count = Field(0, description="Round counter kept by the data owner; echoed + 1.")


class PqcKMeansDistancesResult(Result):
    """Step 1 of ``clustering.pqc.kmeans``."""

    encrypted_distances_id: str
    distances_shape: list[int] = Field(..., description="[blocks, k] ciphertexts.")
    block_size: int = Field(..., description="Slots per ciphertext B; record i is block i // B, slot i % B.")
    n_iterations: int


class PqcKMeansSumsResult(Result):
    """Step 2 of ``clustering.pqc.kmeans``."""

    encrypted_sums_id: str
    sums_shape: list[int] = Field(..., description="[k, a] ciphertexts; sum the first B slots of each.")
    n_iterations: int


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
    # Required but unused by the original worker (reference section 4.5).
    plaintext_matrix_shape: Shape | None = Field(None, description=_legacy("checked against <P> when given"))
    plaintext_matrix_dtype: Dtype | None = Field(None, description=_legacy("checked against <P> when given"))
    dm_shape: Shape | None = Field(None, description=_legacy("checked against the distance matrix"))
    dm_dtype: Dtype | None = Field(None, description=_legacy("checked against the distance matrix"))

    LEGACY: ClassVar[Mapping[str, Compat]] = {
        "plaintext_matrix_shape": Compat.CHECKED,
        "plaintext_matrix_dtype": Compat.CHECKED,
        "dm_shape": Compat.CHECKED,
        "dm_dtype": Compat.CHECKED,
    }

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        dm_key = self.dm_id or keys.distance_matrix(self.plaintext_matrix_id)
        return _claims(
            _claim(self, self.plaintext_matrix_id, "plaintext_matrix_shape", "plaintext_matrix_dtype"),
            _claim(self, dm_key, "dm_shape", "dm_dtype"),
        )


class DbsNncParams(Params):
    plaintext_matrix_id: Key
    encrypted_dm_id: Key | None = Field(None, description="Default <P>encrypteddm.")
    encrypted_threshold: float
    # Required but unused by the original worker (reference section 4.6): it downloaded the encrypted
    # matrix only to report its shape.
    encrypted_matrix_id: Key | None = Field(
        None, description=_legacy("must exist when given (default encrypted<P>)")
    )
    encrypted_matrix_shape: Shape | None = Field(
        None, description=_legacy("checked against the encrypted matrix when given (a prefix suffices)")
    )
    encrypted_matrix_dtype: Dtype | None = Field(
        None, description=_legacy("checked against the encrypted matrix when given")
    )
    encrypted_dm_shape: Shape | None = Field(
        None, description=_legacy("checked against the encrypted distance matrix when given")
    )
    encrypted_dm_dtype: Dtype | None = Field(
        None, description=_legacy("checked against the encrypted distance matrix when given")
    )
    m: int | None = Field(None, ge=3, le=64, description=_legacy("ignored"))

    LEGACY: ClassVar[Mapping[str, Compat]] = {
        "encrypted_matrix_id": Compat.CHECKED,
        "encrypted_matrix_shape": Compat.CHECKED,
        "encrypted_matrix_dtype": Compat.CHECKED,
        "encrypted_dm_shape": Compat.CHECKED,
        "encrypted_dm_dtype": Compat.CHECKED,
        "m": Compat.IGNORED,
    }

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        matrix_key = self.encrypted_matrix_id or keys.encrypted(self.plaintext_matrix_id)
        dm_key = self.encrypted_dm_id or keys.encrypted_distance_matrix(self.plaintext_matrix_id)
        return _claims(
            _claim(
                self, matrix_key, "encrypted_matrix_shape", "encrypted_matrix_dtype", "encrypted_matrix_id",
                allow_prefix=True,
            ),
            _claim(self, dm_key, "encrypted_dm_shape", "encrypted_dm_dtype"),
        )


class NncResult(LabelsResult):
    threshold: float | None = Field(None, description="The threshold used (resolves -1); plaintext NNC only.")


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
    # Required but only presence-checked by the original worker (reference section 4.10).
    encrypted_model_dtype: Dtype | None = Field(
        None, description=_legacy("checked against the encrypted model in step 1 when given")
    )
    encrypted_records_dtype: Dtype | None = Field(
        None, description=_legacy("checked against the encrypted records in step 1 when given")
    )
    min_distances_index_id: Key | None = Field(
        None,
        validation_alias=AliasChoices(
            "min_distances_index_id", "Min-Distances-Index-Id", "Min_Distances_Index_Id"
        ),
        description=_legacy("ignored: step 2 reads distancesindex<records_test_id>, as the original"),
    )

    LEGACY: ClassVar[Mapping[str, Compat]] = {
        "encrypted_model_dtype": Compat.CHECKED,
        "encrypted_records_dtype": Compat.CHECKED,
        "min_distances_index_id": Compat.IGNORED,
    }

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        if self.step_index != 1:  # step 2 reads neither ciphertext object
            return ()
        model_key = self.encrypted_model_id or keys.encrypted(self.model_id)
        records_key = self.encrypted_records_id or keys.encrypted(self.records_test_id)
        return _claims(
            _dtype_claim(self, model_key, "encrypted_model_dtype"),
            _dtype_claim(self, records_key, "encrypted_records_dtype"),
        )


def _dtype_claim(params: BaseModel, key: str, dtype_field: str) -> StorageClaim | None:
    dtype: str | None = getattr(params, dtype_field)
    return None if dtype is None else StorageClaim(key, dtype=dtype, dtype_field=dtype_field)


class DistancesResult(Result):
    distances_id: str
    distances_shape: list[int]
    distances_dtype: str
    exact: bool = Field(True, description="False: Manhattan on Liu ciphertext components (approximate).")
    distance: str | None = Field(None, description="Metric used: MANHATHAN or EUCLIDEAN.")


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
    plaintext_matrix_train_id: Key | None = Field(
        None, description=_legacy("ignored (the original only logged it)")
    )
    weights_id: Key
    bias_id: Key

    LEGACY: ClassVar[Mapping[str, Compat]] = {"plaintext_matrix_train_id": Compat.IGNORED}


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
    scale: float = Field(
        40, gt=0, description="Accepted for compatibility; the public context's own scale is used."
    )
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
    clustering_status: ClusteringStatus | None = Field(
        None, description=_legacy("ignored (the original client sent START, then WORK_IN_PROGRESS)")
    )

    LEGACY: ClassVar[Mapping[str, Compat]] = {"scale": Compat.IGNORED, "clustering_status": Compat.IGNORED}


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
    scale: float = Field(
        40, gt=0, description="Accepted for compatibility; the public context's own scale is used."
    )
    n_features: Count = Field(0, description="d; 0 = from the ciphertexts, else checked against them.")
    layout: Literal["rows", "packed"] = Field(
        "rows",
        description="packed: X_test column-packed [blocks, d], w and b replicated; one prediction"
        " ciphertext per block (n_records = blocks × block size; the owner trims the padding).",
    )

    LEGACY: ClassVar[Mapping[str, Compat]] = {"scale": Compat.IGNORED}


class PplrPredictResult(Result):
    encrypted_predictions_id: str
    predict_time: float
    algorithm: str = "PPLR_PREDICT"
    n_records: int = 0


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
    encrypted_model_dtype: Dtype | None = Field(
        None, description=_legacy("ignored: CKKS ciphertext lists have no dtype")
    )
    encrypted_records_dtype: Dtype | None = Field(
        None, description=_legacy("ignored: CKKS ciphertext lists have no dtype")
    )

    LEGACY: ClassVar[Mapping[str, Compat]] = {
        "encrypted_model_dtype": Compat.IGNORED,
        "encrypted_records_dtype": Compat.IGNORED,
        "min_distances_index_id": Compat.IGNORED,
    }

    def storage_claims(self) -> tuple[StorageClaim, ...]:
        return ()


class PqcDistancesResult(DistancesResult):
    layout: str = "rows"
    n_model: int = 0
    block_size: int | None = None


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
