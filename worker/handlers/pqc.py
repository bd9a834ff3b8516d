"""CKKS ("PQC") operations: SKMeans-PQC, DBSKMeans-PQC, SKNN-PQC, PPLR train/predict and PQC k-means.

This module lists them (:data:`OPERATIONS`, registered by ``worker/handlers/__init__.py``); the
handlers live one family a module: ``worker/handlers/pqc_skmeans.py``, ``pqc_sknn.py``, ``pplr.py``,
``pqc_kmeans.py``, on the shared rules of ``worker/handlers/pqc_common.py``. Every name they had here
stays importable from here.

Each handler validates the command against what storage says (``info`` only), loads the worker's
public key material on first use (:func:`worker.keys.public_keys`: a missing or secret-bearing key
directory fails *this* command with ``MissingKeys`` 422), downloads its inputs concurrently, runs the
homomorphic work in the compute pool (``worker.handlers.pqc_jobs``: TenSEAL holds the GIL) and stores
its outputs with :func:`~worker.handlers.common.put_all`. Steps that need no key material (the
plaintext UDM update, index → label mapping) run without it.

Ciphertext objects are storage byte lists (msgpack arrays of serialized TenSEAL vectors, never
pickle). Loop bounds always come from the stored objects, never from the caller's declared shapes,
which are only checked (422 on disagreement). Result lists are split into ``min(num_chunks, items)``
chunks (the original's splitter hung when chunks > items: docs/original-rory.md).

Key names follow ``schemas.keys`` (Rory's concatenations; state keys take the ``namespace`` prefix).
What the worker learns in each protocol is documented in ``docs/privacy.md``.
"""

from __future__ import annotations

from schemas.operations import Op
from worker.errors import UnsupportedOperation
from worker.handlers.common import with_claims_checked
from worker.handlers.contract import serve
from worker.handlers.pplr import COMMAND_TAG, pplr_predict, pplr_train
from worker.handlers.pqc_common import MIN_PART_WORK, spans
from worker.handlers.pqc_common import together as _together  # noqa: F401 - tests/security/test_abandoned_work.py
from worker.handlers.pqc_kmeans import pqc_kmeans
from worker.handlers.pqc_skmeans import PQC_DBSKMEANS, PQC_SKMEANS, pqc_dbskmeans, pqc_skmeans
from worker.handlers.pqc_sknn import pqc_sknn
from worker.runtime.registry import Operation

__all__ = [
    "COMMAND_TAG",
    "MIN_PART_WORK",
    "OPERATIONS",
    "PQC_DBSKMEANS",
    "PQC_SKMEANS",
    "PRELOAD_MODULES",
    "UnsupportedOperation",
    "pplr_predict",
    "pplr_train",
    "pqc_dbskmeans",
    "pqc_kmeans",
    "pqc_skmeans",
    "pqc_sknn",
    "spans",
]

#: Modules the compute processes should import at start (``Registry.preload``): TenSEAL is slow to import.
PRELOAD_MODULES = ("tenseal", "core.crypto.ckks", "worker.handlers.pqc_jobs")

_BOTH_LAYOUTS = "public+relin+galois (layout rows), public+relin (layout packed)"

OPERATIONS: list[Operation] = with_claims_checked([
    serve(Op.PQC_SKMEANS, pqc_skmeans, steps="2", scheme="ckks", keys="public"),
    serve(Op.PQC_DBSKMEANS, pqc_dbskmeans, steps="2", scheme="ckks+fdhope", keys="public"),
    serve(Op.PQC_SKNN_PREDICT, pqc_sknn, steps="2", scheme="ckks", keys="public+relin"),
    serve(Op.PPLR_TRAIN, pplr_train, scheme="ckks", keys=_BOTH_LAYOUTS),
    serve(Op.PPLR_PREDICT, pplr_predict, scheme="ckks", keys=_BOTH_LAYOUTS),
    serve(Op.PQC_KMEANS, pqc_kmeans, steps="2", scheme="ckks", keys="public+relin"),
])
