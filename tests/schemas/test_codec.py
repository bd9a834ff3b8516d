"""Bounded msgpack/JSON decoding: every bad payload is a typed 400, never a crash."""

from __future__ import annotations

import json

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from schemas import codec
from worker.errors import BadRequest, PayloadTooLarge


def test_roundtrip_msgpack_and_json() -> None:
    body = {"a": 1, "b": [1.5, "x", None, True], "c": {"d": b"\x00\x01"}}
    assert codec.decode(codec.encode(body)) == body
    text = {"a": 1, "b": [1.5, "x", None, True]}
    assert codec.decode(codec.encode(text, json_mode=True), json_mode=True) == text
    assert json.loads(codec.encode(text, json_mode=True)) == text


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"", "empty"),
        (b"\xc1", "not valid msgpack"),
        (msgpack.packb({"a": "x" * 10})[:-3], "not valid msgpack"),
        (msgpack.packb([1, 2]), "must be a msgpack map"),
        (msgpack.packb("text"), "must be a msgpack map"),
        (msgpack.packb({"a": 1}) + b"\x01", "after the msgpack map"),
        (msgpack.packb({1: 2}), "not valid msgpack"),
        (b"\xdd\xff\xff\xff\xff", "not valid msgpack"),  # array header claiming 4G items
        (b"\xdf\xff\xff\xff\xff", "not valid msgpack"),
        (msgpack.packb({"t": msgpack.ExtType(5, b"abc")}), "extension"),
        (b"\x81\xa1a\xd6\xff\x00\x00\x00\x01", "not valid msgpack"),  # timestamp ext
        (b"\x81\xa1a\xa2\xff\xfe", "not valid msgpack"),  # invalid UTF-8
        (b"\x91" * 5000, "nests deeper"),
    ],
)
def test_bad_msgpack(payload: bytes, needle: str) -> None:
    with pytest.raises(BadRequest) as caught:
        codec.decode(payload)
    assert needle in caught.value.message


@pytest.mark.parametrize(
    ("payload", "needle"),
    [
        (b"{", "not valid JSON"),
        (b"[1, 2]", "must be a JSON object"),
        (b'"text"', "must be a JSON object"),
        (b'{"a": NaN}', "NaN"),
        (b'{"a": Infinity}', "Infinity"),
        (b'{"a": 1} x', "not valid JSON"),
        (b"\xff\xfe", "not valid JSON"),
        (b"[" * 100000 + b"]" * 100000, "nests deeper"),
        (b'{"a": ' + b"9" * 5000 + b"}", "not valid JSON"),
    ],
)
def test_bad_json(payload: bytes, needle: str) -> None:
    with pytest.raises(BadRequest) as caught:
        codec.decode(payload, json_mode=True)
    assert needle in caught.value.message


def test_depth_limit_is_exact() -> None:
    nested: dict = {}
    node = nested
    for _ in range(codec.DEFAULT_MAX_DEPTH - 1):
        node["n"] = {}
        node = node["n"]
    codec.decode(codec.encode(nested))  # exactly at the limit
    node["n"] = [1]
    with pytest.raises(BadRequest, match="nests deeper"):
        codec.decode(codec.encode(nested))


def test_size_limit() -> None:
    payload = codec.encode({"blob": b"x" * 2000})
    codec.decode(payload, max_bytes=len(payload))
    with pytest.raises(PayloadTooLarge):
        codec.decode(payload, max_bytes=len(payload) - 1)


def test_headers() -> None:
    assert codec.is_json({"Content-Type": "application/json; charset=utf-8"})
    assert codec.is_json({"content-type": "APPLICATION/JSON"})
    assert not codec.is_json({"Content-Type": "application/msgpack"})
    assert not codec.is_json(None)
    assert codec.wants_msgpack({"Accept": "application/msgpack"})
    assert codec.wants_msgpack({"Content-Type": "application/msgpack"})
    assert not codec.wants_msgpack({})


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=200))
def test_random_bytes_never_escape(payload: bytes) -> None:
    for json_mode in (False, True):
        try:
            value = codec.decode(payload, json_mode=json_mode)
        except BadRequest:
            continue
        assert isinstance(value, dict)


@pytest.mark.parametrize("literal", [b"1e999", b"-1e400", b"123456789e400"])
def test_json_number_overflowing_to_infinity_is_rejected(literal: bytes) -> None:
    # json.loads maps an out-of-range literal to inf, bypassing the Infinity/NaN constant check: a
    # handler then ran with it and the JSON reply could not encode its result (500 after the work).
    with pytest.raises(BadRequest, match="out of range"):
        codec.decode(b'{"params": {"threshold": ' + literal + b"}}", json_mode=True)
    assert codec.decode(b'{"a": 1e-400, "b": 1.5e3}', json_mode=True) == {"a": 0.0, "b": 1500.0}


def test_msgpack_error_message_is_never_empty() -> None:
    # b"\xc1" (the reserved byte) raises an exception whose str() is empty.
    with pytest.raises(BadRequest) as caught:
        codec.decode(b"\xc1")
    assert not caught.value.message.endswith(": ")
    assert caught.value.message.startswith("payload is not valid msgpack: ")
