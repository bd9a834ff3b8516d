"""The Rory operations the worker serves (one thin handler module per operation family)."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from worker.runtime.registry import Registry


def register_all(registry: Registry) -> None:
    """Register every Rory operation on ``registry`` and preload the core in the pool processes."""
    from worker.handlers import classification, clustering, ml, pqc

    for module in (clustering, classification, ml, pqc):
        for operation in module.OPERATIONS:
            registry.register(operation)
    registry.preload("worker.handlers.jobs", *pqc.PRELOAD_MODULES)
