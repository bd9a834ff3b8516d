"""The Rory operations the worker serves (one thin handler module per operation family).

The runtime knows no handler: this package registers its operations into a registry it is given
(:func:`register_all`) and builds the default one (:func:`default_registry`). Each module's
``OPERATIONS`` are bound to their contract specs (``schemas.operations.OPERATIONS``) on registration
(worker/runtime/registry.py ``bind_spec``) and check the command's storage claims before the handler
runs (``worker.handlers.common.with_claims_checked``).
"""

from __future__ import annotations

from worker.runtime.registry import Registry, set_default_registry

__all__ = ["default_registry", "register_all"]


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


def default_registry() -> Registry:
    """A registry serving every Rory operation."""
    registry = Registry()
    register_all(registry)
    return registry


# worker.runtime.registry.default_registry() (what a service given no registry builds) is ours.
set_default_registry(default_registry)
