"""How many payload bytes a value carries: what the owner's meters count as sent or received."""

from __future__ import annotations

import numpy as np

__all__ = ["payload_bytes"]


def payload_bytes(value: object) -> int:
    """Bytes of the buffers and arrays in ``value`` (also inside lists and tuples); anything else
    (ids, numbers, None) counts 0, as it travels in the command, not as a payload."""
    if isinstance(value, bytes | bytearray | memoryview):
        return len(value)
    if isinstance(value, np.ndarray):
        return int(value.nbytes)
    if isinstance(value, list | tuple):
        return sum(payload_bytes(v) for v in value)
    return 0
