"""Property tests of every operation's parameter model (schemas/operations.py PARAMS).

For any map of JSON-ish values under the real field names (both spellings) and junk keys, validation
either yields a model or raises pydantic's ValidationError, which the runtime turns into a 400 whose
message can always be encoded in both wire encodings. Nothing else may escape.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel, ValidationError

from schemas import codec
from schemas.operations import PARAMS, Op
from tests.fuzz.strategies import params_dicts
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
        assert 1 <= len(shape) <= 4 and all(type(d) is int and d >= 0 for d in shape)
    json.dumps(model.model_dump(mode="json"))


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
