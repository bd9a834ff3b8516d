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

# Every public name of the parts is re-exported (callers import this module only). The protobuf
# helpers also keep the private names worker/keys.py and the key tests (tests/core/test_ckks.py,
# tests/dataowner/test_keys.py) use to take material apart.
from core.crypto import ckks_material, ckks_params, ckks_vectors
from core.crypto.ckks_material import *  # noqa: F403
from core.crypto.ckks_params import *  # noqa: F403
from core.crypto.ckks_protobuf import Field as _Field  # noqa: F401
from core.crypto.ckks_protobuf import check_public_material as _check_public_material  # noqa: F401
from core.crypto.ckks_protobuf import enc_varint as _enc_varint  # noqa: F401
from core.crypto.ckks_protobuf import fields as _fields  # noqa: F401
from core.crypto.ckks_protobuf import len_field as _len_field  # noqa: F401
from core.crypto.ckks_vectors import *  # noqa: F403

__all__ = sorted([*ckks_material.__all__, *ckks_params.__all__, *ckks_vectors.__all__])

