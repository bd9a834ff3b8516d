"""Hypothesis strategies for hostile input: msgpack/JSON-ish values, envelopes, operation params.

Shared by the property tests in this package and (as plain generators) by the atheris harness.
"""

from __future__ import annotations

import math
from typing import Any

from hypothesis import strategies as st
from pydantic import BaseModel

from schemas.operations import PARAMS, Op

OPS = [op.value for op in Op]

# Scalars a msgpack or JSON decoder can hand us, including the awkward ones: huge/negative ints,
# non-finite floats, empty and odd strings (NUL, newline, wildcards, non-ASCII), bytes.
_TEXT = st.text(
    alphabet=st.characters(codec="utf-8", exclude_categories=("Cs",)) | st.sampled_from(list("\n\r\0*>. ")),
    max_size=24,
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**64 - 1),
    st.floats(allow_nan=True, allow_infinity=True),
    _TEXT,
    st.binary(max_size=16),
)
#: Numbers that once ended in a 500 instead of a 400: integers JSON carries but no
#: float (or msgpack int) holds, and the non-finite floats msgpack carries.
HUGE_JSON_INTS = (10**400, -(10**400), 2**64, 2**1024)
NON_FINITE = (math.nan, math.inf, -math.inf)
JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.sampled_from(HUGE_JSON_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    _TEXT,
)


def nested(leaves: st.SearchStrategy[Any], max_leaves: int = 20) -> st.SearchStrategy[Any]:
    """Lists and string-keyed maps of ``leaves``, a few levels deep."""
    return st.recursive(
        leaves,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(_TEXT, children, max_size=4),
        max_leaves=max_leaves,
    )


VALUES = nested(SCALARS)
JSON_VALUES = nested(JSON_SCALARS)


def _json_number(value: Any) -> bool:
    """False for the floats JSON cannot carry (NaN, infinities)."""
    return not (isinstance(value, float) and not math.isfinite(value))


def _header_name(field: str) -> str:
    """``plaintext_matrix_id`` -> ``Plaintext-Matrix-Id``, the original HTTP spelling params accept."""
    return "-".join(part.capitalize() for part in field.split("_"))


def _field_names(model: type[BaseModel]) -> list[str]:
    names = []
    for name in model.model_fields:
        names += [name, _header_name(name)]
    return names


FIELD_NAMES = sorted({name for model in PARAMS.values() for name in _field_names(model)})

# Values that are *plausible* for params fields (so validation gets past the first field more often).
PLAUSIBLE = st.one_of(
    st.integers(min_value=-3, max_value=5000),
    st.integers(min_value=2**31, max_value=2**63 - 1),
    st.sampled_from([1, 2, 3, 0, -1, 4096, 4097, True, False, 0.5, "1", "3", "", "MANHATTAN", "EUCLIDEAN"]),
    st.sampled_from(
        ["rows", "packed", "float64", "int64", "object", "V8", "<f8", "(3, 4)", "__import__('os')"]
    ),
    st.from_regex(r"[A-Za-z0-9_-]{1,20}", fullmatch=True),  # storage-key-like
    st.lists(st.integers(min_value=-1, max_value=2**62), min_size=0, max_size=6),  # shape-like
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([*NON_FINITE, 2**63 - 1, 2**63, 2**64 - 1, 10**9, 10**9 + 1]),  # bounds, NaN
)
PLAUSIBLE_JSON = st.one_of(PLAUSIBLE.filter(_json_number), st.sampled_from(HUGE_JSON_INTS))


def params_dicts(op: str | None = None, *, json_safe: bool = False) -> st.SearchStrategy[dict[str, Any]]:
    """Param maps mixing the operation's real field names (both spellings) and junk keys."""
    names = _field_names(PARAMS[Op(op)]) if op else FIELD_NAMES
    keys = st.sampled_from(names) | _TEXT
    values = st.one_of(PLAUSIBLE_JSON, JSON_VALUES) if json_safe else st.one_of(PLAUSIBLE, VALUES)
    return st.dictionaries(keys, values, max_size=8)


def _ident(json_safe: bool) -> st.SearchStrategy[Any]:
    good = st.from_regex(r"[A-Za-z0-9_-]{1,32}", fullmatch=True)
    return st.one_of(good, good, good, JSON_SCALARS if json_safe else SCALARS)


@st.composite
def commands(draw: st.DrawFn, *, json_safe: bool = False) -> dict[str, Any]:
    """A Command-shaped map where every field may be missing, mistyped or wrong."""
    op = draw(st.sampled_from(OPS))
    junk = JSON_VALUES if json_safe else VALUES
    params = params_dicts(op, json_safe=json_safe)
    body: dict[str, Any] = {
        "v": draw(st.sampled_from([1, 1, 1, 2, 0, "1", 1.0, True, None])),
        "id": draw(_ident(json_safe)),
        "op": draw(st.sampled_from([op, op, op, "nope.op", "", "a..b", "x" * 200])),
        "ts": draw(
            st.sampled_from([1.7e9, 0, -1, "now", None, *NON_FINITE, 2**64 - 1])
            if not json_safe
            else st.sampled_from([1.7e9, 0, -1, "now", None, *HUGE_JSON_INTS])
        ),
        "params": draw(st.one_of(params, params, params, junk)),
    }
    if draw(st.booleans()):
        body["job_id"] = draw(_ident(json_safe))
    if draw(st.booleans()):
        hostile = HUGE_JSON_INTS if json_safe else (*NON_FINITE, 2**64 - 1)
        body["deadline_s"] = draw(st.sampled_from([0.5, 5, 0, -1, "x", None, 1e300, *hostile]))
    for key in draw(st.lists(st.sampled_from(list(body)), max_size=2)):
        body.pop(key, None)  # missing fields
    return body
