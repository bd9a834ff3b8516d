"""The worker runtime on NATS: registry, job context, compute pool, dispatch, service.

Handlers are written against :class:`Operation`, :class:`Registry` and :class:`JobContext`; the
service is started with ``await WorkerService(settings, registry).start()`` (or
``run_until_stopped()`` for signal handling).

Names are imported lazily: compute processes unpickle handler modules that import
``worker.runtime.registry``, and must not pay for importing nats-py and the service with it.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ComputeCrashed": "worker.runtime.pool",
    "ComputePool": "worker.runtime.pool",
    "process_cached": "worker.runtime.pool",
    "JobContext": "worker.runtime.context",
    "Resources": "worker.runtime.context",
    "WorkerServices": "worker.runtime.context",
    "Operation": "worker.runtime.registry",
    "Registry": "worker.runtime.registry",
    "default_registry": "worker.runtime.registry",
    "WorkerService": "worker.runtime.service",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'worker.runtime' has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
