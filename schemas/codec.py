"""Encoding of envelopes on the bus: msgpack by default, JSON when the sender asks for it.

Decoding is bounded before and during parsing (payload size, string/bin/array/map lengths, nesting
depth, no extension types) and only ever produces plain dicts, lists, str, bytes, numbers, bools and
None: nothing is unpickled or evaluated. Every failure is a :class:`BadRequest` (or
:class:`PayloadTooLarge`) whose message says what was wrong, so the runtime can answer it.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from typing import Any

import msgpack

from schemas.errors import BadRequest, PayloadTooLarge

CONTENT_TYPE = "Content-Type"
ACCEPT = "Accept"
MSGPACK = "application/msgpack"
JSON = "application/json"
DEFAULT_MAX_BYTES = 1024 * 1024
DEFAULT_MAX_DEPTH = 32

_CONTAINERS = (dict, list)


def _header(headers: Mapping[str, str] | None, name: str) -> str:
    if not headers:
        return ""
    value = headers.get(name)
    if value is None:
        lowered = name.lower()
        for key, candidate in headers.items():
            if key.lower() == lowered:
                value = candidate
                break
    return (value or "").strip().lower()


def is_json(headers: Mapping[str, str] | None) -> bool:
    """True when the message declares ``Content-Type: application/json``."""
    return _header(headers, CONTENT_TYPE).startswith(JSON)


def wants_msgpack(headers: Mapping[str, str] | None) -> bool:
    """True when a request asks for a msgpack answer (``Accept`` or ``Content-Type`` msgpack)."""
    return MSGPACK in _header(headers, ACCEPT) or _header(headers, CONTENT_TYPE).startswith(MSGPACK)


def content_type(json_mode: bool) -> str:
    return JSON if json_mode else MSGPACK


def _check_depth(root: Any, max_depth: int) -> None:
    # Iterative, so a hostile nesting cannot exhaust the Python stack; scalars are never pushed.
    stack = [(root, 1)]
    pop, push = stack.pop, stack.append
    while stack:
        node, depth = pop()
        if depth > max_depth:
            raise BadRequest(f"payload nests deeper than {max_depth} levels")
        children = node.values() if type(node) is dict else node
        for child in children:
            if type(child) in _CONTAINERS:
                push((child, depth + 1))


def _reject_ext(code: int, data: bytes) -> Any:
    raise BadRequest(f"msgpack extension type {code} is not accepted")


def _reject_constant(name: str) -> Any:
    raise BadRequest(f"JSON constant {name} is not accepted")


def _finite_float(text: str) -> float:
    # json.loads turns an out-of-range literal such as 1e999 into inf: the same non-finite value
    # _reject_constant refuses by name, and one a JSON reply could not carry back.
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"JSON number {text[:32]} is out of range (not a finite float)")
    return value


def decode(
    data: bytes,
    *,
    json_mode: bool = False,
    max_bytes: int = DEFAULT_MAX_BYTES,
    max_depth: int = DEFAULT_MAX_DEPTH,
) -> dict[str, Any]:
    """Decode one envelope into a plain dict, or raise BadRequest/PayloadTooLarge."""
    size = len(data)
    if size > max_bytes:
        raise PayloadTooLarge(f"payload of {size} bytes exceeds the limit of {max_bytes} bytes")
    if not size:
        raise BadRequest("empty payload: expected a msgpack map (or JSON object with Content-Type JSON)")
    if json_mode:
        try:
            value = json.loads(data, parse_constant=_reject_constant, parse_float=_finite_float)
        except BadRequest:
            raise
        except RecursionError:
            raise BadRequest(f"payload nests deeper than {max_depth} levels") from None
        except (ValueError, UnicodeDecodeError) as error:
            raise BadRequest(f"payload is not valid JSON: {error}") from None
        kind = "a JSON object"
    else:
        try:
            value = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                use_list=True,
                max_str_len=size,
                max_bin_len=size,
                max_array_len=size,
                max_map_len=size // 2,
                max_ext_len=0,
                ext_hook=_reject_ext,
            )
        except BadRequest:
            raise
        except msgpack.ExtraData:
            raise BadRequest("payload has bytes after the msgpack map") from None
        except msgpack.StackError:
            raise BadRequest(f"payload nests deeper than {max_depth} levels") from None
        except (ValueError, TypeError, UnicodeDecodeError, msgpack.UnpackException) as error:
            if "max_ext_len" in str(error):
                raise BadRequest("payload is not valid msgpack: extension types are not accepted") from None
            raise BadRequest(f"payload is not valid msgpack: {str(error) or type(error).__name__}") from None
        kind = "a msgpack map"
    if type(value) is not dict:
        raise BadRequest(f"payload must be {kind}, got {type(value).__name__}")
    _check_depth(value, max_depth)
    return value


def _json_default(value: Any) -> Any:
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def encode(obj: Any, *, json_mode: bool = False) -> bytes:
    """Encode a map of plain values (msgpack, or compact UTF-8 JSON)."""
    if json_mode:
        return json.dumps(
            obj, separators=(",", ":"), ensure_ascii=False, allow_nan=False, default=_json_default
        ).encode()
    return msgpack.packb(obj, use_bin_type=True)


def encode_json(obj: Any) -> bytes:
    return encode(obj, json_mode=True)


def encode_msgpack(obj: Any) -> bytes:
    return msgpack.packb(obj, use_bin_type=True)


__all__ = [
    "ACCEPT",
    "CONTENT_TYPE",
    "DEFAULT_MAX_BYTES",
    "DEFAULT_MAX_DEPTH",
    "JSON",
    "MSGPACK",
    "content_type",
    "decode",
    "encode",
    "encode_json",
    "encode_msgpack",
    "is_json",
    "wants_msgpack",
]
