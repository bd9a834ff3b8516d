"""Property tests of the envelope decoder (schemas/codec.py) and validator (parse_command).

The property: for ANY byte string, ``decode`` + ``parse_command`` either return a Command or raise a
:class:`BadRequest` (``PayloadTooLarge``, ``UnsupportedVersion`` are subclasses) -- never another
exception, never a hang, never a value that is not plain data. tests/schemas/test_codec.py already
feeds short random bytes; here the inputs are structured (valid msgpack of hostile values, mutated
valid commands, crafted headers declaring huge lengths, deep nesting) and both encodings are covered.
"""

from __future__ import annotations

import json
import struct
import time
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from schemas import codec
from schemas.envelopes import Command, parse_command
from tests.fuzz.strategies import JSON_VALUES, VALUES, commands
from tests.ops import command
from worker.errors import BadRequest, PayloadTooLarge

VALID = {
    "v": 1,
    "id": "c-1",
    "op": "clustering.kmeans",
    "ts": 1.7e9,
    "params": {"plaintext_matrix_id": "m", "k": 3},
}
FUZZ = settings(max_examples=150, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
MAX = 64 * 1024


def _plain(value: Any) -> bool:
    """Only the types a bounded msgpack/JSON decode may produce."""
    if value is None or type(value) in (bool, int, float, str, bytes):
        return True
    if type(value) is list:
        return all(_plain(item) for item in value)
    if type(value) is dict:
        return all(type(k) in (str, bytes) and _plain(v) for k, v in value.items())
    return False


def check_envelope(data: bytes, *, json_mode: bool, max_bytes: int = MAX) -> Command | None:
    """Decode + validate; a BadRequest is a pass (returns None), anything else fails the test."""
    started = time.perf_counter()
    try:
        value = codec.decode(data, json_mode=json_mode, max_bytes=max_bytes)
        assert type(value) is dict and _plain(value)
        return parse_command(value)
    except BadRequest as error:
        assert error.code == 400 and error.message
        return None
    finally:
        assert time.perf_counter() - started < 1.0, "decoding must be fast for a 64 KiB limit"


@FUZZ
@given(st.binary(max_size=4096))
def test_random_bytes(data: bytes) -> None:
    check_envelope(data, json_mode=False)
    check_envelope(data, json_mode=True)


@FUZZ
@given(VALUES)
def test_any_msgpack_value(value: Any) -> None:
    check_envelope(msgpack.packb(value, use_bin_type=True), json_mode=False)


@FUZZ
@given(JSON_VALUES)
def test_any_json_value(value: Any) -> None:
    check_envelope(json.dumps(value).encode(), json_mode=True)


@FUZZ
@given(commands())
def test_command_shaped_maps(body: dict[str, Any]) -> None:
    parsed = check_envelope(msgpack.packb(body, use_bin_type=True), json_mode=False)
    if parsed is not None:  # accepted only when the model accepts it too
        assert Command.model_validate(body).id == parsed.id


@FUZZ
@given(commands(json_safe=True))
def test_command_shaped_json(body: dict[str, Any]) -> None:
    check_envelope(json.dumps(body).encode(), json_mode=True)


@FUZZ
@given(st.data())
def test_mutated_valid_commands(data: st.DataObject) -> None:
    """Flip, drop, insert and truncate bytes of a valid command (what a broken or hostile sender does)."""
    json_mode = data.draw(st.booleans())
    raw = bytearray(codec.encode(VALID, json_mode=json_mode))
    for _ in range(data.draw(st.integers(1, 6))):
        kind = data.draw(st.sampled_from(["flip", "drop", "insert", "truncate", "dup"]))
        at = data.draw(st.integers(0, max(0, len(raw) - 1)))
        if kind == "flip" and raw:
            raw[at] ^= 1 << data.draw(st.integers(0, 7))
        elif kind == "drop" and raw:
            del raw[at]
        elif kind == "insert":
            raw[at:at] = data.draw(st.binary(min_size=1, max_size=8))
        elif kind == "truncate":
            del raw[at:]
        else:
            raw[at:at] = raw[at : at + data.draw(st.integers(1, 16))]
    check_envelope(bytes(raw), json_mode=json_mode)


# ------------------------------------------------------------------- crafted: huge declared lengths
_HUGE = [
    b"\xdd" + struct.pack(">I", 2**32 - 1),  # array32 of 4 billion items
    b"\xdf" + struct.pack(">I", 2**32 - 1),  # map32 of 4 billion pairs
    b"\xdb" + struct.pack(">I", 2**32 - 1),  # str32 of 4 GiB
    b"\xc6" + struct.pack(">I", 2**32 - 1),  # bin32 of 4 GiB
    b"\xc9" + struct.pack(">I", 2**32 - 1) + b"\x01",  # ext32 of 4 GiB
    b"\xdc\xff\xff",  # array16 of 65535 items, none present
    b"\xde\xff\xff",  # map16
]


@pytest.mark.parametrize("header", _HUGE, ids=lambda h: h[:1].hex())
@pytest.mark.parametrize("inside", [False, True], ids=["top", "in-params"])
def test_declared_lengths_beyond_the_payload(header: bytes, inside: bool) -> None:
    if inside:  # {"params": <huge>} with a valid envelope around it
        prefix = msgpack.packb({k: v for k, v in command("clustering.kmeans").items() if k != "params"})
        data = bytes([prefix[0] + 1]) + prefix[1:] + msgpack.packb("params") + header + b"\x00" * 32
    else:
        data = header + b"\x00" * 32
    with pytest.raises(BadRequest):
        codec.decode(data, max_bytes=MAX)


@pytest.mark.parametrize("depth", [33, 100, 1_000, 10_000, 60_000])
@pytest.mark.parametrize("json_mode", [False, True])
def test_deep_nesting(depth: int, json_mode: bool) -> None:
    if json_mode:
        data = b'{"a":' + b"[" * depth + b"]" * depth + b"}"
    else:
        data = b"\x81\xa1a" + b"\x91" * depth + b"\xc0"
    started = time.perf_counter()
    with pytest.raises(BadRequest, match=r"nests deeper|not valid"):
        codec.decode(data, json_mode=json_mode, max_bytes=1024 * 1024)
    assert time.perf_counter() - started < 1.0


def test_wide_payload_within_the_limit_is_fast() -> None:
    """A 1 MiB map of 100k tiny keys or a list of 500k nils decodes (or fails) in bounded time."""
    wide_map = msgpack.packb({**command("x"), "params": {f"k{i}": i for i in range(60_000)}})
    wide_list = b"\x81\xa6params" + b"\xdd" + struct.pack(">I", 900_000) + b"\xc0" * 900_000
    for data in (wide_map, wide_list):
        assert len(data) <= 1024 * 1024
        started = time.perf_counter()
        check_envelope(data, json_mode=False, max_bytes=1024 * 1024)
        assert time.perf_counter() - started < 1.0


def test_size_limit_comes_first() -> None:
    with pytest.raises(PayloadTooLarge):
        codec.decode(b"\x00" * (MAX + 1), max_bytes=MAX)
    with pytest.raises(PayloadTooLarge):
        codec.decode(b"{" * (MAX + 1), json_mode=True, max_bytes=MAX)


@pytest.mark.parametrize(
    "text",
    [
        '{"v": 1, "params": {"\\ud800": 1}}',  # lone surrogate in a key
        '{"v": 1, "id": "\\udfff"}',
        '{"v": NaN}',
        '{"v": Infinity}',
        '{"v": 1e999}',
        '{"v": ' + "9" * 5000 + "}",  # beyond Python's int-digits limit
        '{"a": "\\u0000"}',
        "\ufeff{}",
        '{"v": 1, "v": 2}',
    ],
)
def test_awkward_json(text: str) -> None:
    check_envelope(text.encode("utf-8", "surrogatepass"), json_mode=True)


@pytest.mark.parametrize(
    "data",
    [
        msgpack.packb({b"v": 1}),  # bytes keys
        b"\x81\xc0\x01",  # nil key
        b"\x81\x91\x01\x01",  # array key
        b"\x81\xa1v\xd4\x01\x01",  # fixext1 value
        b"\x81\xa1v\xc7\x00\xff",  # ext8 of length 0, type -1 (timestamp family)
        b"\xd6\xff\x00\x00\x00\x00",  # a msgpack Timestamp at top level
        b"\x81\xa1v\xa3\xff\xfe\xfd",  # invalid UTF-8 in a str
    ],
)
def test_awkward_msgpack(data: bytes) -> None:
    check_envelope(data, json_mode=False)


def test_the_fuzz_corpus_runs_clean(tmp_path: Any) -> None:
    """Every seed of tests/fuzz/fuzz_codec.py (valid commands and the hostile numbers of
    tests/security/test_hostile_params.py) goes through the harness's own target without an
    exception escaping."""
    from tests.fuzz import fuzz_codec  # a module, not its test_one_input: pytest must not collect it

    fuzz_codec.seed_corpus(tmp_path)
    seeds = sorted(tmp_path.iterdir())
    assert {path.name for path in seeds} >= set(fuzz_codec.HOSTILE_SEEDS)
    for path in seeds:
        fuzz_codec.test_one_input(path.read_bytes())


@pytest.mark.parametrize(
    ("field", "value", "json_mode"),
    [
        ("ts", 10**400, True),
        ("ts", -(10**400), True),
        ("ts", 2**1024, True),
        ("deadline_s", 10**400, True),
        ("deadline_s", -(10**400), True),
        ("ts", float("nan"), False),
        ("deadline_s", float("inf"), False),
    ],
    ids=["ts-huge", "ts-neg-huge", "ts-2^1024", "dl-huge", "dl-neg-huge", "ts-nan", "dl-inf"],
)
def test_numbers_no_float_holds_are_a_bad_request(field: str, value: Any, json_mode: bool) -> None:
    """``math.isfinite(10**400)`` raises OverflowError: it must surface as a 400, not a crash."""
    body = {**VALID, field: value}
    data = json.dumps(body).encode() if json_mode else codec.encode(body)  # msgpack carries NaN/inf
    with pytest.raises(BadRequest, match=field):
        parse_command(codec.decode(data, json_mode=json_mode))
