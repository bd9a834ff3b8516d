"""Legacy fields (contract section 4 "Legacy fields"): what the original worker accepted is
accepted, a field no version ever had is refused, and the legacy fields are documented per operation.

Table-driven over the 15 operations with the original client's complete requests
(tests/schemas/legacy_requests.py); tests/worker/handlers/test_legacy_fields.py sends the same
requests to a real worker.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import pytest
from pydantic import Field, ValidationError

from schemas import docgen, keys
from schemas.base import legacy_field, mark_legacy
from schemas.operations import OPERATIONS, PARAMS, Compat, NncParams, Op, Params, SknnParams
from tests.schemas.legacy_requests import MISSPELT, ORIGINAL_REQUESTS, header_name, misspelt

OPS = list(Op)


def _required(op: Op) -> dict[str, Any]:
    """The original request cut down to the fields the model requires."""
    model = PARAMS[op]
    return {k: v for k, v in ORIGINAL_REQUESTS[op].items() if model.model_fields[k].is_required()}


def _legacy(kind: Compat) -> list[tuple[Op, str]]:
    return [(spec.op, name) for spec in OPERATIONS for name, how in spec.params.LEGACY.items() if how is kind]


def test_the_tables_cover_every_operation() -> None:
    assert set(ORIGINAL_REQUESTS) == set(Op) == set(MISSPELT)
    assert len(OPS) == 15


@pytest.mark.parametrize("op", OPS, ids=str)
def test_the_original_request_is_accepted(op: Op) -> None:
    params = PARAMS[op].model_validate(ORIGINAL_REQUESTS[op])
    for name, value in ORIGINAL_REQUESTS[op].items():
        assert getattr(params, name) == value, name


@pytest.mark.parametrize("op", OPS, ids=str)
def test_the_original_request_in_header_spelling_is_accepted(op: Op) -> None:
    raw = {header_name(name): value for name, value in ORIGINAL_REQUESTS[op].items()}
    assert PARAMS[op].model_validate(raw) == PARAMS[op].model_validate(ORIGINAL_REQUESTS[op])


@pytest.mark.parametrize("op", OPS, ids=str)
def test_a_misspelt_field_is_refused(op: Op) -> None:
    with pytest.raises(ValidationError) as caught:
        PARAMS[op].model_validate(misspelt(op))
    errors = caught.value.errors()
    assert [(e["loc"], e["type"]) for e in errors] == [((MISSPELT[op][1],), "extra_forbidden")]
    assert "Extra inputs are not permitted" in str(caught.value)


@pytest.mark.parametrize(
    ("op", "field"), [(op, name) for op in OPS for name in ORIGINAL_REQUESTS[op]], ids=str
)
def test_no_field_of_the_original_request_survives_a_typo(op: Op, field: str) -> None:
    raw = dict(ORIGINAL_REQUESTS[op])
    raw[field + "_"] = raw.pop(field)
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PARAMS[op].model_validate(raw)


@pytest.mark.parametrize(
    "field", ["plaintext_matrix_shape", "dm_dtype", "encrypted_model_dtype", "start_time"]
)
def test_a_legacy_field_of_another_operation_is_refused(field: str) -> None:
    """Legacy fields are per operation: KMeans never had any of these."""
    with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
        PARAMS[Op.KMEANS].model_validate({**ORIGINAL_REQUESTS[Op.KMEANS], field: None})


def test_legacy_fields_are_fields_of_their_model() -> None:
    for spec in OPERATIONS:
        assert set(spec.params.LEGACY) <= set(spec.params.model_fields), spec.op
        for name in spec.params.LEGACY:
            assert spec.params.model_fields[name].is_required() is False, (spec.op, name)


@pytest.mark.parametrize(("op", "field"), _legacy(Compat.CHECKED), ids=str)
def test_each_checked_field_becomes_a_storage_claim(op: Op, field: str) -> None:
    value = ORIGINAL_REQUESTS[op][field]
    params = PARAMS[op].model_validate({**_required(op), field: value})
    claims = params.storage_claims()
    assert len(claims) == 1, claims
    claim = claims[0]
    assert field in (claim.shape_field, claim.dtype_field) or (claim.shape, claim.dtype) == (None, None)
    if field.endswith("_shape"):
        assert claim.shape == tuple(value)
    if field.endswith("_dtype"):
        assert claim.dtype == value


@pytest.mark.parametrize(("op", "field"), _legacy(Compat.IGNORED), ids=str)
def test_ignored_fields_make_no_claim(op: Op, field: str) -> None:
    value = ORIGINAL_REQUESTS[op].get(field, PARAMS[op].model_fields[field].default)
    params = PARAMS[op].model_validate({**_required(op), field: value})
    assert params.storage_claims() == ()


def test_claims_name_the_objects_the_handlers_read() -> None:
    nnc = NncParams.model_validate(ORIGINAL_REQUESTS[Op.NNC])
    assert [(c.key, c.shape, c.dtype) for c in nnc.storage_claims()] == [
        ("m", (12, 3), "float64"),
        (keys.distance_matrix("m"), (12, 12), "float64"),
    ]
    moved = NncParams.model_validate({**ORIGINAL_REQUESTS[Op.NNC], "dm_id": "elsewhere"})
    assert moved.storage_claims()[1].key == "elsewhere"
    dbsnnc = PARAMS[Op.DBSNNC].model_validate(ORIGINAL_REQUESTS[Op.DBSNNC])
    matrix, dm = dbsnnc.storage_claims()
    assert (matrix.key, matrix.allow_prefix) == ("encryptedm", True)
    assert dm.key == keys.encrypted_distance_matrix("m")


def test_sknn_checks_the_ciphertext_dtypes_only_in_step_1() -> None:
    step1 = SknnParams.model_validate(ORIGINAL_REQUESTS[Op.SKNN_PREDICT])
    assert {(c.key, c.dtype) for c in step1.storage_claims()} == {
        ("encryptedmodel", "float64"),
        ("encryptedrecords", "float64"),
    }
    step2 = SknnParams.model_validate({**ORIGINAL_REQUESTS[Op.SKNN_PREDICT], "step_index": 2})
    assert step2.storage_claims() == ()
    pqc = PARAMS[Op.PQC_SKNN_PREDICT].model_validate(ORIGINAL_REQUESTS[Op.PQC_SKNN_PREDICT])
    assert pqc.storage_claims() == ()  # ciphertext lists have no dtype


def test_the_base_model_has_no_legacy_fields() -> None:
    assert Params.LEGACY == {}
    assert Params.model_validate({}).storage_claims() == ()


def test_legacy_is_derived_from_the_marked_fields_in_field_order() -> None:
    """schemas/base.py derives LEGACY from legacy_field/mark_legacy; a redeclared field without the
    mark (DbsKMeansParams.encrypted_udm_dtype) is a real field of the subclass."""

    class Marked(Params):
        kept: int | None = legacy_field(Compat.CHECKED, "checked against storage when given")
        real: int = 0
        old: float = mark_legacy(Compat.IGNORED, Field(1.0, description="Accepted for compatibility."))

    class Redeclared(Marked):
        kept: int | None = None

    assert list(Marked.LEGACY.items()) == [("kept", Compat.CHECKED), ("old", Compat.IGNORED)]
    assert Redeclared.LEGACY == {"old": Compat.IGNORED}
    assert "encrypted_udm_dtype" in PARAMS[Op.SKMEANS].LEGACY
    assert "encrypted_udm_dtype" not in PARAMS[Op.DBSKMEANS].LEGACY


def test_a_hand_written_legacy_map_is_refused() -> None:
    """It would be replaced by the derived one without a word."""
    with pytest.raises(TypeError, match="mark legacy fields"):

        class HandWritten(Params):
            LEGACY: ClassVar[Mapping[str, Compat]] = {"nothing": Compat.IGNORED}


def _section(text: str, op: Op) -> str:
    start = text.index(f"### `{op.value}`")
    end = text.find("\n### ", start + 1)
    return text[start : end if end != -1 else len(text)]


@pytest.mark.parametrize("spec", OPERATIONS, ids=lambda spec: spec.op.value)
def test_docs_list_the_legacy_fields_of_each_operation(spec: Any) -> None:
    section = _section(docgen.generate(), spec.op)
    assert spec.description in section
    if not spec.params.LEGACY:
        assert "Accepted for compatibility with the original worker:" not in section
        return
    intro = "Accepted for compatibility with the original worker:"
    line = next(ln for ln in section.splitlines() if ln.startswith(intro))
    for name, how in spec.params.LEGACY.items():
        assert f"`{name}`" in line
        assert how.value in line
