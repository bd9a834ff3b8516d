"""A minimal protobuf reader/writer: only what splitting and checking ``TenSEALContextProto`` needs.

Why hand-written: the worker must refuse key material that carries a secret key *before* TenSEAL
parses it (parsing would already load the secret key into the process), and the key directory stores
the public part of one protobuf split over several files (``core/crypto/ckks_material.py``). Reading
the top-level fields is enough for both, and needs no generated code nor a protobuf dependency.
Field numbers: 1 = encryption parameters, 2 = public part {1 public key, 2 flags, 3 scale, 4 relin
keys, 5 Galois keys}, 3 = private part {secret key}, 4 = encryption type.
"""

from __future__ import annotations

from dataclasses import dataclass

from core.crypto.ckks_params import MalformedMaterial, SecretKeyPresent

__all__ = [
    "CTX_ENC_TYPE",
    "CTX_PARAMS",
    "CTX_PRIVATE",
    "CTX_PUBLIC",
    "PUB_FLAGS",
    "PUB_GALOIS",
    "PUB_KEY",
    "PUB_RELIN",
    "PUB_SCALE",
    "Field",
    "check_public_material",
    "enc_varint",
    "fields",
    "len_field",
    "varint",
]

CTX_PARAMS, CTX_PUBLIC, CTX_PRIVATE, CTX_ENC_TYPE = 1, 2, 3, 4
PUB_KEY, PUB_FLAGS, PUB_SCALE, PUB_RELIN, PUB_GALOIS = 1, 2, 3, 4, 5


def varint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    """Decode the varint at ``pos``: (value, next position); bounded, so hostile bytes cannot loop."""
    result, shift = 0, 0
    while True:
        if pos >= len(buf) or shift > 63:
            raise MalformedMaterial("truncated or invalid protobuf varint")
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        shift += 7
        if not byte & 0x80:
            return result, pos


def enc_varint(value: int) -> bytes:
    """Encode a non-negative int as a protobuf varint (for re-emitting length-delimited fields)."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


@dataclass(frozen=True)
class Field:
    """One top-level field: its number and wire type, and the bytes to copy it unchanged."""

    number: int
    wire: int
    raw: memoryview  # the whole encoded field (key + payload), for re-emission
    payload: memoryview | int


def fields(buf: bytes | memoryview) -> list[Field]:
    """The top-level fields of one message, as views into ``buf`` (nothing is copied)."""
    view = memoryview(buf)
    pos, out = 0, []
    while pos < len(view):
        start = pos
        key, pos = varint(view, pos)
        number, wire = key >> 3, key & 7
        if number == 0:
            raise MalformedMaterial("protobuf field number 0")
        payload: memoryview | int
        if wire == 0:
            payload, pos = varint(view, pos)
        elif wire == 1:
            payload, pos = view[pos : pos + 8], pos + 8
        elif wire == 5:
            payload, pos = view[pos : pos + 4], pos + 4
        elif wire == 2:
            length, pos = varint(view, pos)
            payload, pos = view[pos : pos + length], pos + length
        else:
            raise MalformedMaterial(f"unsupported protobuf wire type {wire}")
        if pos > len(view):
            raise MalformedMaterial("truncated protobuf message")
        out.append(Field(number, wire, view[start:pos], payload))
    return out


def len_field(number: int, payload: bytes | memoryview) -> bytes:
    """A length-delimited field: how a rebuilt public part is put back into the context."""
    return enc_varint(number << 3 | 2) + enc_varint(len(payload)) + bytes(payload)


def check_public_material(data: bytes | memoryview) -> list[Field]:
    """Top-level structural check, run before TenSEAL ever parses the bytes."""
    try:
        top = fields(data)
    except MalformedMaterial as exc:
        raise MalformedMaterial(f"not a TenSEAL context: {exc}") from None
    numbers = {f.number for f in top}
    if CTX_PRIVATE in numbers:
        raise SecretKeyPresent(
            "refusing CKKS key material that carries a secret key: the worker must only receive the "
            "public context (data owner: use public_context_bytes / write_public_keys)"
        )
    if CTX_PARAMS not in numbers or CTX_PUBLIC not in numbers:
        raise MalformedMaterial("not a TenSEAL context: encryption parameters or public part missing")
    for f in top:
        if f.number == CTX_ENC_TYPE and f.payload != 0:
            raise MalformedMaterial("symmetric-encryption contexts are not usable without the secret key")
    return top

