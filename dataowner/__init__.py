"""The data owner's side of Rory: keys, datasets, the NATS client that drives the worker, the demo.

* :class:`dataowner.keys.OwnerKeys`: Liu / FDH-OPE / CKKS secrets in a 0700 directory; exports the
  public CKKS material a worker needs (``KEYS_PATH``).
* :mod:`dataowner.datasets`: CSV/NPY files and scikit-learn's iris, wine and breast cancer.
* :class:`dataowner.client.DataOwnerClient`: upload/encrypt data and run every protocol to the end,
  returning a :class:`dataowner.client.JobReport`.
* ``rory-client`` (:mod:`dataowner.cli`), whose ``demo`` command (:mod:`dataowner.demo`) runs the
  whole system locally.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from dataowner.client import DataOwnerClient, JobReport, NoWorkerError, WorkerError
    from dataowner.keys import OwnerKeys

__all__ = ["DataOwnerClient", "JobReport", "NoWorkerError", "OwnerKeys", "WorkerError"]

_EXPORTS = {
    "DataOwnerClient": "dataowner.client",
    "JobReport": "dataowner.client",
    "NoWorkerError": "dataowner.client",
    "WorkerError": "dataowner.client",
    "OwnerKeys": "dataowner.keys",
}


def __getattr__(name: str) -> Any:
    """Lazy exports: ``import dataowner`` stays cheap (TenSEAL loads only with the client)."""
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'dataowner' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
