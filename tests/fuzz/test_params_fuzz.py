"""Property tests of every operation's parameter model (schemas/operations.py PARAMS).

For any map of JSON-ish values under the real field names (both spellings) and junk keys, validation
either yields a model or raises pydantic's ValidationError, which the runtime turns into a 400 whose
message can always be encoded in both wire encodings. Nothing else may escape.
"""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import codec
from schemas.operations import MAX_COUNT, PARAMS, Op
from tests.fuzz.strategies import HUGE_JSON_INTS, NON_FINITE, params_dicts
from worker.errors import BadRequest
from worker.runtime.registry import Operation, format_params_error

FUZZ = settings(max_examples=60, deadline=2000, suppress_health_check=[HealthCheck.too_slow])


async def _never_called(ctx: Any, params: Any) -> dict[str, Any]:  # pragma: no cover
    raise AssertionError("not run")


def _shapes(model: BaseModel) -> list[list[int]]:
    return [v for k, v in model.model_dump().items() if k.endswith("_shape") and v is not None]


def _check(op: Op, raw: dict[str, Any]) -> None:
    model_cls = PARAMS[op]
    try:
        model = model_cls.model_validate(raw)
    except ValidationError as error:
        message = format_params_error(error)
        assert message
        codec.encode({"message": message})  # msgpack: must not raise
        codec.encode({"message": message}, json_mode=True)
        with pytest.raises(BadRequest):
            Operation(op.value, model_cls, _never_called).parse_params(raw)
        return
    # Accepted: every declared shape is a short list of non-negative ints (never text to evaluate).
    for shape in _shapes(model):
        assert 1 <= len(shape) <= 4 and all(type(d) is int and 0 <= d < 2**63 for d in shape)
    # ...and everything accepted can travel back in either encoding: finite floats (strict JSON
    # refuses NaN/inf) and ints msgpack holds, also after the counters are echoed + 1.
    dumped = model.model_dump(mode="json")
    codec.encode(dumped, json_mode=True)
    codec.encode(dumped)
    for name in ("iterations", "n_samples", "n_features", "experiment_iteration", "max_iterations"):
        value = dumped.get(name)
        assert value is None or 0 <= value + 1 <= MAX_COUNT + 1, (name, value)


@pytest.mark.parametrize("op", list(Op), ids=lambda op: op.value)
@FUZZ
@given(data=st.data())
def test_params_validate_or_fail_typed(op: Op, data: st.DataObject) -> None:
    _check(op, data.draw(params_dicts(op.value)))


@FUZZ
@given(st.sampled_from(list(Op)), params_dicts(json_safe=True))
def test_any_field_name_for_any_op(op: Op, raw: dict[str, Any]) -> None:
    _check(op, raw)


@pytest.mark.parametrize(
    ("shape", "accepted"),
    [
        ([2**62, 2**62], [2**62, 2**62]),
        ([2**63 - 1], [2**63 - 1]),  # absurd but encodable: handlers only compare it with storage
        ([2**63], None),  # would not fit a msgpack int64 in an error message quoting it
        ([10**30], None),
        (["3"], [3]),  # pydantic's lax int parsing of a decimal string; never evaluated
        ([-1], None),
        ([], None),
        ([1, 2, 3, 4, 5], None),
        ([1.5], None),
        ("(3, 4)", None),
        ("__import__('os').getcwd()", None),
        ({"0": 3}, None),
    ],
    ids=repr,
)
def test_declared_shapes_are_lists_of_non_negative_ints(shape: Any, accepted: list[int] | None) -> None:
    """Shapes in params are data, never code; absurd sizes that fit 64 bits pass validation but are
    only compared with what storage holds (tests/fuzz/test_worker_fuzz.py sends them to a real worker)."""
    raw = {"plaintext_matrix_id": "m", "encrypted_matrix_shape": shape}
    if accepted is None:
        with pytest.raises(ValidationError):
            PARAMS[Op.SKMEANS].model_validate(raw)
    else:
        assert PARAMS[Op.SKMEANS].model_validate(raw).encrypted_matrix_shape == accepted


def _numeric_fields(kind: str) -> list[tuple[Op, str]]:
    """(op, field) for every ``number`` (kind "number") or ``integer`` field of the params models."""
    out = []
    for op, model in PARAMS.items():
        for name, prop in model.model_json_schema()["properties"].items():
            types = {prop.get("type")} | {option.get("type") for option in prop.get("anyOf", [])}
            if kind in types and "enum" not in prop and "const" not in prop:
                out.append((op, name))
    return out


def _required(op: Op) -> dict[str, Any]:
    """Valid values for the required fields of ``op`` (all are storage keys or floats)."""
    model = PARAMS[op]
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        if field.is_required():
            out[name] = 1.0 if field.annotation is float else "k1"
    model.model_validate(out)
    return out


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else f"{text[0] if value < 0 else ''}{len(text.lstrip('-'))}-digit-int"


FLOAT_FIELDS = _numeric_fields("number")
INT_FIELDS = _numeric_fields("integer")


def test_the_fields_of_issue_11_are_covered() -> None:
    floats = {name for _, name in FLOAT_FIELDS}
    assert {"tolerance", "learning_rate", "scale", "threshold", "encrypted_threshold"} <= floats
    assert ("clustering.skmeans", "iterations") in {(op.value, name) for op, name in INT_FIELDS}


@pytest.mark.parametrize(("op", "field"), FLOAT_FIELDS, ids=lambda v: str(v))
@pytest.mark.parametrize(
    "value", [*NON_FINITE, *(v for v in HUGE_JSON_INTS if abs(v) >= 2**1024)], ids=_short
)
def test_float_fields_refuse_non_finite_and_huge_numbers(op: Op, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        PARAMS[op].model_validate({**_required(op), field: value})
    assert [e["loc"][0] for e in caught.value.errors()] == [field]
    with pytest.raises(BadRequest, match=f"params.{field}"):
        Operation(op.value, PARAMS[op], _never_called).parse_params({**_required(op), field: value})


@pytest.mark.parametrize(("op", "field"), INT_FIELDS, ids=lambda v: str(v))
@pytest.mark.parametrize("value", [*HUGE_JSON_INTS, 2**63, 2**64 - 1], ids=_short)
def test_int_fields_refuse_numbers_that_cannot_travel_back(op: Op, field: str, value: Any) -> None:
    with pytest.raises(ValidationError) as caught:
        PARAMS[op].model_validate({**_required(op), field: value})
    assert [e["loc"][0] for e in caught.value.errors()] == [field]
