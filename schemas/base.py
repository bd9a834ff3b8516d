"""The base of every operation's models: names, field types, legacy-field rules, ``Params`` and ``Result``.

Why apart from the models themselves (``schemas/clustering.py``, ``schemas/classification.py``,
``schemas/ml.py``): every family's models share these rules (aliases, bounds, the legacy-field
bookkeeping), and ``schemas/operations.py`` builds the contract from all of them; this module is
what each of them imports, so none imports another family.

Parameters also accept the original header spelling (``Plaintext-Matrix-Id`` for
``plaintext_matrix_id``) so Managers ported from the HTTP worker keep working, and every field the
original V1 or V2 worker accepted for an operation (``Params.LEGACY``: checked against storage where
that means something, ignored otherwise). Unknown fields are rejected: a typo must not silently fall
back to a default. Shapes are lists of ints, never strings. Numbers are bounded: floats are finite and
ints fit the wire encodings, so nothing a command carries can overflow when it is used or echoed.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import IntEnum, StrEnum
from typing import Annotated, Any, ClassVar, Literal

from pydantic import AliasChoices, AliasGenerator, BaseModel, BeforeValidator, ConfigDict, Field

from schemas.keys import KEY_PATTERN, MAX_KEY_LENGTH, MAX_NAMESPACE_LENGTH, NAMESPACE_PATTERN

__all__ = [
    "MAX_COUNT",
    "MAX_DIMENSION",
    "ClusteringStatus",
    "Compat",
    "Count",
    "Distance",
    "DistanceName",
    "Dtype",
    "Key",
    "LabelsResult",
    "Op",
    "Params",
    "Result",
    "Shape",
    "StepIndex",
    "StorageClaim",
    "claim",
    "claims",
    "dtype_claim",
    "legacy_field",
    "mark_legacy",
]

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


def claims(*found: StorageClaim | None) -> tuple[StorageClaim, ...]:
    """The claims a command really makes (a legacy field left out makes none)."""
    return tuple(claim for claim in found if claim is not None)


def claim(
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


def mark_legacy(how: Compat, field: Any) -> Any:
    """Mark ``field`` (a ``Field(...)``) as accepted only because the original worker did, treated ``how``.

    The mark rides in the field's metadata, which pydantic ignores when it validates and writes the JSON
    schema; :attr:`Params.LEGACY` is derived from the marks, so a legacy field and its treatment are
    declared once, on the field.
    """
    field.metadata.append(how)
    return field


def legacy_field(how: Compat, what: str, **constraints: Any) -> Any:
    """A field accepted only because the original worker did: absent by default, and its description
    says so (``what`` tells how this worker treats it). One helper so every legacy field reads alike
    in ``docs/protocol.md``; ``constraints`` are the usual ``Field`` bounds."""
    return mark_legacy(how, Field(None, description=_legacy(what), **constraints))


def dtype_claim(params: BaseModel, key: str, dtype_field: str) -> StorageClaim | None:
    """The claim a lone legacy dtype field makes about ``key``; None when it is absent."""
    dtype: str | None = getattr(params, dtype_field)
    return None if dtype is None else StorageClaim(key, dtype=dtype, dtype_field=dtype_field)


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
    #: "Legacy fields"), and how this worker treats each, in field order. The CHECKED ones are turned
    #: into :meth:`storage_claims`, which the worker compares with storage before the handler runs.
    #: Derived from the fields :func:`mark_legacy` marks (:meth:`__pydantic_init_subclass__`); a
    #: subclass that redeclares a field without the mark makes it a real field.
    LEGACY: ClassVar[Mapping[str, Compat]] = {}

    @classmethod
    def __pydantic_init_subclass__(cls, **kwargs: Any) -> None:
        super().__pydantic_init_subclass__(**kwargs)
        if "LEGACY" in vars(cls):  # it would be silently replaced: the fields are the one declaration
            raise TypeError(f"{cls.__name__}: mark legacy fields with legacy_field/mark_legacy, not LEGACY")
        cls.LEGACY = {
            name: how
            for name, info in cls.model_fields.items()
            for how in info.metadata
            if isinstance(how, Compat)
        }

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
