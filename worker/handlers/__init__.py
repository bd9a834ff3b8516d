"""The Rory operations the worker serves (one thin handler module per operation family).

Each handler is registered under its contract spec (``schemas.operations.OPERATIONS``); the registry
binds the two (worker/runtime/registry.py ``bind_spec``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.runtime.registry import Registry


def register_all(registry: Registry) -> None:
    """Register every Rory operation on ``registry`` and preload the core in the pool processes."""
    from schemas.operations import OPERATIONS
    from worker.handlers import classification, clustering, ml, pqc

    for module in (clustering, classification, ml, pqc):
        for operation in module.OPERATIONS:
            registry.register(operation)
    missing = [spec.op.value for spec in OPERATIONS if registry.get(spec.op.value) is None]
    if missing:  # the contract lists an operation no handler module serves
        raise RuntimeError(f"no handler for {', '.join(missing)}")
    registry.preload("worker.handlers.jobs", *pqc.PRELOAD_MODULES)
