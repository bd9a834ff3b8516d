"""An operation served as its contract spec says: the params model and description come from
``schemas.operations.OPERATIONS``, the handler module gives only the handler and its metadata.

Why: the spec is the one place an operation's name, params model and summary are written
(``docs/protocol.md`` is generated from it); repeating them next to each handler only made a second
copy that worker/runtime/registry.py ``bind_spec`` had to check and overwrite.
"""

from __future__ import annotations

from schemas.operations import SPECS, Op
from worker.runtime.registry import Handler, Operation

__all__ = ["serve"]


def serve(op: Op, handler: Handler, **metadata: str) -> Operation:
    """The :class:`~worker.runtime.registry.Operation` serving ``op`` with ``handler``, already bound
    to its spec; ``metadata`` becomes the NATS micro endpoint metadata (strings only)."""
    spec = SPECS[op.value]
    return Operation(op.value, spec.params, handler, spec.description, metadata, spec=spec)
