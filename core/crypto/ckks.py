"""CKKS through TenSEAL: parameter profiles, contexts without secret keys, packing and (de)serialisation.

Why this module exists: every CKKS ("PQC") algorithm and both roles (data owner, worker) need the same
handful of primitives, and the security rule of the whole system — *the worker never holds a secret key* —
has to be enforced in exactly one place. Everything here is pure (no I/O except the two key-directory
helpers, which only read/write the files they are given). This module is the one name callers import
(``from core.crypto import ckks``); the work is split by job:

* ``core/crypto/ckks_params.py``: profiles, context creation and introspection, the errors;
* ``core/crypto/ckks_protobuf.py``: the minimal protobuf reader that checks material before TenSEAL
  parses it;
* ``core/crypto/ckks_material.py``: public material as bytes and as the ``KEYS_PATH`` directory (its
  layout is documented there);
* ``core/crypto/ckks_vectors.py``: packing, homomorphic helpers, (de)serialisation, decoding.

Roles
-----
* Data owner: :func:`create_context` (holds the secret key), encrypts, decrypts, serialises a public copy
  with :func:`public_context_bytes` or :func:`write_public_keys`.
* Worker: :func:`load_public_context` / :func:`read_public_context` / :func:`cached_public_context`; all
  three refuse material that carries a secret key (:class:`SecretKeyPresent`) *before* TenSEAL parses it.
"""

from __future__ import annotations

from core.crypto.ckks_material import (
    cached_public_context,
    context_digest,
    galois_element,
    load_public_context,
    private_context_bytes,
    public_context_bytes,
    read_public_context,
    write_public_keys,
)
from core.crypto.ckks_params import (
    PROFILES,
    CkksProfile,
    MalformedMaterial,
    MissingKeyMaterial,
    SecretKeyPresent,
    create_context,
    get_profile,
    is_private,
    levels_left,
    require_galois_keys,
    require_levels,
    require_private,
    require_relin_keys,
    slot_count,
    validate_profile,
)

# The protobuf helpers under the private names worker/keys.py and the key tests (tests/core/test_ckks.py,
# tests/dataowner/test_keys.py) use to take material apart; core/crypto/ckks_protobuf.py has them.
from core.crypto.ckks_protobuf import Field as _Field  # noqa: F401
from core.crypto.ckks_protobuf import check_public_material as _check_public_material  # noqa: F401
from core.crypto.ckks_protobuf import enc_varint as _enc_varint  # noqa: F401
from core.crypto.ckks_protobuf import fields as _fields  # noqa: F401
from core.crypto.ckks_protobuf import len_field as _len_field  # noqa: F401
from core.crypto.ckks_vectors import (
    column_block_size,
    decode,
    decrypt_vector,
    decrypt_vectors,
    deserialize,
    encrypt_columns,
    encrypt_replicated,
    encrypt_rows,
    encrypted_zero,
    post_process,
    serialize,
    subtract,
    sum_vectors,
)

__all__ = [
    "PROFILES",
    "CkksProfile",
    "MalformedMaterial",
    "MissingKeyMaterial",
    "SecretKeyPresent",
    "cached_public_context",
    "column_block_size",
    "context_digest",
    "create_context",
    "decode",
    "decrypt_vector",
    "decrypt_vectors",
    "deserialize",
    "encrypt_columns",
    "encrypt_replicated",
    "encrypt_rows",
    "encrypted_zero",
    "galois_element",
    "get_profile",
    "is_private",
    "levels_left",
    "load_public_context",
    "post_process",
    "private_context_bytes",
    "public_context_bytes",
    "read_public_context",
    "require_galois_keys",
    "require_levels",
    "require_private",
    "require_relin_keys",
    "serialize",
    "slot_count",
    "subtract",
    "sum_vectors",
    "validate_profile",
    "write_public_keys",
]

